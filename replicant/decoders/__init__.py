"""Output plugin decoders: an XLogData payload in, events out.

:func:`make_decoder` picks the decoder for a plugin name. Every decoder has
the :class:`Decoder` shape, which the connection and runtime layers use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from replicant.changes import Event
from replicant.decoders.pgoutput import PgOutputDecoder
from replicant.decoders.raw import RawDecoder
from replicant.decoders.wal2json import Wal2JsonDecoder
from replicant.errors import ConfigurationError

__all__ = ["Decoder", "PgOutputDecoder", "RawDecoder", "Wal2JsonDecoder", "make_decoder"]


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


def make_decoder(
    plugin: str,
    *,
    publication: str | Sequence[str] | None = None,
    options: Mapping[str, str] | None = None,
    decode_values: bool = True,
    **kwargs: Any,
) -> Decoder:
    """The decoder for ``plugin``.

    * ``"pgoutput"``: :class:`PgOutputDecoder`; ``publication`` (a name or a
      list) is required; ``kwargs`` may be ``proto_version``, ``binary``,
      ``messages``, ``streaming`` (bool or ``"parallel"``), ``two_phase``,
      ``origin``, ``strict_values``.
    * ``"wal2json"``: :class:`Wal2JsonDecoder`; ``kwargs`` may be
      ``format_version`` (1 or 2, default 2), ``strict_values``. ``options`` are wal2json's own
      (``add-tables``, ``include-typmod``, ...).
    * anything else: :class:`RawDecoder`, whose events carry the payload bytes.

    ``options`` are extra START_REPLICATION options passed as they are (they
    override the decoder's own). ``decode_values=False`` keeps row values in
    the form the plugin sent them (see :meth:`replicant.changes.Row.raw`).
    """
    allowed = _KEYWORDS.get(plugin, set())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigurationError(f"unknown options for plugin {plugin}: {', '.join(unknown)}")
    if plugin == "pgoutput":
        if publication is None:
            raise ConfigurationError("pgoutput needs a publication (a name or a list of names)")
        return PgOutputDecoder(publication, options=options, decode_values=decode_values, **kwargs)
    if publication is not None:
        raise ConfigurationError(f"publication is a pgoutput option; {plugin} does not take it")
    if plugin == "wal2json":
        return Wal2JsonDecoder(options=options, decode_values=decode_values, **kwargs)
    return RawDecoder(plugin, options=options)
