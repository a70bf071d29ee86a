"""The consumer: a reader thread, a keepalive thread and a supervisor.

- The **reader** owns every read: it drains the stream, decodes each XLogData
  payload and calls the change callback for each event, in order, in its own
  thread; it records the LSN the callback returns and hands keepalives that
  ask for an answer to the keepalive thread.
- The **keepalive** thread owns every status update: it answers a keepalive
  that asks for a reply at once, and otherwise sends one every
  ``status_interval`` seconds. The timer matters: while the reader sits in a
  slow callback nobody reads the socket, no keepalive arrives, and without
  timed updates the server would drop the connection after
  ``wal_sender_timeout``. It never answers a keepalive that does not ask:
  that starts a ping-pong of thousands of round trips a second.
- The **supervisor** connects, starts both, waits for the first to end,
  stops the other, sends a final status update, ends the stream and closes
  the connection, then re-raises the first failure exactly as it was raised.

Delivery is at least once: the server re-sends every transaction whose
commit lies after the last acknowledged LSN.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import logging
import queue
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec

# WalProgress lives in acknowledgement; it stays importable from here (not in
# __all__) for the consumer's tests.
from replicant._signals import StopSignals
from replicant.acknowledgement import Progress, WalProgress
from replicant.changes import (
    Begin,
    Commit,
    CommitPrepared,
    Event,
    RollbackPrepared,
    SnapshotEnd,
    StreamCommit,
)
from replicant.connection import (
    ReplicationConnection,
    ReplicationStream,
    check_slot_state,
    mask_dsn,
)
from replicant.decoders import Decoder, make_decoder
from replicant.errors import (
    ConfigurationError,
    ConnectionLost,
    ReplicantError,
    ServerError,
    SlotError,
    UsageError,
)
from replicant.health import Health, RateMeter, SlotMonitor, commit_time_of, seconds_since
from replicant.incremental import IncrementalSnapshot, IncrementalSnapshots, streams_messages
from replicant.lsn import LSN
from replicant.protocol import PrimaryKeepalive, XLogData, validate_slot_name
from replicant.snapshot import (
    check_snapshot_options,
    create_slot_with_snapshot,
    reading_options,
    take_snapshot,
)

_P = ParamSpec("_P")

__all__ = [
    "Backoff",
    "Callback",
    "Consumer",
    "Progress",
    "Stats",
    "StatusTimer",
    "check_slot_state",
    "run",
]

logger = logging.getLogger("replicant")

Callback = Callable[[Event], "LSN | int | str | None"]

# Events that end a transaction, for the transaction count.
_TRANSACTION_ENDS = frozenset({Commit, StreamCommit, CommitPrepared, RollbackPrepared})

# The events the reader looks at twice: a transaction's end (counted, its
# commit time kept for the lag) or start (a Begin carries the commit time too).
_END, _START = 1, 2
_MARKS: dict[type, int] = {kind: _END for kind in _TRANSACTION_ENDS}
_MARKS[Begin] = _START

# How often an idle reader looks up from the socket to notice stop(): the
# bound on how long stop() takes on an idle stream.
_POLL_INTERVAL = 0.1
# A snapshot's events end a batch (on_batch_end) this often, like a read's frames.
_SNAPSHOT_BATCH = 512

# How often run() in the main thread wakes to let pending signal handlers run.
_SIGNAL_CHECK_INTERVAL = 0.25

# The transactions received and not yet acknowledged whose commit times are
# kept for seconds_behind; beyond this many the oldest go (the figure then
# errs low), so a consumer that never acknowledges does not grow without bound.
_PENDING_COMMITS = 100_000

# The span of health()'s events and transactions per second.
_RATE_WINDOW = 10.0


@dataclass(frozen=True)
class Stats:
    """Counters of one consumer, across reconnects."""

    events: int = 0
    transactions: int = 0
    bytes: int = 0
    frames: int = 0
    status_updates: int = 0
    keepalives: int = 0
    reconnects: int = 0
    streams: int = 0


class _Counters:
    # Plain attributes, each written by one thread; Stats is the snapshot.
    __slots__ = (
        "bytes",
        "events",
        "frames",
        "keepalives",
        "reconnects",
        "status_updates",
        "streams",
        "transactions",
    )

    def __init__(self) -> None:
        self.events = self.transactions = self.bytes = self.frames = 0
        self.status_updates = self.keepalives = self.reconnects = self.streams = 0

    def snapshot(self) -> Stats:
        return Stats(
            events=self.events,
            transactions=self.transactions,
            bytes=self.bytes,
            frames=self.frames,
            status_updates=self.status_updates,
            keepalives=self.keepalives,
            reconnects=self.reconnects,
            streams=self.streams,
        )


class StatusTimer:
    """When the next timed status update is due.

    ``clock`` is injectable (monotonic seconds) so tests can drive it.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0:
            raise ConfigurationError(f"status_interval must be positive, not {interval!r}")
        self.interval = interval
        self._clock = clock
        self._due = clock() + interval

    def time_left(self) -> float:
        """Seconds until an update is due (0 when it is due now)."""
        return max(0.0, self._due - self._clock())

    def due(self) -> bool:
        """True when an update is due."""
        return self._clock() >= self._due

    def sent(self) -> None:
        """An update was just sent: the next is due one interval from now."""
        self._due = self._clock() + self.interval


_STOP = object()


class Consumer:
    """Streams every committed change of a logical replication slot into ``callback``.

    ``start()`` runs it in the background, ``stop()`` ends it gracefully from
    any thread, ``join()`` waits and re-raises the failure that ended it,
    ``run()`` is ``start()`` plus ``join()``. As a context manager it stops
    on exit.

    The callback runs in the reader thread, one event at a time, in stream
    order. It returns the LSN it has finished with (``event.lsn``), or
    ``None`` for no progress; a restart resumes right after the last
    acknowledged LSN. An exception from the callback ends the stream and
    comes out of ``join()``/``run()`` as the same object, after the
    connection is closed, with nothing after the last acknowledged LSN
    confirmed.

    Arguments: ``dsn`` and ``connect_params`` as psycopg2 takes them;
    ``slot`` the slot name; ``plugin`` ``"pgoutput"`` (the default; needs
    ``publication``, a name or a list), ``"wal2json"``, one added with
    :func:`replicant.decoders.register_decoder`, or any other plugin (raw
    events); ``options`` extra plugin options; ``decoder`` instead of
    ``plugin``: a decoder object of your own (the
    :class:`replicant.decoders.Decoder` shape), which then takes no
    ``publication`` or ``options`` (configure the decoder itself) and whose
    ``plugin`` is the slot's; ``create_slot`` creates a
    missing slot (``temporary`` for one that goes with the connection);
    ``start_lsn`` skips transactions that committed before it;
    ``status_interval`` seconds between timed status updates;
    ``idle_advance`` lets the confirmed position follow the server while
    nothing is pending; ``end_lsn`` stops once the stream reaches it;
    ``decode_values`` ``False`` leaves column values as the server sent them;
    ``on_stop`` is called (in the supervisor thread, once the reader has
    stopped) before each final status update, so that work finished outside
    the callback (a file written and fsynced in batches, say) is reported:
    it returns the LSN to acknowledge (the same rules as the callback's) or
    ``None``; an exception from it ends the consumer and, unless another
    failure ended it first, comes out of ``join()``/``run()``.
    ``on_batch_end`` is called in the reader thread after each batch of
    events it delivered (everything the connection had ready, up to the
    end of one read), before it waits for more: the moment to push out
    what a callback buffers, once per batch rather than once per event or
    transaction. It returns an LSN to acknowledge or ``None``, like the
    callback, and an exception from it ends the stream as the callback's
    does. It comes after every batch in which the callback was called,
    also one cut short (by ``end_lsn``, a stop or a failure: then an
    exception from it is logged and the batch's own goes on); a
    snapshot's events come in batches of up to 512, each table's ending
    one.

    Snapshots (the guide's "Snapshot" chapter): ``snapshot="initial"``
    creates the slot with an exported snapshot and first delivers every row
    of the publication's tables (or ``snapshot_tables``) as it was at the
    slot's consistent point, as :class:`~replicant.changes.Read` events
    framed by :class:`~replicant.changes.SnapshotBegin`/``SnapshotEnd``,
    then streams every change after it; a slot that already exists is
    streamed without a snapshot. ``"initial_only"`` stops after the
    snapshot (keeping the slot, unless ``temporary``, for a later stream);
    ``"never"`` (the default) takes none. ``snapshot_workers`` connections
    read in parallel, tables above ``snapshot_chunk_rows`` rows in key (or
    page) ranges. During the snapshot the callback runs in the supervisor
    thread (never at the same time as in the reader). A snapshot that did
    not finish leaves no slot behind, so the next start takes it again.
    :meth:`snapshot` re-reads tables while streaming.

    Reconnecting: when the connection is lost (reset, server restart,
    terminated walsender, or ``receive_timeout`` seconds without a byte from
    the server), ``reconnect`` opens a new one after an exponential back-off
    with jitter (``backoff_initial`` doubling up to ``backoff_max`` seconds,
    at most ``max_retries`` attempts in a row; ``None`` for no limit) and
    resumes after the last acknowledged LSN. A transaction cut in the middle
    comes again from its ``Begin``. Retries apply once a stream has run: a
    first connection that fails (a wrong host or port, a server that is
    down) ends the consumer at once with :class:`ConnectionLost`, unless
    ``retry_first_connect`` is true (for a service that may start before
    its database). Errors a retry cannot fix (a slot dropped, invalidated or
    recreated, a missing publication, a refused login or a role without the
    REPLICATION attribute, malformed data, the callback's exception) end the
    consumer at once.

    Health: :meth:`health` gives lag and activity figures at any time, from
    any thread. With ``health_interval`` seconds, a separate ordinary
    connection reads the server's WAL end and the slot's ``wal_status`` and
    ``safe_wal_size`` that often (see :mod:`replicant.health`); without it,
    the server's position comes from keepalives only, which trail the
    server's WAL end during a backlog.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        slot: str,
        callback: Callback,
        plugin: str | None = None,
        decoder: Decoder | None = None,
        publication: str | Sequence[str] | None = None,
        options: Mapping[str, str] | None = None,
        create_slot: bool = True,
        temporary: bool = False,
        start_lsn: LSN | int | str | None = None,
        status_interval: float = 10.0,
        idle_advance: bool = True,
        end_lsn: LSN | int | str | None = None,
        decode_values: bool = True,
        reconnect: bool = True,
        max_retries: int | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        receive_timeout: float | None = 60.0,
        on_stop: Callable[[], LSN | int | str | None] | None = None,
        on_batch_end: Callable[[], LSN | int | str | None] | None = None,
        retry_first_connect: bool = False,
        health_interval: float | None = None,
        snapshot: str = "never",
        snapshot_tables: Sequence[str] | None = None,
        snapshot_workers: int = 1,
        snapshot_chunk_rows: int = 100_000,
        **connect_params: Any,
    ) -> None:
        if not callable(callback):
            raise ConfigurationError("callback must be callable")
        self._snapshot = check_snapshot_options(
            snapshot,
            snapshot_tables,
            snapshot_workers,
            snapshot_chunk_rows,
            create_slot=create_slot,
            publication=publication,
        )
        self._snapshot_tables = None if snapshot_tables is None else list(snapshot_tables)
        self._snapshot_workers = snapshot_workers
        self._snapshot_chunk_rows = snapshot_chunk_rows
        self.slot = validate_slot_name(slot)
        self._decoder = _pick_decoder(
            plugin, decoder, publication=publication, options=options, decode_values=decode_values
        )
        self.plugin = self._decoder.plugin
        self._dsn = dsn
        self._connect_params = connect_params
        self._callback = callback
        self._on_stop = on_stop
        if on_batch_end is not None and not callable(on_batch_end):
            raise ConfigurationError("on_batch_end must be callable")
        self._on_batch_end = on_batch_end
        self._snapshot_pending = 0  # snapshot events delivered since the last batch end
        self._create_slot = create_slot
        self._temporary = temporary
        self._publications: tuple[str, ...] = (
            ()
            if publication is None
            else (publication,)
            if isinstance(publication, str)
            else tuple(publication)
        )
        self._start_lsn = None if start_lsn is None else LSN(start_lsn)
        self._end_lsn = None if end_lsn is None else LSN(end_lsn)
        StatusTimer(status_interval)  # validates the interval
        self.status_interval = float(status_interval)
        if receive_timeout is not None and receive_timeout <= 0:
            raise ConfigurationError(f"receive_timeout must be positive, not {receive_timeout!r}")
        self.receive_timeout = receive_timeout
        self._backoff = Backoff(backoff_initial, backoff_max)
        if max_retries is not None and max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0 or None, not {max_retries!r}")
        self.reconnect = reconnect
        self.max_retries = max_retries
        self.retry_first_connect = retry_first_connect
        if health_interval is not None and health_interval <= 0:
            raise ConfigurationError(f"health_interval must be positive, not {health_interval!r}")
        self.health_interval = health_interval
        self._progress = WalProgress(idle_advance=idle_advance)
        self._counters = _Counters()

        # Health (written by the reader unless said otherwise; read by health()).
        self._server_lsn = LSN(0)  # the last keepalive's WAL position
        # Where the first stream started and the server's WAL end then: the
        # backlog the consumer began with (progress reports measure against it).
        self._backlog: tuple[LSN, LSN] | None = None
        self._last_heard: float | None = None  # monotonic time of the last frame
        # (end LSN, commit time) of transactions received, not yet acknowledged.
        self._pending_commits: deque[tuple[LSN, _dt.datetime | None]] = deque(
            maxlen=_PENDING_COMMITS
        )
        self._acked_commit_time: _dt.datetime | None = None
        self._received_commit_time: _dt.datetime | None = None
        self._begin_commit_time: _dt.datetime | None = None  # of the last Begin
        self._rates = RateMeter(_RATE_WINDOW)
        self._errors: dict[str, int] = {}  # by kind; the supervisor and the monitor write
        self._errors_lock = threading.Lock()
        self._last_error: str | None = None
        self._monitor: SlotMonitor | None = None

        self._state_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._done = threading.Event()
        self._failure: BaseException | None = None
        # The connection attempt under way; everything that belongs to one
        # connection lives on it and goes with it.
        self._current: _Attempt | None = None
        # What the server was told: a slot confirmed beyond it on reconnect
        # was moved behind our back (dropped and recreated, or advanced).
        self._reported_flush: LSN | None = None
        self._slot_seen = False
        # Incremental snapshots need the stream's logical messages; only a
        # consumer that asks for them pays for the watermark filter.
        self._incremental: IncrementalSnapshots | None = None
        if streams_messages(self._decoder):
            self._incremental = IncrementalSnapshots(
                dsn,
                connect_params,
                name=self.slot,
                publications=self._publications,
                **reading_options(self._decoder),
            )
            self._callback = self._incremental.wrap(callback)

    def __repr__(self) -> str:
        state = (
            "done" if self._done.is_set() else "running" if self._supervisor is not None else "new"
        )
        target = mask_dsn(self._dsn, **self._connect_params)
        return f"<Consumer slot={self.slot!r} plugin={self.plugin!r} {target!r} {state}>"

    # -- public API

    @property
    def progress(self) -> Progress:
        """The current ``received``, ``flushed`` and ``applied`` LSNs."""
        return self._progress.position()

    @property
    def stats(self) -> Stats:
        """Counts of events, transactions, bytes, status updates, keepalives, reconnects."""
        return self._counters.snapshot()

    def health(self) -> Health:
        """Lag and activity now: a :class:`~replicant.health.Health` snapshot.

        Safe from any thread, at any time (before start, while streaming,
        after the end); it takes no lock the stream waits on for long.
        """
        counters = self._counters
        events, transactions = counters.events, counters.transactions
        position = self._progress.position()
        received, flushed = position.received, position.flushed
        monitor = self._monitor
        reading = None if monitor is None else monitor.latest
        server: LSN | None = self._server_lsn or None
        if reading is not None and (server is None or reading.server_lsn > server):
            server = reading.server_lsn
        # The walsender has not yet sent all the WAL the server had at the last read.
        behind_server = reading is not None and reading.server_lsn > received
        in_transaction = bool(self._decoder.in_transaction) if self.running else False
        now = _dt.datetime.now(_dt.timezone.utc)
        received_caught_up = not behind_server and not in_transaction
        pending = self._pending_commits
        acked_caught_up = received_caught_up and not pending
        acked_time = self._acked_commit_time
        if acked_time is None:
            # Nothing acknowledged yet: at least as far behind as the oldest
            # transaction received and not acknowledged.
            oldest = pending[0] if pending else None
            acked_time = oldest[1] if oldest is not None else self._begin_commit_time
        events_rate, transactions_rate = self._rates.rates(events, transactions)
        heard = self._last_heard
        attempt = self._current
        backlog = self._backlog
        with self._errors_lock:
            errors = dict(self._errors)
            last_error = self._last_error
        return Health(
            slot=self.slot,
            running=self.running,
            streaming=attempt is not None and attempt.stream is not None,
            streams=counters.streams,
            received_lsn=received,
            acknowledged_lsn=flushed,
            server_lsn=server,
            bytes_behind=None if server is None else max(0, server - flushed),
            seconds_behind=0.0 if acked_caught_up else seconds_since(acked_time, now),
            seconds_behind_received=(
                0.0 if received_caught_up else seconds_since(self._received_commit_time, now)
            ),
            events=events,
            transactions=transactions,
            bytes=counters.bytes,
            reconnects=counters.reconnects,
            errors=errors,
            events_per_second=events_rate,
            transactions_per_second=transactions_rate,
            rate_window=self._rates.window,
            seconds_since_last_message=None if heard is None else time.monotonic() - heard,
            wal_status=None if reading is None else reading.wal_status,
            safe_wal_size=None if reading is None else reading.safe_wal_size,
            slot_confirmed_lsn=None if reading is None else reading.confirmed_lsn,
            slot_read_age=None if reading is None else time.monotonic() - reading.at,
            last_error=last_error,
            backlog_start_lsn=None if backlog is None else backlog[0],
            backlog_end_lsn=None if backlog is None else backlog[1],
        )

    def _count_error(self, kind: str, error: BaseException) -> None:
        with self._errors_lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1
            if kind != "health_query":
                self._last_error = _one_line(error)

    def acknowledge(self, lsn: LSN | int | str) -> LSN:
        """Acknowledge ``lsn`` from outside the callback (any thread).

        For consumers that finish work later than the callback returns (a
        batch written and fsynced on a timer, say). The same rules as a
        callback's return value apply: forward only, never past what was
        received. Returns the acknowledged LSN; the next status update
        reports it.
        """
        return self._progress.acknowledge(lsn)

    def snapshot(self, tables: Sequence[str], *, chunk_rows: int = 10_000) -> IncrementalSnapshot:
        """Read ``tables`` again while streaming (an incremental snapshot); returns its handle.

        Rows come as :class:`~replicant.changes.Read` events in stream order,
        chunk by chunk (``chunk_rows`` rows in primary-key order), framed per
        table by ``SnapshotBegin``/``SnapshotEnd`` with ``incremental=True``;
        a row changed while its chunk was read comes from the stream instead,
        so no ``Read`` is older than a change already delivered. Needs
        pgoutput with ``messages`` on (``options={"messages": "true"}``) on
        PostgreSQL 14+, and tables with a primary key: otherwise
        :class:`ConfigurationError` at once. ``handle.wait()`` waits for the
        end. Not kept across restarts: ask again after one.
        """
        if self._incremental is None:
            raise ConfigurationError(
                "incremental snapshots need the stream's logical messages: create the consumer "
                'with plugin pgoutput and options={"messages": "true"} (PostgreSQL 14+)'
            )
        if not self.running:
            raise UsageError("snapshot() needs a running consumer (start() it first)")
        return self._incremental.request(
            tables, chunk_rows=chunk_rows, stream_running=lambda: self.running
        )

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of the stream."""
        return self._supervisor is not None and not self._done.is_set()

    def start(self) -> Consumer:
        """Start consuming in the background. Returns ``self``."""
        with self._state_lock:
            if self._supervisor is not None:
                raise UsageError("this consumer was already started")
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"replicant-supervisor[{self.slot}]", daemon=True
            )
            self._supervisor.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """End the stream gracefully and wait up to ``timeout`` seconds for it.

        The callback in flight finishes, a final status update carries the
        last acknowledged LSN, then CopyDone; when this returns (in time), the
        slot's ``confirmed_flush_lsn`` is that LSN. Safe from any thread,
        any number of times. Does not raise the failure: ``join()`` does.
        """
        self._stop_requested.set()
        attempt = self._wake()
        supervisor = self._supervisor
        current = threading.current_thread()
        # From the callback (the reader) or the supervisor itself, waiting
        # would wait for ourselves: the stop happens once we return.
        threads = () if attempt is None else attempt.threads
        if supervisor is not None and current is not supervisor and current not in threads:
            supervisor.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the end; re-raise the failure that ended the stream, as it was raised.

        Raises :class:`TimeoutError` if ``timeout`` passes first.
        """
        supervisor = self._supervisor
        if supervisor is None:
            raise UsageError("this consumer was never started")
        supervisor.join(timeout)
        if supervisor.is_alive():
            raise TimeoutError(f"the consumer did not end within {timeout} s")
        if self._failure is not None:
            raise self._failure

    def run(self) -> None:
        """Consume until the stream ends, ``stop()`` is called or it fails.

        In the main thread, Ctrl-C and SIGTERM stop it gracefully (a second
        Ctrl-C gives up waiting and raises ``KeyboardInterrupt``).
        """
        self.start()
        if threading.current_thread() is not threading.main_thread():
            self.join()
            return

        def graceful(signum: int) -> None:
            logger.info("signal %s: stopping gracefully", signal.Signals(signum).name)
            self._stop_requested.set()
            self._wake()

        signals = StopSignals(graceful, stopping=self._stop_requested.is_set)
        signals.install()
        try:
            # Wait in slices: the kernel may deliver the signal to one of our
            # threads, and then Python runs the handler only when the main
            # thread next runs bytecode; an untimed join would never return
            # to do so.
            supervisor = self._supervisor
            assert supervisor is not None
            while supervisor.is_alive():
                supervisor.join(_SIGNAL_CHECK_INTERVAL)
            self.join()
        except KeyboardInterrupt:
            self._abort()
            raise
        finally:
            signals.restore()

    def __enter__(self) -> Consumer:
        if self._supervisor is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            self.join()

    # -- the supervisor

    def _supervise(self) -> None:
        try:
            if self.health_interval is not None:
                self._monitor = SlotMonitor(
                    self._dsn,
                    self._connect_params,
                    self.slot,
                    self.health_interval,
                    on_error=self._count_error,
                )
                self._monitor.start()
            self._attempts()
        except BaseException as error:
            with self._state_lock:
                self._failure = error
        finally:
            if self._monitor is not None:
                self._monitor.stop()
            if self._incremental is not None:
                self._incremental.close()
            self._done.set()

    def _wake(self) -> _Attempt | None:
        """Wake the current attempt's keepalive thread (after a stop request); return it.

        A stop requested before an attempt exists needs no wake-up: its
        threads check the stop flag before they wait.
        """
        attempt = self._current
        if attempt is not None:
            attempt.queue.put(_STOP)
        return attempt

    def _attempts(self) -> None:
        """Run connection attempts until a graceful end, reconnecting after a lost connection."""
        failures = 0
        while not self._stop_requested.is_set():
            frames_before = self._counters.frames
            try:
                self._attempt()
                return
            except (ConnectionLost, SlotError) as error:
                self._count_error(type(error).__name__, error)
                if not self._retryable(error) or self._stop_requested.is_set():
                    raise
                # An attempt that received data was healthy: start the
                # back-off over; one that never got going backs off further.
                progressed = self._counters.frames > frames_before
                failures = 1 if progressed else failures + 1
                if self.max_retries is not None and failures > self.max_retries:
                    raise
                delay = self._backoff.delay(failures)
                self._counters.reconnects += 1
                logger.warning(
                    "slot %s: %s; reconnecting in %.1f s (attempt %d%s)",
                    self.slot,
                    _one_line(error),
                    delay,
                    failures,
                    "" if self.max_retries is None else f" of {self.max_retries}",
                )
                self._stop_requested.wait(delay)

    def _retryable(self, error: ReplicantError) -> bool:
        if not self.reconnect:
            return False
        if isinstance(error, ConnectionLost):
            # Before any stream ran, a lost connection is most likely a wrong
            # address, which no retry fixes (as pg_recvlogical, which exits).
            return self._counters.streams > 0 or self.retry_first_connect
        # "replication slot ... is active for PID ...": the server has not yet
        # noticed that our previous connection is gone.
        return isinstance(error, SlotError) and error.sqlstate == "55006"

    def _attempt(self) -> None:
        """One connection attempt: prepare the slot, stream until the first thread ends.

        Returns normally on a graceful end; raises the failure that ended it,
        after the connection is closed. The attempt's state (connection,
        stream, queue, threads) is dropped with it.
        """
        attempt = _Attempt()
        self._current = attempt
        try:
            self._run_attempt(attempt)
        finally:
            attempt.close()
            self._current = None

    def _run_attempt(self, attempt: _Attempt) -> None:
        connection = ReplicationConnection.connect(self._dsn, **self._connect_params)
        attempt.connection = connection
        confirmed = self._prepare_slot(connection)
        start = max(confirmed, self._progress.acknowledged)
        if self._start_lsn is not None:
            start = max(start, self._start_lsn)
        self._progress.reset(start)
        if self._stop_requested.is_set():
            return
        if self._backlog is None:
            # IDENTIFY_SYSTEM's WAL position: the server's end as the stream
            # starts, known before the first keepalive (one round trip, once).
            server_end = connection.identify_system().xlogpos
            end = server_end if self._end_lsn is None else min(server_end, self._end_lsn)
            self._backlog = (start, max(end, start))
            if server_end > self._server_lsn:
                self._server_lsn = server_end
        self._decoder.reset()  # a transaction cut in the middle comes again from its start
        stream = connection.start(
            self.slot,
            start,
            self._decoder.start_options(connection.server_version),
            plugin=self.plugin,
        )
        attempt.stream = stream
        attempt.last_heard = time.monotonic()
        self._counters.streams += 1
        logger.info(
            "streaming slot %s from %s (plugin %s, server %s)",
            self.slot,
            start,
            self.plugin,
            connection.server_version,
        )
        reader = threading.Thread(
            target=attempt.guard,
            args=(self._read_loop,),
            name=f"replicant-reader[{self.slot}]",
            daemon=True,
        )
        keeper = threading.Thread(
            target=attempt.guard,
            args=(self._keepalive_loop,),
            name=f"replicant-keepalive[{self.slot}]",
            daemon=True,
        )
        attempt.threads = (reader, keeper)
        reader.start()
        keeper.start()
        try:
            attempt.first_end.wait()
        finally:
            # Whoever ended first, the other follows: the reader finishes the
            # callback in flight, the keepalive thread wakes up.
            attempt.ending = True
            attempt.queue.put(_STOP)
            keeper.join()
            reader.join()
        if attempt.failure is None:
            self._finish(stream)
            return
        # After any other failure (the callback's, bad data) the connection
        # still works: tell the server what was acknowledged before closing,
        # briefly. A lost connection (or a silent one) gets no such wait.
        if not isinstance(attempt.failure, ConnectionLost):
            try:
                self._finish(stream, timeout=2.0)
            except Exception as error:  # a second failure: logged, the first is raised
                logger.warning(
                    "slot %s: could not end the stream cleanly after a failure (%r): %s",
                    self.slot,
                    attempt.failure,
                    error,
                    exc_info=error,
                )
        raise attempt.failure

    def _prepare_slot(self, connection: ReplicationConnection) -> LSN:
        """Check the publications and (or create) the slot; return the position it confirmed."""
        # Checked before a slot is made, so a refused start leaves none behind.
        # From 18 the server only warns about a missing publication and
        # streams nothing for it, so this check is the only error there is.
        if self._publications:
            missing = connection.missing_publications(self._publications)
            if missing:
                # The server's own error for it (before 18), with its SQLSTATE,
                # so that code catching ServerError/42704 sees one error on
                # every version.
                names = ", ".join(f'"{name}"' for name in missing)
                raise ServerError(
                    f"publication {names} does not exist",
                    sqlstate="42704",
                    hint="create it (CREATE PUBLICATION ... FOR TABLE ...) in this "
                    "database, or fix the name",
                )
        state = connection.read_slot(self.slot)
        if state is not None and self._temporary and not state.temporary:
            raise SlotError(
                f'replication slot "{self.slot}" exists and is permanent: a temporary run '
                "never consumes a permanent slot (it would advance it); pick another slot "
                "name, or stream this one without temporary",
                sqlstate="42710",
            )
        if state is None and self._slot_seen and not self._temporary:
            raise SlotError(
                f'replication slot "{self.slot}" was dropped while replicant was '
                f"disconnected; changes after {self._progress.acknowledged} may be lost. "
                "Recreate the slot and resynchronise.",
                sqlstate="42704",
            )
        if state is None:
            if not self._create_slot:
                raise SlotError(
                    f'replication slot "{self.slot}" does not exist on '
                    f"{_target(connection)} (pass create_slot=True to create it)",
                    sqlstate="42704",
                )
            if self._snapshot != "never":
                return self._initial_snapshot(connection)
            created = connection.create_slot(
                self.slot,
                self.plugin,
                temporary=self._temporary,
                two_phase=_wants_two_phase(self._decoder, connection.server_version),
            )
            logger.info("created slot %s at %s", self.slot, created.consistent_point)
            self._slot_seen = True
            return created.consistent_point
        check_slot_state(state, plugin=self.plugin)
        if self._snapshot == "initial_only" and not self._slot_seen:
            raise SlotError(
                f'replication slot "{self.slot}" exists: its snapshot was taken (or not) when '
                "it was created and cannot be taken again; drop it, pick a new slot name, or "
                "re-read tables with consumer.snapshot([...]) while streaming"
            )
        confirmed = state.confirmed_flush_lsn or state.restart_lsn or LSN(0)
        if self._reported_flush is not None and confirmed > self._reported_flush:
            raise SlotError(
                f'replication slot "{self.slot}" now confirms {confirmed}, beyond the '
                f"{self._reported_flush} replicant reported: it was dropped and recreated "
                "or advanced behind replicant's back, so changes in between were skipped. "
                "Resynchronise, then start again.",
            )
        self._slot_seen = True
        return confirmed

    def _initial_snapshot(self, connection: ReplicationConnection) -> LSN:
        """Create the slot exporting its snapshot, deliver every row, return the consistent point.

        Unless the snapshot finished, no slot is left under the slot's name
        and the consumer stops (``stop()``) or fails (the error propagates).
        """

        def copy(created: Any) -> bool:
            failure: BaseException | None = None
            try:
                return take_snapshot(
                    self._dsn,
                    self._connect_params,
                    snapshot_name=created.snapshot_name,
                    lsn=created.consistent_point,
                    deliver=self._deliver_snapshot,
                    stop=self._stop_requested,
                    tables=self._snapshot_tables,
                    publications=self._publications,
                    workers=self._snapshot_workers,
                    chunk_rows=self._snapshot_chunk_rows,
                    **reading_options(self._decoder),
                    name=self.slot,
                )
            except BaseException as error:
                failure = error
                raise
            finally:
                # A snapshot that stopped between batch ends ends its batch too.
                self._end_snapshot_batch(failure)

        lsn, finished = create_slot_with_snapshot(
            connection,
            self.slot,
            self.plugin,
            temporary=self._temporary,
            two_phase=_wants_two_phase(self._decoder, connection.server_version),
            copy=copy,
        )
        if finished:
            self._slot_seen = True
        if not finished or self._snapshot == "initial_only":
            self._stop_requested.set()
        return lsn

    def _finish(self, stream: ReplicationStream, *, timeout: float = 30.0) -> None:
        """After both threads ended: final status update, CopyDone, close."""
        if stream.ended:
            return
        if self._on_stop is not None:
            finished = self._on_stop()
            if finished is not None:
                self._progress.acknowledge(finished)
        self._send_status(stream, reply=False, timeout=min(timeout, 10.0))
        stream.stop(timeout=timeout)
        logger.info("stopped slot %s at %s", self.slot, self._reported_flush)

    def _send_status(
        self, stream: ReplicationStream, *, reply: bool, timeout: float = 30.0
    ) -> None:
        written, flushed, applied = self._progress.position()
        stream.send_status(written, flushed, applied, reply=reply, timeout=timeout)
        self._reported_flush = flushed
        self._counters.status_updates += 1

    def _abort(self) -> None:
        """Give up waiting for a graceful end: close the connection now."""
        self._stop_requested.set()
        attempt = self._wake()
        if attempt is not None:
            attempt.close()
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.join(5.0)

    # -- the reader

    def _read_loop(self, attempt: _Attempt) -> None:
        stream = attempt.stream
        assert stream is not None
        decode = self._decoder.decode
        decoder = self._decoder
        # A decoder that records the stream (replicant.recording) also sees each
        # batch as it came: server send times and keepalives, which decode() lacks.
        observe = getattr(decoder, "observe_frames", None)
        callback = self._callback
        batch_end = self._on_batch_end
        progress = self._progress
        counters = self._counters
        stop_requested = self._stop_requested.is_set
        end_lsn = self._end_lsn
        marks = _MARKS
        put = attempt.queue.put
        receive_timeout = self.receive_timeout
        monotonic = time.monotonic
        pending = self._pending_commits
        remember_commit = pending.append
        sample = self._rates.sample
        last_event: Event | None = None  # the last one delivered
        while not (attempt.ending or stop_requested()):
            frames = stream.read(_POLL_INTERVAL)
            if not frames:
                if pending:
                    self._forget_acknowledged()
                sample(counters.events, counters.transactions)
                if (
                    receive_timeout is not None
                    and monotonic() - attempt.last_heard > receive_timeout
                ):
                    raise ConnectionLost(
                        f"nothing from the server for {receive_timeout:g} s "
                        "(receive_timeout): the connection is presumed dead"
                    )
                continue
            attempt.last_heard = self._last_heard = monotonic()
            # Bookkeeping once per batch, not once per event: the highest LSN
            # the callback returned is published on the way out of the batch
            # (one lock, one LSN), and so are the counters.
            # Not frames[-1]: a transaction sent after another's commit carries
            # lower change positions, so the batch's last frame need not be its highest.
            progress.receive(max(frame.wal_end for frame in frames))
            if observe is not None:
                observe(frames)
            acked = 0
            events = nbytes = nframes = ends = 0
            failure: BaseException | None = None
            try:
                for frame in frames:
                    if type(frame) is XLogData:
                        wal_start, wal_end, _, data = frame
                        if end_lsn is not None and wal_start > end_lsn:
                            self._reached_end(end_lsn)
                            return
                        nframes += 1
                        nbytes += len(data)
                        for event in decode(data, wal_start, wal_end):
                            result = callback(event)
                            if result is not None:
                                if type(result) is LSN:  # event.lsn: valid; published below
                                    if result > acked:
                                        acked = result
                                else:
                                    progress.acknowledge(result)  # checked now
                            last_event = event
                            events += 1
                            mark = marks.get(type(event))
                            if mark is not None:
                                if mark == _END:
                                    ends += 1
                                    remember_commit((event.lsn, commit_time_of(event)))
                                else:
                                    self._begin_commit_time = commit_time_of(event)
                                    self._received_commit_time = (
                                        self._begin_commit_time or self._received_commit_time
                                    )
                        if end_lsn is not None and wal_start >= end_lsn:
                            self._reached_end(end_lsn)
                            return
                        if attempt.ending or stop_requested():
                            return  # the rest was not delivered, so not acknowledged
                    else:
                        assert type(frame) is PrimaryKeepalive
                        if acked:  # idle_advance compares it with last_delivered
                            progress.acknowledge(acked)
                            acked = 0
                        counters.keepalives += 1
                        if frame.wal_end > self._server_lsn:
                            self._server_lsn = LSN.from_int(frame.wal_end)
                        progress.keepalive(
                            frame.wal_end,
                            in_transaction=decoder.in_transaction,
                            last_delivered=0 if last_event is None else last_event.lsn,
                        )
                        if frame.reply_requested:
                            put(frame)
                        if (
                            end_lsn is not None
                            and frame.wal_end >= end_lsn
                            and not decoder.in_transaction
                        ):
                            self._reached_end(end_lsn)
                            return
            except BaseException as error:
                failure = error
                raise
            finally:
                if events and batch_end is not None:
                    # Also after a batch cut short or failed: the callback may
                    # hold something (a lock, a buffer) until its batch ends.
                    acked = self._end_batch(batch_end, acked, failure)
                if acked:
                    progress.acknowledge(acked)
                counters.frames += nframes
                counters.bytes += nbytes
                counters.events += events
                counters.transactions += ends
                if pending:
                    self._forget_acknowledged()
                sample(counters.events, counters.transactions)

    def _end_batch(
        self,
        batch_end: Callable[[], LSN | int | str | None],
        acked: int,
        failure: BaseException | None,
    ) -> int:
        """Call ``on_batch_end``; return ``acked`` raised to what it returned.

        When the batch itself failed (``failure``), a failure of the hook
        is logged (unless it is the same one) and the batch's own goes on.
        """
        try:
            result = batch_end()
        except BaseException as error:
            if failure is None:
                raise
            if error is not failure:
                logger.warning("on_batch_end failed after the batch failed: %s", error)
            return acked
        if result is None:
            return acked
        if type(result) is LSN:
            return result if result > acked else acked
        self._progress.acknowledge(result)  # checked now
        return acked

    def _deliver_snapshot(self, event: Event) -> object:
        """The callback for a snapshot's events, in batches of them for on_batch_end.

        A batch ends every ``_SNAPSHOT_BATCH`` events, at each
        ``SnapshotEnd`` (a table's or the whole's) and when the snapshot
        stops (:meth:`_end_snapshot_batch`), as the reader's batches do.
        """
        batch_end = self._on_batch_end
        if batch_end is None:
            return self._callback(event)
        try:
            result = self._callback(event)
        except BaseException as error:
            self._snapshot_pending = 0
            self._end_batch(batch_end, 0, error)
            raise
        self._snapshot_pending += 1
        if self._snapshot_pending >= _SNAPSHOT_BATCH or type(event) is SnapshotEnd:
            self._end_snapshot_batch(None)
        return result

    def _end_snapshot_batch(self, failure: BaseException | None) -> None:
        """End the snapshot's batch under way, if one is (see _deliver_snapshot)."""
        batch_end = self._on_batch_end
        if batch_end is not None and self._snapshot_pending:
            self._snapshot_pending = 0
            self._end_batch(batch_end, 0, failure)

    def _forget_acknowledged(self) -> None:
        """Drop the commit times of transactions now acknowledged, keeping the newest's."""
        pending = self._pending_commits
        if pending:
            self._received_commit_time = pending[-1][1] or self._received_commit_time
        flushed = self._progress.position().flushed
        acked = None
        while pending and pending[0][0] <= flushed:
            acked = pending.popleft()
        if acked is not None and acked[1] is not None:
            self._acked_commit_time = acked[1]

    def _reached_end(self, end_lsn: LSN) -> None:
        logger.info("reached end position %s", end_lsn)
        self._stop_requested.set()

    # -- the keepalive thread

    def _keepalive_loop(self, attempt: _Attempt) -> None:
        stream = attempt.stream
        assert stream is not None
        timer = StatusTimer(self.status_interval)
        get = attempt.queue.get
        stop_requested = self._stop_requested.is_set
        # An idle walsender that is told it is caught up sends nothing; after
        # half of receive_timeout of silence, ask it for an answer (as the
        # server's own walreceiver does), so silence means a dead link.
        ping_after = None if self.receive_timeout is None else self.receive_timeout / 2
        pinged_for: float | None = None
        while not (attempt.ending or stop_requested()):
            wait = timer.time_left()
            ping_at = None if ping_after is None else attempt.last_heard + ping_after
            if ping_at is not None and pinged_for != attempt.last_heard:
                wait = min(wait, max(0.0, ping_at - time.monotonic()))
            try:
                item = get(timeout=wait)
            except queue.Empty:
                item = None  # a timer ran out
            if item is _STOP or attempt.ending or stop_requested():
                return
            ping = (
                ping_at is not None
                and pinged_for != attempt.last_heard
                and time.monotonic() >= ping_at
            )
            if item is None and not timer.due() and not ping:
                continue
            if ping:
                pinged_for = attempt.last_heard
            self._send_status(stream, reply=ping)
            timer.sent()


class _Attempt:
    """One connection attempt: its connection, stream, queue and threads.

    Made for each connection and dropped with it, so nothing of one
    connection (a stale keepalive in the queue, the time the server was last
    heard, a failure) reaches the next.
    """

    def __init__(self) -> None:
        self.connection: ReplicationConnection | None = None
        self.stream: ReplicationStream | None = None
        # Keepalives that ask for a reply, and stop wake-ups, for the keepalive thread.
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.last_heard = time.monotonic()  # when the server last sent a byte
        self.threads: tuple[threading.Thread, ...] = ()
        self.first_end = threading.Event()
        self.failure: BaseException | None = None
        self.ending = False  # set by the supervisor: both threads wind down
        self._failure_lock = threading.Lock()

    def guard(self, body: Callable[[_Attempt], None]) -> None:
        """Run a thread's body; record its failure and signal the end.

        The first failure is the one the supervisor re-raises; a later one
        (say the keepalive thread failing while the reader's error is on its
        way out) is logged with its traceback, not dropped.
        """
        try:
            body(self)
        except BaseException as error:
            with self._failure_lock:
                first = self.failure
                if first is None:
                    self.failure = error
            if first is not None:
                logger.error(
                    "%s failed after the first failure (%r): %s",
                    threading.current_thread().name,
                    first,
                    error,
                    exc_info=error,
                )
        finally:
            self.first_end.set()

    def close(self) -> None:
        """Close the connection (idempotent, from any thread)."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()


class Backoff:
    """Exponential back-off with jitter: attempt n waits about initial * 2**(n-1).

    The window is capped at ``maximum``; the wait is drawn uniformly from its
    upper half, so clients that lost the same server spread out instead of
    all coming back at once, and none comes back instantly.
    """

    def __init__(self, initial: float, maximum: float, *, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ConfigurationError(
                f"back-off needs 0 < backoff_initial <= backoff_max, got {initial!r}, {maximum!r}"
            )
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1 for the first retry)."""
        window = min(self.maximum, self.initial * 2 ** min(max(attempt, 1) - 1, 32))
        return float(window / 2 + self._rng.random() * window / 2)


def _pick_decoder(
    plugin: str | None,
    decoder: Decoder | None,
    *,
    publication: str | Sequence[str] | None,
    options: Mapping[str, str] | None,
    decode_values: bool,
) -> Decoder:
    """The consumer's decoder: the user's own, or the registry's for ``plugin``."""
    if decoder is None:
        return make_decoder(
            "pgoutput" if plugin is None else plugin,
            publication=publication,
            options=dict(options or {}),
            decode_values=decode_values,
        )
    if not isinstance(decoder, Decoder):
        raise ConfigurationError(
            f"decoder must have the Decoder shape (plugin, start_options, decode, reset, "
            f"in_transaction), not {decoder!r}"
        )
    if not isinstance(decoder.plugin, str) or not decoder.plugin:
        raise ConfigurationError(
            f"the decoder's plugin must be a plugin name, not {decoder.plugin!r}"
        )
    if plugin is not None and plugin != decoder.plugin:
        raise ConfigurationError(
            f"plugin={plugin!r} conflicts with the decoder's plugin {decoder.plugin!r}: "
            "pass one of them"
        )
    if publication is not None or options:
        raise ConfigurationError(
            "publication and options configure the built-in decoders; "
            "with decoder=..., configure that decoder itself"
        )
    if not decode_values:
        raise ConfigurationError(
            "decode_values configures the built-in decoders; "
            "with decoder=..., configure that decoder itself"
        )
    return decoder


def _one_line(error: BaseException | str) -> str:
    """A message on one line: libpq's and the server's several lines joined with "; "."""
    text = str(error).strip() or (type(error).__name__ if isinstance(error, BaseException) else "")
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _target(connection: ReplicationConnection) -> str:
    """Where a connection went, for messages: ``host H port P database D``."""
    info = connection.raw.info
    return f"host {info.host} port {info.port} database {info.dbname}"


def _wants_two_phase(decoder: Decoder, server_version: int) -> bool:
    options = decoder.start_options(server_version)
    return str(options.get("two_phase", "")).lower() in ("true", "on", "1")


def _blocking(make: Callable[_P, Consumer]) -> Callable[_P, None]:
    """A function taking ``make``'s arguments that makes a consumer and runs it."""

    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        """Stream every committed change of ``slot`` into ``callback`` until stopped.

        Blocks until the stream ends or fails; see :class:`Consumer` for the
        arguments. The callback returns the LSN it has finished with
        (``event.lsn``) or ``None``; a restart resumes right after the last
        acknowledged LSN. In the main thread Ctrl-C and SIGTERM stop gracefully.
        A failure (including the callback's own exception) is re-raised as it
        was raised, after the connection is closed.
        """
        make(*args, **kwargs).run()

    # Documented with Consumer's own parameters, so they are written once.
    run.__signature__ = inspect.signature(make).replace(  # type: ignore[attr-defined]
        return_annotation="None"
    )
    run.__qualname__ = "run"
    return run


run = _blocking(Consumer)
