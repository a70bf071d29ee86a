"""Any other output plugin: each payload as it came, as a :class:`RawChange`.

For test_decoding, decoderbufs or a plugin of one's own. The decoder knows
nothing of the plugin's transactions, so :attr:`RawDecoder.in_transaction`
is always False and every event's ``lsn`` is its frame's WAL start (the
position the plugin reported for that output; 0 when it gave none).
"""

from __future__ import annotations

from collections.abc import Mapping

from replicant.changes import Event, RawChange
from replicant.errors import ConfigurationError
from replicant.lsn import LSN

__all__ = ["RawDecoder"]


class RawDecoder:
    """Passes payloads through as :class:`RawChange` events."""

    def __init__(self, plugin: str, *, options: Mapping[str, str] | None = None) -> None:
        if not isinstance(plugin, str) or not plugin:
            raise ConfigurationError(f"not an output plugin name: {plugin!r}")
        self.plugin = plugin
        self.extra_options = dict(options or {})

    def start_options(self, server_version: int) -> dict[str, str]:
        """The options given to the constructor, unchanged."""
        return dict(self.extra_options)

    def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
        """One :class:`RawChange` with the payload bytes and the frame's positions."""
        return [RawChange(LSN.from_int(wal_start), None, bytes(data), LSN.from_int(wal_end))]

    def reset(self) -> None:
        """Nothing to forget."""

    @property
    def in_transaction(self) -> bool:
        """Always False: the decoder does not read the plugin's output."""
        return False
