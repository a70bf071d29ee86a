"""Output plugin decoders: an XLogData payload in, events out.

:func:`make_decoder` picks the decoder for a plugin name. Every decoder has
the :class:`Decoder` shape, which the connection and runtime layers use.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from replicant.changes import Event
from replicant.decoders.pgoutput import PgOutputDecoder
from replicant.decoders.raw import RawDecoder
from replicant.decoders.wal2json import Wal2JsonDecoder
from replicant.errors import ConfigurationError

__all__ = [
    "Decoder",
    "DecoderFactory",
    "PgOutputDecoder",
    "RawDecoder",
    "Wal2JsonDecoder",
    "make_decoder",
    "needs_publication",
    "register_decoder",
]


@runtime_checkable
class Decoder(Protocol):
    """What the stream needs from a decoder."""

    plugin: str
    """The output plugin's name: "pgoutput", "wal2json", or the raw plugin's."""

    def start_options(self, server_version: int) -> dict[str, str]:
        """START_REPLICATION options for a server of ``server_version`` (e.g. 150004)."""
        ...

    def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
        """One XLogData payload to its events, in order (possibly none).

        Raises DecodeError (a ProtocolError) for a payload it cannot read.
        """
        ...

    def reset(self) -> None:
        """Forget all stream state (relation caches, open transaction): after a reconnect."""
        ...

    @property
    def in_transaction(self) -> bool:
        """True between a transaction's (or stream block's) start and its end."""
        ...


_KEYWORDS = {
    "pgoutput": {
        "proto_version",
        "binary",
        "messages",
        "streaming",
        "two_phase",
        "origin",
        "strict_values",
    },
    "wal2json": {"format_version", "strict_values"},
}


DecoderFactory = Callable[..., Decoder]
"""Makes a decoder: called with the keywords ``publication`` (a name, a list,
or ``None``), ``options`` (a mapping of extra START_REPLICATION options) and
``decode_values`` (bool), plus the plugin's own keywords."""


@dataclass(frozen=True)
class _Registration:
    factory: DecoderFactory
    keywords: frozenset[str]
    publication: bool  # the plugin needs a publication (and others refuse one)


_REGISTRY: dict[str, _Registration] = {}


def register_decoder(
    plugin: str,
    factory: DecoderFactory,
    *,
    keywords: Collection[str] = (),
    publication: bool = False,
) -> None:
    """Make :func:`make_decoder` (and so ``Consumer(plugin=...)`` and the command) use ``factory``.

    ``factory`` is called as ``factory(publication=..., options=...,
    decode_values=..., **kwargs)`` and returns an object of the
    :class:`Decoder` shape; ``kwargs`` are limited to ``keywords`` (any other
    is a :class:`ConfigurationError` before the factory runs).
    ``publication=True`` says the plugin needs one or more publication names
    (as pgoutput does); otherwise passing one is an error. Registering a
    name again replaces the earlier registration (a built-in one too).
    Raises :class:`ConfigurationError` for an empty name or a factory that
    is not callable.
    """
    if not isinstance(plugin, str) or not plugin:
        raise ConfigurationError(f"a decoder is registered under a plugin name, not {plugin!r}")
    if not callable(factory):
        raise ConfigurationError(f"the decoder factory for {plugin} must be callable")
    _REGISTRY[plugin] = _Registration(factory, frozenset(keywords), publication)


def needs_publication(plugin: str) -> bool:
    """True when ``plugin``'s decoder needs a publication (pgoutput); others refuse one."""
    registration = _REGISTRY.get(plugin)
    return registration is not None and registration.publication


def _pgoutput(
    *,
    publication: str | Sequence[str] | None,
    options: Mapping[str, str] | None,
    decode_values: bool,
    **kwargs: Any,
) -> Decoder:
    assert publication is not None  # make_decoder checked it
    return PgOutputDecoder(publication, options=options, decode_values=decode_values, **kwargs)


def _wal2json(
    *,
    publication: str | Sequence[str] | None,
    options: Mapping[str, str] | None,
    decode_values: bool,
    **kwargs: Any,
) -> Decoder:
    return Wal2JsonDecoder(options=options, decode_values=decode_values, **kwargs)


register_decoder("pgoutput", _pgoutput, keywords=_KEYWORDS["pgoutput"], publication=True)
register_decoder("wal2json", _wal2json, keywords=_KEYWORDS["wal2json"])


def make_decoder(
    plugin: str,
    *,
    publication: str | Sequence[str] | None = None,
    options: Mapping[str, str] | None = None,
    decode_values: bool = True,
    **kwargs: Any,
) -> Decoder:
    """The decoder for ``plugin``, from the registry (see :func:`register_decoder`).

    * ``"pgoutput"``: :class:`PgOutputDecoder`; ``publication`` (a name or a
      list) is required; ``kwargs`` may be ``proto_version``, ``binary``,
      ``messages``, ``streaming`` (bool or ``"parallel"``), ``two_phase``,
      ``origin``, ``strict_values``.
    * ``"wal2json"``: :class:`Wal2JsonDecoder`; ``kwargs`` may be
      ``format_version`` (1 or 2, default 2), ``strict_values``. ``options`` are wal2json's own
      (``add-tables``, ``include-typmod``, ...).
    * a plugin added with :func:`register_decoder`: what its factory makes.
    * anything else: :class:`RawDecoder`, whose events carry the payload bytes.

    ``options`` are extra START_REPLICATION options passed as they are (they
    override the decoder's own). ``decode_values=False`` keeps row values in
    the form the plugin sent them (see :meth:`replicant.changes.Row.raw`).
    Raises :class:`ConfigurationError` for a keyword the plugin does not
    take, a missing publication where one is needed, or one where it is not.
    """
    registration = _REGISTRY.get(plugin)
    allowed = registration.keywords if registration is not None else frozenset()
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigurationError(f"unknown options for plugin {plugin}: {', '.join(unknown)}")
    if needs_publication(plugin):
        if publication is None:
            raise ConfigurationError(f"{plugin} needs a publication (a name or a list of names)")
    elif publication is not None:
        raise ConfigurationError(f"publication is a pgoutput option; {plugin} does not take it")
    if registration is None:
        return RawDecoder(plugin, options=options)
    decoder = registration.factory(
        publication=publication, options=options, decode_values=decode_values, **kwargs
    )
    if not isinstance(decoder, Decoder):
        raise ConfigurationError(
            f"the decoder factory for {plugin} returned {decoder!r}, not a Decoder"
        )
    return decoder
