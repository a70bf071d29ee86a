"""How far behind a consumer is, and how it is doing: :class:`Health` and what feeds it.

:meth:`Consumer.health() <replicant.runtime.Consumer.health>` returns a
:class:`Health` snapshot, safe to take from any thread at any time. Its
figures come from three places:

- the stream itself: positions received and acknowledged, event and
  transaction counts, the commit times of the transactions that went by;
- the server's keepalives, which carry the walsender's WAL position (how
  far it has read the WAL). While the consumer keeps up, that is the
  server's WAL end; during a backlog it trails it, because the walsender
  is still reading old WAL;
- with ``health_interval``, a :class:`SlotMonitor`: an ordinary (not
  replication) connection that reads ``pg_current_wal_lsn()`` and the
  slot's row of ``pg_replication_slots`` every ``health_interval`` seconds.
  That gives the true distance to the server's WAL end during a backlog,
  and the slot's ``wal_status`` and ``safe_wal_size``.

A monitor that cannot connect or query only logs (at debug level) and
counts the error: it never stops or slows the stream.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from replicant.lsn import LSN

__all__ = ["Health", "RateMeter", "SlotMonitor", "SlotReading"]

logger = logging.getLogger("replicant")


@dataclass(frozen=True)
class Health:
    """A snapshot of one consumer's lag and activity (see :meth:`Consumer.health`).

    Positions: ``received_lsn`` (the highest the server sent),
    ``acknowledged_lsn`` (what the server is, or next is, told is done),
    ``server_lsn`` (the newest known server WAL end: the later of the last
    keepalive's position and the last ``pg_current_wal_lsn()`` read;
    ``None`` before either).

    Lag: ``bytes_behind`` is ``server_lsn`` minus ``acknowledged_lsn``
    (``None`` while ``server_lsn`` is unknown; never below 0).
    ``seconds_behind`` is now minus the commit time of the last acknowledged
    transaction (before any was, of the oldest one received and not yet
    acknowledged: the lag is at least that), and ``seconds_behind_received``
    the same for the last transaction received (its ``Begin`` carries the
    commit time); each is 0.0 while that position is caught up (nothing
    received or left on the server beyond it) and ``None`` while behind with
    no commit time known yet.

    Activity: the counters since the consumer was made (``events``,
    ``transactions``, ``bytes`` of payload, ``reconnects``, ``errors`` by
    kind); ``events_per_second`` and ``transactions_per_second`` over the
    last ``rate_window`` seconds; ``seconds_since_last_message`` since the
    server last sent anything (``None`` before it did); ``streaming`` while
    a stream is open, ``streams`` how many were opened.

    The slot, as last read by the monitor (``health_interval``):
    ``wal_status``, ``safe_wal_size`` (bytes; ``None`` for no limit),
    ``slot_confirmed_lsn``, and ``slot_read_age`` seconds since that read
    (``None``: never read).

    The backlog the consumer started with: ``backlog_start_lsn`` where its
    first stream started and ``backlog_end_lsn`` the server's WAL end then
    (``IDENTIFY_SYSTEM``), or the consumer's ``end_lsn`` if that comes first;
    ``None`` before the first stream.
    """

    slot: str
    running: bool
    streaming: bool
    streams: int
    received_lsn: LSN
    acknowledged_lsn: LSN
    server_lsn: LSN | None
    bytes_behind: int | None
    seconds_behind: float | None
    seconds_behind_received: float | None
    events: int
    transactions: int
    bytes: int
    reconnects: int
    errors: Mapping[str, int]
    events_per_second: float
    transactions_per_second: float
    rate_window: float
    seconds_since_last_message: float | None
    wal_status: str | None = None
    safe_wal_size: int | None = None
    slot_confirmed_lsn: LSN | None = None
    slot_read_age: float | None = None
    last_error: str | None = None
    backlog_start_lsn: LSN | None = None
    backlog_end_lsn: LSN | None = None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values (LSNs as ``X/Y`` text)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, LSN):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out


class RateMeter:
    """Counts sampled about once a second; the rate over the last ``window`` seconds.

    ``sample()`` is called by one thread (the reader), ``rates()`` by any:
    both under one lock, taken once a second at most by the sampler.
    """

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()
        self._lock = threading.Lock()
        self._next = 0.0

    def sample(self, events: int, transactions: int) -> None:
        """Record the counts now, at most once a second."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + 1.0
        with self._lock:
            self._samples.append((now, events, transactions))
            # Keep one sample older than the window, so the rate spans all of it.
            while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
                self._samples.popleft()

    def rates(self, events: int, transactions: int) -> tuple[float, float]:
        """Events and transactions per second from the oldest kept sample to ``events`` now."""
        now = self._clock()
        with self._lock:
            oldest = next(
                (s for s in self._samples if s[0] >= now - self.window - 1.0),
                None,
            )
        if oldest is None:
            return 0.0, 0.0
        elapsed = now - oldest[0]
        if elapsed < 0.5:
            return 0.0, 0.0
        return (events - oldest[1]) / elapsed, (transactions - oldest[2]) / elapsed


@dataclass(frozen=True)
class SlotReading:
    """One read of the server by a :class:`SlotMonitor`."""

    server_lsn: LSN
    at: float  # time.monotonic() as the read was sent
    exists: bool
    wal_status: str | None = None
    safe_wal_size: int | None = None
    confirmed_lsn: LSN | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# The server's WAL end: on a standby, what it has replayed (what a slot there can decode).
_READ_SLOT = """
SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
             ELSE pg_catalog.pg_current_wal_lsn() END)::text,
       s.slot_name IS NOT NULL, s.wal_status, s.safe_wal_size, s.confirmed_flush_lsn::text
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_replication_slots AS s ON s.slot_name = %s
"""


class SlotMonitor:
    """Reads the server's WAL end and one slot's state every ``interval`` seconds.

    It runs its own thread (``replicant-health[SLOT]``) on an ordinary
    connection opened from ``dsn``/``params`` (the consumer's), kept open
    between reads and opened again after a failure. ``latest`` is the last
    successful reading; ``on_error(kind)`` counts failures, which are
    otherwise only logged at debug level. ``read_now()`` reads at once from
    the caller's thread (a first figure before streaming starts).
    """

    def __init__(
        self,
        dsn: str | None,
        params: Mapping[str, Any],
        slot: str,
        interval: float,
        *,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.slot = slot
        self.interval = interval
        self._dsn = dsn or ""
        params = {k: v for k, v in params.items() if v is not None and k != "replication"}
        # An unreachable server must not hold up the stop for libpq's default wait.
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", f"replicant-health[{slot}]")
        self._params = params
        self._on_error = on_error
        self._connection: psycopg2.extensions.connection | None = None
        self._lock = threading.Lock()  # one read at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: SlotReading | None = None

    def start(self) -> None:
        """Start the thread: a read at once, then one every ``interval`` seconds."""
        self._thread = threading.Thread(
            target=self._loop, name=f"replicant-health[{self.slot}]", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread and close the connection (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.read_now()
            self._stop.wait(self.interval)

    def read_now(self) -> SlotReading | None:
        """Read the server now; the reading, or ``None`` when the read failed."""
        with self._lock:
            if self._stop.is_set() and self._thread is not None:
                return None
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = psycopg2.connect(self._dsn, **self._params)
                    self._connection.autocommit = True
                with self._connection.cursor() as cur:
                    # The reading is as old as the query's start (the server
                    # reads the slot then), however long the answer takes.
                    asked = time.monotonic()
                    cur.execute(_READ_SLOT, (self.slot,))
                    row = cur.fetchone()
            except psycopg2.Error as error:
                logger.debug("slot %s: reading the server's position failed: %s", self.slot, error)
                self._close()
                if self._on_error is not None:
                    self._on_error("health_query", error)
                return None
            assert row is not None
            current, exists, wal_status, safe_size, confirmed = row
            reading = SlotReading(
                server_lsn=LSN.parse(current) if current else LSN(0),
                at=asked,
                exists=bool(exists),
                wal_status=wal_status,
                safe_wal_size=None if safe_size is None else int(safe_size),
                confirmed_lsn=LSN.parse(confirmed) if confirmed else None,
            )
            self.latest = reading
            return reading

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg2.Error):
                connection.close()


def commit_time_of(event: object) -> _dt.datetime | None:
    """The time a transaction-ending event's transaction committed (or was rolled back)."""
    value = getattr(event, "commit_time", None) or getattr(event, "rollback_time", None)
    return value if isinstance(value, _dt.datetime) else None


def seconds_since(moment: _dt.datetime | None, now: _dt.datetime) -> float | None:
    """``now - moment`` in seconds (never below 0), ``None`` for no moment."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (now - moment).total_seconds())
