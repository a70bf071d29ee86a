"""What replicant tells the server it has finished with: the acknowledgement rules.

Every status update carries three positions, ``written``, ``flushed`` and
``applied``. The server keeps the WAL after ``flushed`` and, after a
restart, re-sends every transaction that committed after it. The rules:

1. ``written`` is the highest WAL position received from the server, in
   data or in a keepalive. It only grows.
2. ``flushed`` and ``applied`` are the same position: the acknowledged one
   (or, by rule 6, the idle one), whichever is higher.
3. An acknowledgement (the callback's return value, ``Consumer.acknowledge``,
   ``on_stop``'s result) moves the acknowledged position forward only: a
   lower LSN than the current one is ignored.
4. An acknowledgement never goes above what was received: a higher LSN is
   held at ``written``, so the server is never told about WAL it did not send.
5. A connection starts at the slot's ``confirmed_flush_lsn`` (or the
   caller's ``start_lsn``, or what was acknowledged before, whichever is
   highest), and nothing is reported below that start.
6. Idle advance: when a keepalive arrives while no transaction is open and
   everything delivered was acknowledged, ``flushed`` may follow the
   server's WAL end. Every transaction that committed before that end was
   already delivered, so confirming it skips nothing, and an idle or
   filtered database does not keep WAL forever. With ``idle_advance=False``
   only acknowledgements move ``flushed``.
7. Anything that is not an LSN (an ``LSN``, an ``int`` or its text form) is
   a :class:`~replicant.errors.ConfigurationError`, never a silent no-op.

The reader writes this state (and rule 3's acknowledgements may also come
from other threads, under a lock); the keepalive thread reads it. Each
field is a single reference, so a reader of one field never sees it torn;
the order of reads in :meth:`WalProgress.position` keeps ``flushed`` at or
below ``written``.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from replicant.errors import ConfigurationError
from replicant.lsn import LSN

__all__ = ["Progress", "WalProgress"]


class Progress(NamedTuple):
    """Where the consumer stands.

    ``received``: the highest WAL position seen from the server;
    ``flushed`` and ``applied``: what is (or next will be) reported as done.
    """

    received: LSN
    flushed: LSN
    applied: LSN


class WalProgress:
    """The acknowledgement state of one consumer, following the rules above."""

    def __init__(self, start: int = 0, *, idle_advance: bool = True) -> None:
        self.idle_advance = idle_advance
        self.received = self.acknowledged = self.idle = LSN(start)
        self._ack_lock = threading.Lock()

    def reset(self, start: int) -> None:
        """Start over at ``start`` (a new connection), keeping what was acknowledged (rule 5)."""
        start_lsn = max(LSN(start), self.acknowledged)
        self.received = self.acknowledged = self.idle = start_lsn

    def receive(self, lsn: int) -> None:
        """The server sent data or a keepalive reaching ``lsn`` (rule 1)."""
        if lsn > self.received:
            self.received = LSN.from_int(lsn)

    def acknowledge(self, lsn: LSN | int | str) -> LSN:
        """Everything up to ``lsn`` is finished; returns the acknowledged LSN.

        A smaller LSN than the current one is ignored (rule 3); a larger one
        than received is held at received (rule 4). Raises
        :class:`ConfigurationError` for a value that is not an LSN (rule 7).
        """
        if isinstance(lsn, str):
            lsn = LSN.parse(lsn)
        elif not isinstance(lsn, int) or isinstance(lsn, bool):
            raise ConfigurationError(
                f"the callback returned {lsn!r}: return an LSN (such as event.lsn) or None"
            )
        if lsn > self.acknowledged:
            with self._ack_lock:  # compare and set: never backward, whoever calls
                if lsn > self.acknowledged:
                    self.acknowledged = LSN(min(lsn, self.received))
        return self.acknowledged

    def keepalive(self, wal_end: int, *, in_transaction: bool, last_delivered: int) -> None:
        """The server's WAL end arrived while the reader is between frames (rules 1, 6)."""
        self.receive(wal_end)
        if (
            self.idle_advance
            and not in_transaction
            and self.acknowledged >= last_delivered
            and wal_end > self.idle
        ):
            self.idle = LSN.from_int(wal_end)

    def position(self) -> Progress:
        """``(written, flushed, applied)`` to report now (rule 2)."""
        flushed = self.acknowledged
        if self.idle_advance and self.idle > flushed:
            flushed = self.idle
        written = self.received  # read after flushed: it only grows
        return Progress(written, flushed, flushed)
