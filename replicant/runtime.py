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

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, NamedTuple

from replicant.changes import Commit, CommitPrepared, Event, RollbackPrepared, StreamCommit
from replicant.connection import ReplicationConnection, ReplicationStream, mask_dsn
from replicant.decoders import Decoder, make_decoder
from replicant.errors import ConfigurationError, ReplicantError, SlotError
from replicant.lsn import LSN
from replicant.protocol import PrimaryKeepalive, XLogData, validate_slot_name

__all__ = [
    "Callback",
    "Consumer",
    "Progress",
    "Stats",
    "StatusTimer",
    "WalProgress",
    "run",
]

logger = logging.getLogger("replicant")

Callback = Callable[[Event], "LSN | int | str | None"]

# Events that end a transaction, for the transaction count.
_TRANSACTION_ENDS = frozenset({Commit, StreamCommit, CommitPrepared, RollbackPrepared})

# How often an idle reader looks up from the socket to notice stop(): the
# bound on how long stop() takes on an idle stream.
_POLL_INTERVAL = 0.1


class Progress(NamedTuple):
    """Where the consumer stands.

    ``received``: the highest WAL position seen from the server;
    ``flushed`` and ``applied``: what is (or next will be) reported as done.
    """

    received: LSN
    flushed: LSN
    applied: LSN


class WalProgress:
    """The progress state shared by the reader and the keepalive thread.

    The reader writes it (and :meth:`acknowledge` may also be called from
    other threads, under a lock); the keepalive thread reads it. Each field
    is a single reference, so a reader of one field never sees it torn; the
    order of reads in :meth:`position` keeps flushed at or below written.

    ``acknowledged`` never goes backward and never passes ``received``.
    With ``idle_advance``, :meth:`keepalive` lets the flushed position follow
    the server's WAL end while everything delivered is acknowledged and no
    transaction is open: every transaction that committed before that WAL
    end was already delivered, so confirming it skips nothing, and an idle
    or filtered database does not keep WAL forever.
    """

    def __init__(self, start: int = 0, *, idle_advance: bool = True) -> None:
        self.idle_advance = idle_advance
        self.received = self.acknowledged = self.idle = LSN(start)
        self._ack_lock = threading.Lock()

    def reset(self, start: int) -> None:
        """Start over at ``start`` (a new connection), keeping what was acknowledged."""
        start_lsn = max(LSN(start), self.acknowledged)
        self.received = self.acknowledged = self.idle = start_lsn

    def receive(self, lsn: int) -> None:
        """The server sent data or a keepalive reaching ``lsn``."""
        if lsn > self.received:
            self.received = LSN.from_int(lsn)

    def acknowledge(self, lsn: LSN | int | str) -> LSN:
        """The callback finished everything up to ``lsn``; returns the acknowledged LSN.

        A smaller LSN than the current one is ignored; a larger one than
        received is held at received. Raises :class:`ConfigurationError` for a
        value that is not an LSN.
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
        """The server's WAL end arrived while the reader is between frames."""
        self.receive(wal_end)
        if (
            self.idle_advance
            and not in_transaction
            and self.acknowledged >= last_delivered
            and wal_end > self.idle
        ):
            self.idle = LSN.from_int(wal_end)

    def position(self) -> Progress:
        """``(written, flushed, applied)`` to report now."""
        flushed = self.acknowledged
        if self.idle_advance and self.idle > flushed:
            flushed = self.idle
        written = self.received  # read after flushed: it only grows
        return Progress(written, flushed, flushed)


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


class _Counters:
    # Plain attributes, each written by one thread; Stats is the snapshot.
    __slots__ = (
        "bytes",
        "events",
        "frames",
        "keepalives",
        "reconnects",
        "status_updates",
        "transactions",
    )

    def __init__(self) -> None:
        self.events = self.transactions = self.bytes = self.frames = 0
        self.status_updates = self.keepalives = self.reconnects = 0

    def snapshot(self) -> Stats:
        return Stats(
            events=self.events,
            transactions=self.transactions,
            bytes=self.bytes,
            frames=self.frames,
            status_updates=self.status_updates,
            keepalives=self.keepalives,
            reconnects=self.reconnects,
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
    ``slot`` the slot name; ``plugin`` ``"pgoutput"`` (needs
    ``publication``, a name or a list), ``"wal2json"`` or any other plugin
    (raw events); ``options`` extra plugin options; ``create_slot`` creates a
    missing slot (``temporary`` for one that goes with the connection);
    ``start_lsn`` skips transactions that committed before it;
    ``status_interval`` seconds between timed status updates;
    ``idle_advance`` lets the confirmed position follow the server while
    nothing is pending; ``end_lsn`` stops once the stream reaches it;
    ``decode_values`` ``False`` leaves column values as the server sent them.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        slot: str,
        callback: Callback,
        plugin: str = "pgoutput",
        publication: str | Sequence[str] | None = None,
        options: Mapping[str, str] | None = None,
        create_slot: bool = True,
        temporary: bool = False,
        start_lsn: LSN | int | str | None = None,
        status_interval: float = 10.0,
        idle_advance: bool = True,
        end_lsn: LSN | int | str | None = None,
        decode_values: bool = True,
        **connect_params: Any,
    ) -> None:
        if not callable(callback):
            raise ConfigurationError("callback must be callable")
        self.slot = validate_slot_name(slot)
        self.plugin = plugin
        self._dsn = dsn
        self._connect_params = connect_params
        self._callback = callback
        self._decoder: Decoder = make_decoder(
            plugin,
            publication=publication,
            options=dict(options or {}),
            decode_values=decode_values,
        )
        self._create_slot = create_slot
        self._temporary = temporary
        self._start_lsn = None if start_lsn is None else LSN(start_lsn)
        self._end_lsn = None if end_lsn is None else LSN(end_lsn)
        self._timer = StatusTimer(status_interval)  # validates the interval
        self.status_interval = float(status_interval)
        self._progress = WalProgress(idle_advance=idle_advance)
        self._counters = _Counters()

        self._state_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._done = threading.Event()
        self._failure: BaseException | None = None
        self._first_end = threading.Event()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stream: ReplicationStream | None = None
        self._connection: ReplicationConnection | None = None

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
        """Counts of events, transactions, bytes, status updates and keepalives."""
        return self._counters.snapshot()

    def acknowledge(self, lsn: LSN | int | str) -> LSN:
        """Acknowledge ``lsn`` from outside the callback (any thread).

        For consumers that finish work later than the callback returns (a
        batch written and fsynced on a timer, say). The same rules as a
        callback's return value apply: forward only, never past what was
        received. Returns the acknowledged LSN; the next status update
        reports it.
        """
        return self._progress.acknowledge(lsn)

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of the stream."""
        return self._supervisor is not None and not self._done.is_set()

    def start(self) -> Consumer:
        """Start consuming in the background. Returns ``self``."""
        with self._state_lock:
            if self._supervisor is not None:
                raise ReplicantError("this consumer was already started")
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
        self._queue.put(_STOP)
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the end; re-raise the failure that ended the stream, as it was raised.

        Raises :class:`TimeoutError` if ``timeout`` passes first.
        """
        supervisor = self._supervisor
        if supervisor is None:
            raise ReplicantError("this consumer was never started")
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
        previous: dict[signal.Signals, Any] = {}

        def graceful(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            logger.info("signal %s: stopping gracefully", signal.Signals(signum).name)
            self._stop_requested.set()
            self._queue.put(_STOP)

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, graceful)
        try:
            self.join()
        except KeyboardInterrupt:
            self._abort()
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

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
            self._session()
        except BaseException as error:
            self._fail(error)
        finally:
            self._close_connection()
            self._done.set()

    def _fail(self, error: BaseException) -> None:
        with self._state_lock:
            if self._failure is None:
                self._failure = error
        self._first_end.set()

    def _session(self) -> None:
        """One connection: set up the slot, stream until the first thread ends."""
        connection = ReplicationConnection.connect(self._dsn, **self._connect_params)
        self._connection = connection
        confirmed = self._prepare_slot(connection)
        start = confirmed if self._start_lsn is None else max(confirmed, self._start_lsn)
        self._progress.reset(start)
        if self._stop_requested.is_set():
            return
        self._decoder.reset()
        stream = connection.start(
            self.slot,
            start,
            self._decoder.start_options(connection.server_version),
            plugin=self.plugin,
        )
        self._stream = stream
        logger.info(
            "streaming slot %s from %s (plugin %s, server %s)",
            self.slot,
            start,
            self.plugin,
            connection.server_version,
        )
        reader = threading.Thread(
            target=self._guard,
            args=(self._read_loop, stream),
            name=f"replicant-reader[{self.slot}]",
            daemon=True,
        )
        keeper = threading.Thread(
            target=self._guard,
            args=(self._keepalive_loop, stream),
            name=f"replicant-keepalive[{self.slot}]",
            daemon=True,
        )
        reader.start()
        keeper.start()
        try:
            self._first_end.wait()
        finally:
            # Whoever ended first (or stop()), the other follows: the reader
            # finishes the callback in flight, the keepalive thread wakes up.
            self._stop_requested.set()
            self._queue.put(_STOP)
            keeper.join()
            reader.join()
        self._finish(stream)

    def _guard(self, body: Callable[[ReplicationStream], None], stream: ReplicationStream) -> None:
        try:
            body(stream)
        except BaseException as error:
            self._fail(error)
        finally:
            self._first_end.set()

    def _prepare_slot(self, connection: ReplicationConnection) -> LSN:
        """Check (or create) the slot; return the position it confirmed."""
        state = connection.read_slot(self.slot)
        if state is None:
            if not self._create_slot:
                raise SlotError(
                    f'replication slot "{self.slot}" does not exist '
                    "(pass create_slot=True to create it)",
                    sqlstate="42704",
                )
            created = connection.create_slot(
                self.slot,
                self.plugin,
                temporary=self._temporary,
                two_phase=_wants_two_phase(self._decoder, connection.server_version),
            )
            logger.info("created slot %s at %s", self.slot, created.consistent_point)
            return created.consistent_point
        if state.plugin != self.plugin:
            raise SlotError(
                f'replication slot "{self.slot}" uses plugin {state.plugin!r}, not '
                f"{self.plugin!r}; drop it or pick another slot name"
            )
        if state.wal_status == "lost":
            raise SlotError(
                f'replication slot "{self.slot}" was invalidated (wal_status lost): the '
                "WAL it needed is gone; drop and recreate it, then resynchronise"
            )
        return state.confirmed_flush_lsn or state.restart_lsn or LSN(0)

    def _finish(self, stream: ReplicationStream) -> None:
        """After both threads ended: final status update, CopyDone, close."""
        if stream.ended:
            return
        try:
            written, flushed, applied = self._progress.position()
            stream.send_status(written, flushed, applied, timeout=10.0)
            self._counters.status_updates += 1
            stream.stop(timeout=30.0)
            logger.info("stopped slot %s at %s", self.slot, flushed)
        except ReplicantError as error:
            if self._failure is None:
                self._fail(error)
            else:
                logger.debug("could not end the stream cleanly: %s", error)

    def _close_connection(self) -> None:
        connection, self._connection, self._stream = self._connection, None, None
        if connection is not None:
            connection.close()

    def _abort(self) -> None:
        """Give up waiting for a graceful end: close the connection now."""
        self._stop_requested.set()
        self._queue.put(_STOP)
        connection = self._connection
        if connection is not None:
            connection.close()
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.join(5.0)

    # -- the reader

    def _read_loop(self, stream: ReplicationStream) -> None:
        decode = self._decoder.decode
        decoder = self._decoder
        callback = self._callback
        progress = self._progress
        counters = self._counters
        stopping = self._stop_requested.is_set
        end_lsn = self._end_lsn
        transaction_ends = _TRANSACTION_ENDS
        put = self._queue.put
        last_delivered = 0
        while not stopping():
            for frame in stream.read(_POLL_INTERVAL):
                if type(frame) is XLogData:
                    if end_lsn is not None and frame.wal_start > end_lsn:
                        self._reached_end(end_lsn)
                        return
                    data = frame.data
                    counters.frames += 1
                    counters.bytes += len(data)
                    progress.receive(frame.wal_end)
                    for event in decode(data, frame.wal_start, frame.wal_end):
                        result = callback(event)
                        if result is not None:
                            progress.acknowledge(result)
                        last_delivered = event.lsn
                        counters.events += 1
                        if type(event) in transaction_ends:
                            counters.transactions += 1
                    if end_lsn is not None and frame.wal_start >= end_lsn:
                        self._reached_end(end_lsn)
                        return
                    if stopping():
                        return  # the rest was not delivered, so not acknowledged
                else:
                    assert type(frame) is PrimaryKeepalive
                    counters.keepalives += 1
                    progress.keepalive(
                        frame.wal_end,
                        in_transaction=decoder.in_transaction,
                        last_delivered=last_delivered,
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

    def _reached_end(self, end_lsn: LSN) -> None:
        logger.info("reached end position %s", end_lsn)
        self._stop_requested.set()

    # -- the keepalive thread

    def _keepalive_loop(self, stream: ReplicationStream) -> None:
        timer = StatusTimer(self.status_interval)
        get = self._queue.get
        stopping = self._stop_requested.is_set
        while not stopping():
            try:
                item = get(timeout=timer.time_left())
            except queue.Empty:
                item = None  # the timer ran out
            if item is _STOP or stopping():
                return
            if item is None and not timer.due():
                continue
            written, flushed, applied = self._progress.position()
            stream.send_status(written, flushed, applied)
            self._counters.status_updates += 1
            timer.sent()


def _wants_two_phase(decoder: Decoder, server_version: int) -> bool:
    options = decoder.start_options(server_version)
    return str(options.get("two_phase", "")).lower() in ("true", "on", "1")


def run(
    dsn: str | None = None,
    *,
    slot: str,
    callback: Callback,
    plugin: str = "pgoutput",
    publication: str | Sequence[str] | None = None,
    options: Mapping[str, str] | None = None,
    create_slot: bool = True,
    temporary: bool = False,
    start_lsn: LSN | int | str | None = None,
    status_interval: float = 10.0,
    idle_advance: bool = True,
    **connect_params: Any,
) -> None:
    """Stream every committed change of ``slot`` into ``callback`` until stopped.

    Blocks until the stream ends or fails; see :class:`Consumer` for the
    arguments. The callback returns the LSN it has finished with
    (``event.lsn``) or ``None``; a restart resumes right after the last
    acknowledged LSN. In the main thread Ctrl-C and SIGTERM stop gracefully.
    A failure (including the callback's own exception) is re-raised as it
    was raised, after the connection is closed.
    """
    Consumer(
        dsn,
        slot=slot,
        callback=callback,
        plugin=plugin,
        publication=publication,
        options=options,
        create_slot=create_slot,
        temporary=temporary,
        start_lsn=start_lsn,
        status_interval=status_interval,
        idle_advance=idle_advance,
        **connect_params,
    ).run()
