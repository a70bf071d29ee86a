"""Sinks: destinations for events, and the writer that acknowledges only what they made durable.

:class:`Sink` is the protocol a destination implements (``write``,
``flush``, ``close``); :class:`SinkWriter` drives one for a consumer: it
owns the flush timer and the acknowledgement watermarks, so a new
destination is one class. :class:`JsonLinesSink` writes JSON Lines (or
text) to a file or standard output; :class:`PostgresSink` and
:class:`SQLiteSink` apply each source transaction to a database exactly
once; :class:`KafkaSink` publishes to Kafka, at least once (the ``kafka``
extra). :func:`open_sink` makes one from a URL (what ``replicant stream
--to`` takes). For example::

    from replicant.sinks import JsonLinesSink, SinkWriter

    with SinkWriter(JsonLinesSink("changes.jsonl"), flush_interval=10) as writer:
        writer.consumer("dbname=app", slot="app", publication="app_pub").run()
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from replicant.errors import ConfigurationError
from replicant.sinks.base import Sink, SinkError, SinkWriter, is_boundary, resume_lsn
from replicant.sinks.jsonlines import JsonLinesSink
from replicant.sinks.kafka import KafkaSink, KafkaSinkError
from replicant.sinks.postgres import PostgresSink
from replicant.sinks.sqlite import SQLiteSink

__all__ = [
    "JsonLinesSink",
    "KafkaSink",
    "KafkaSinkError",
    "PostgresSink",
    "SQLiteSink",
    "Sink",
    "SinkError",
    "SinkWriter",
    "is_boundary",
    "open_sink",
    "register_scheme",
    "resume_lsn",
    "sink_scheme",
]

SinkFactory = Callable[..., Sink]
"""``factory(url, **options) -> Sink``: makes the sink a URL of its scheme names."""

_SCHEMES: dict[str, SinkFactory] = {}

# What open_sink() calls a file path or "-" (standard output).
LINES = "lines"


def register_scheme(scheme: str, factory: SinkFactory) -> None:
    """Make :func:`open_sink` hand URLs ``scheme://...`` to ``factory(url, **options)``.

    ``options`` are what the caller of :func:`open_sink` passed; ``slot``
    among them (the slot being streamed, or None) is for the factory to use
    or ignore. A scheme registered again is replaced.
    """
    if not scheme or not scheme.replace("+", "").replace("-", "").isalnum():
        raise ConfigurationError(f"not a URL scheme: {scheme!r}")
    _SCHEMES[scheme.lower()] = factory


def sink_scheme(url: str) -> str:
    """The scheme :func:`open_sink` picks for ``url``: ``"lines"`` for ``-`` or a file path."""
    head, sep, _ = url.partition("://")
    if sep and head.lower() in _SCHEMES:
        return head.lower()
    if sep and head.isalnum() and os.path.sep not in head:
        known = ", ".join(sorted(s + "://" for s in _SCHEMES))
        raise ConfigurationError(f"no sink for {head}:// URLs (known: {known}, a path or -)")
    return LINES


def open_sink(url: str, *, slot: str | None = None, **options: Any) -> Sink:
    """The sink ``url`` names, made with ``options`` (its class's keyword arguments).

    - ``-``: JSON Lines on standard output; a file path (or ``file://PATH``):
      JSON Lines appended to it (:class:`JsonLinesSink`);
    - ``postgresql://...`` or ``postgres://...``: a :class:`PostgresSink`
      into that database (the URL goes to libpq as it is);
    - ``sqlite:///PATH``: a :class:`SQLiteSink` into the file ``PATH``
      (relative; ``sqlite:////abs/path`` for an absolute one);
    - ``kafka://host:port/prefix?...``: a :class:`KafkaSink` (see
      :meth:`KafkaSink.from_url`);
    - a scheme added with :func:`register_scheme`.

    ``slot`` is the slot being streamed: the database sinks name their
    stored position after it (their ``name``) unless ``name`` is given.
    """
    scheme = sink_scheme(url)
    if scheme == LINES:
        return JsonLinesSink(None if url == "-" else url, **options)
    return _SCHEMES[scheme](url, slot=slot, **options)


def _postgres(url: str, *, slot: str | None = None, **options: Any) -> Sink:
    if slot is not None:
        options.setdefault("name", f"replicant_{slot}")
    return PostgresSink(url, **options)


def _sqlite(url: str, *, slot: str | None = None, **options: Any) -> Sink:
    path = url[len("sqlite://") :]
    if not path.startswith("/") or len(path) < 2:
        raise ConfigurationError(f"a SQLite URL is sqlite:///PATH, not {url!r}")
    if slot is not None:
        options.setdefault("name", slot)
    return SQLiteSink(path[1:], **options)


def _file(url: str, *, slot: str | None = None, **options: Any) -> Sink:
    return JsonLinesSink(url[len("file://") :], **options)


def _kafka(url: str, *, slot: str | None = None, **options: Any) -> Sink:
    return KafkaSink.from_url(url, **options)


register_scheme("kafka", _kafka)
register_scheme("postgresql", _postgres)
register_scheme("postgres", _postgres)
register_scheme("sqlite", _sqlite)
register_scheme("file", _file)
