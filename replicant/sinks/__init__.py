"""Sinks: destinations for events, and the writer that acknowledges only what they made durable.

:class:`Sink` is the protocol a destination implements (``write``,
``flush``, ``close``); :class:`SinkWriter` drives one for a consumer: it
owns the flush timer and the acknowledgement watermarks, so a new
destination is one class. :class:`JsonLinesSink` writes JSON Lines (or
text) to a file or standard output; it is what ``replicant stream`` uses.
:class:`KafkaSink` publishes to Kafka (the ``kafka`` extra). For example::

    from replicant.sinks import JsonLinesSink, SinkWriter

    with SinkWriter(JsonLinesSink("changes.jsonl"), flush_interval=10) as writer:
        writer.consumer("dbname=app", slot="app", publication="app_pub").run()

:func:`open_sink` makes a sink from a URL (``kafka://host:port/prefix``),
as ``replicant stream --to URL`` does; :func:`register_sink` adds a scheme.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from replicant.errors import ConfigurationError
from replicant.sinks.base import Sink, SinkWriter, is_boundary
from replicant.sinks.jsonlines import JsonLinesSink
from replicant.sinks.kafka import KafkaSink, KafkaSinkError

__all__ = [
    "JsonLinesSink",
    "KafkaSink",
    "KafkaSinkError",
    "Sink",
    "SinkWriter",
    "is_boundary",
    "open_sink",
    "register_sink",
]

# scheme -> a function of (url, **options) making the sink.
_SCHEMES: dict[str, Callable[..., Sink]] = {"kafka": KafkaSink.from_url}


def register_sink(scheme: str, opener: Callable[..., Sink]) -> None:
    """Make ``open_sink("scheme://...")`` call ``opener(url, **options)``."""
    _SCHEMES[scheme.lower()] = opener


def open_sink(url: str, **options: Any) -> Sink:
    """The sink a URL names, made with ``options``: ``kafka://host:port/prefix?...``.

    Raises :class:`~replicant.errors.ConfigurationError` for a scheme no
    sink registered, and what the sink raises when it cannot be made (a
    Kafka cluster that cannot be reached: :class:`KafkaSinkError`).
    """
    scheme = urlsplit(url).scheme.lower()
    opener = _SCHEMES.get(scheme)
    if opener is None:
        known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise ConfigurationError(f"no sink for {url!r}: the known ones are {known}")
    return opener(url, **options)
