"""The sink seam: the :class:`Sink` protocol and the :class:`SinkWriter` that drives one.

A sink is a destination for events (a file, a database, a message broker).
It writes events, and on ``flush()`` says up to which LSN everything it was
given is durable; it knows nothing about slots, threads or acknowledgements.
The :class:`SinkWriter` does the rest, once for every sink: it is the
consumer's callback, it calls ``flush()`` on a timer (or after every
transaction), and it acknowledges to the server only what a flush vouched
for, so a restart resumes right after the last durable change.

The watermark rules, in one place:

- ``delivered``: the highest LSN handed to ``sink.write()``;
- ``written``: the highest LSN whose ``write()`` returned;
- ``durable``: the highest LSN a ``flush()`` returned, held at ``written``
  (a sink cannot vouch for what it was not given) and never going backward;
- only ``durable`` is acknowledged: through the callback's return value,
  through the consumer's ``acknowledge()`` after a timed flush, and through
  ``on_stop``'s return value before the final status update;
- after a ``write()`` or ``flush()`` raised, the sink is not called again
  (except ``close()``), nothing more is acknowledged, and the exception ends
  the consumer: ``join()``/``run()`` raise it as it was raised.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from replicant.changes import (
    Begin,
    Commit,
    CommitPrepared,
    Delete,
    Event,
    Insert,
    Message,
    Prepare,
    RawChange,
    Read,
    RollbackPrepared,
    SnapshotEnd,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStop,
    Update,
)
from replicant.errors import ConfigurationError, ReplicantError
from replicant.lsn import LSN
from replicant.runtime import Consumer

__all__ = ["Sink", "SinkError", "SinkWriter", "is_boundary"]

logger = logging.getLogger("replicant")


class SinkError(ReplicantError):
    """A sink could not take or keep what it was given: the stream ends there.

    Nothing after what the sink last made durable is acknowledged.

    ``lsn`` is the source position of the change that failed (None when no
    one change is to blame), ``statement`` what was sent to the target for
    it, ``sqlstate`` the target's error code when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        lsn: LSN | None = None,
        statement: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.lsn = lsn
        self.statement = statement
        self.sqlstate = sqlstate


@runtime_checkable
class Sink(Protocol):
    """A destination for events: the one class a new destination implements.

    ``write(event)`` takes every event, in stream order (transaction framing,
    relations and messages included: skip what the destination does not
    want). It may buffer: in memory, in an OS buffer, in an open transaction
    of the target. Nothing written counts as done until a flush says so;
    after a crash, everything after the last durable LSN comes again, so a
    sink sees some events twice (at least once), unless it stores the LSN
    with the data and skips what it already has (exactly once).

    ``flush()`` makes what was written durable, blocking until it is, and
    returns an LSN ``L`` that promises: every event written whose ``lsn`` is
    at most ``L``, and every event written before it, survives a crash.
    Usually that is the ``lsn`` of the last event written; a sink that
    commits only whole transactions returns the last commit it committed.
    ``None`` means nothing (more) is durable. Returning less than everything
    written is allowed (what is left is vouched for by a later flush); the
    writer never acknowledges beyond the highest LSN written.

    A sink that stores the position with the data may also have
    ``resume_lsn() -> LSN | None``: where the destination's own record says
    it is. :meth:`SinkWriter.consumer` then starts the stream there (see
    :func:`resume_lsn`).

    A sink that buffers may also have ``batch_end()``: the consumer has
    delivered everything it had read and waits for more, so move what is
    buffered on (to the operating system, a client library's queue)
    without making it durable. The writer calls it once per batch (or at
    every transaction end and snapshot table end, for a consumer made
    without its ``batch_end``); with ``flush_interval=0`` the writer also
    flushes at every transaction end.

    ``close()`` releases the destination. It comes last: after the final
    ``flush()``, or without one after a failure; a sink is not used after it.

    An exception from ``write()`` or ``flush()`` ends the stream and comes
    out of ``Consumer.join()``/``run()`` as it was raised; the sink then gets
    no further call but ``close()``.

    Threads: the :class:`SinkWriter` calls these methods one at a time, never
    two at once, so a sink needs no lock of its own for them. They may come
    from different threads (``write`` from the consumer's reader thread,
    ``flush`` from the writer's timer thread, the reader, or the thread
    that stops the consumer; ``close`` from the thread that closes the
    writer): an object bound to one thread (a ``sqlite3`` connection) must
    allow that (``check_same_thread=False``).
    """

    def write(self, event: Event) -> None:
        """Take ``event`` (it may stay buffered until :meth:`flush`)."""

    def flush(self) -> LSN | None:
        """Make everything written durable; return the LSN up to which it is (or None)."""

    def close(self) -> None:
        """Release the destination; the sink is not used after it."""


# After these events no transaction is being sent (or the event stands
# alone): where a sink pushes its buffer out and a write-through writer
# flushes.
_BOUNDARIES = (
    Commit,
    StreamCommit,
    StreamStop,
    StreamAbort,
    Prepare,
    StreamPrepare,
    CommitPrepared,
    RollbackPrepared,
    RawChange,
)


# Never a boundary: the events most of a stream is made of skip the general test.
_ROWS = frozenset((Begin, Insert, Update, Delete, Read))


def resume_lsn(sink: object) -> LSN | None:
    """The position ``sink`` says it holds everything up to (its ``resume_lsn()``), or None.

    None for a sink without the method (it keeps no position of its own).
    """
    method = getattr(sink, "resume_lsn", None)
    if not callable(method):
        return None
    found: object = method()
    if found is None:
        return None
    if not isinstance(found, int) or isinstance(found, bool):
        raise ConfigurationError(
            f"{type(sink).__name__}.resume_lsn() returned {found!r}: return an LSN or None"
        )
    return LSN(found) or None


def is_boundary(event: Event) -> bool:
    """True when ``event`` ends what the server is sending for now.

    A commit, a prepare, a commit or rollback of a prepared transaction, the
    end or abort of a streamed chunk, a raw payload (plugins without a
    decoder frame nothing), or a message outside any transaction: a good
    moment for a sink to push its buffer out, and where
    ``SinkWriter(flush_interval=0)`` flushes.
    """
    return isinstance(event, _BOUNDARIES) or (type(event) is Message and not event.transactional)


# How often the timer thread looks up to notice that its consumer ended
# (it may end without calling on_stop, after a lost connection).
_TIMER_POLL = 0.25


class SinkWriter:
    """Feeds a consumer's events into a :class:`Sink`; acknowledges only what is durable.

    It owns the acknowledgement watermarks (``delivered``, ``written``,
    ``durable``; their rules head ``replicant/sinks/base.py``) and the flush
    timer.
    With ``flush_interval`` seconds (default 1), a timer thread flushes the
    sink that often when something was written since the last flush, and
    acknowledges what the flush made durable, and between flushes lets the
    sink push its buffer out after each batch the consumer delivered (see
    :meth:`batch_end`); with 0, the sink is flushed after every
    transaction (see :func:`is_boundary`) in the reader thread, before the
    callback returns. Either way the sink is flushed once more
    before the consumer's final status update (``on_stop``), so a graceful
    stop acknowledges everything written.

    The simplest use makes the consumer with :meth:`consumer`::

        with SinkWriter(MySink(), flush_interval=1.0) as writer:
            writer.consumer("dbname=app", slot="app", publication="app_pub").run()

    For a :class:`~replicant.runtime.Consumer` made by hand, pass
    ``callback=writer, on_stop=writer.on_stop, on_batch_end=writer.batch_end``
    and call
    :meth:`attach` before starting it. Closing the writer (or leaving the
    ``with`` block) flushes what is left, unless the sink failed, and closes
    the sink. A writer serves one consumer.
    """

    def __init__(self, sink: Sink, *, flush_interval: float = 1.0) -> None:
        if not isinstance(sink, Sink):
            raise ConfigurationError(
                f"{sink!r} is not a sink: it needs write(event), flush() and close()"
            )
        if not flush_interval >= 0:  # also refuses NaN
            raise ConfigurationError(f"flush_interval must be 0 or more, not {flush_interval!r}")
        self.sink = sink
        self.flush_interval = float(flush_interval)
        self._lock = threading.Lock()  # around every sink call and the watermarks
        self._delivered = self._written = self._durable = LSN(0)
        self._returned = LSN(0)  # the highest LSN the callback returned
        self._dirty = False  # written since the last flush
        self._batched = False  # the attached consumer calls batch_end()
        self._holding = False  # the reader holds the lock until the batch ends
        method = getattr(sink, "batch_end", None)
        self._sink_batch_end = method if callable(method) else None
        self._failure: BaseException | None = None
        self._failure_raised = False  # the consumer has it already
        self._closed = False
        self._consumer: Consumer | None = None
        self._timer: threading.Thread | None = None
        self._timer_stop = threading.Event()  # the current timer's; each has its own

    def __repr__(self) -> str:
        return (
            f"<SinkWriter {self.sink!r} delivered={self._delivered} written={self._written} "
            f"durable={self._durable}>"
        )

    # -- the watermarks

    @property
    def delivered(self) -> LSN:
        """The highest LSN handed to the sink's ``write()``."""
        return self._delivered

    @property
    def written(self) -> LSN:
        """The highest LSN whose ``write()`` returned."""
        return self._written

    @property
    def durable(self) -> LSN:
        """The highest LSN a ``flush()`` made durable: what may be acknowledged."""
        return self._durable

    @property
    def failure(self) -> BaseException | None:
        """The exception a ``write()`` or ``flush()`` raised, if one did."""
        return self._failure

    # -- wiring it to a consumer

    def consumer(self, dsn: str | None = None, **consumer_args: Any) -> Consumer:
        """A :class:`~replicant.runtime.Consumer` that streams into this writer's sink.

        Takes the consumer's arguments but ``callback``, ``on_stop`` and
        ``on_batch_end``, which are the writer's own; the consumer is attached (see
        :meth:`attach`) and not started. When the sink keeps its own
        position (``resume_lsn()``), the stream starts there, or at
        ``start_lsn`` if that is later.
        """
        for taken in ("callback", "on_stop", "on_batch_end"):
            if taken in consumer_args:
                raise ConfigurationError(f"{taken} is the sink writer's own; do not pass it")
        held = resume_lsn(self.sink)
        if held is not None:
            given = consumer_args.get("start_lsn")
            consumer_args["start_lsn"] = held if given is None else max(LSN(given), held)
        made = Consumer(
            dsn,
            callback=self,
            on_stop=self.on_stop,
            on_batch_end=self.batch_end,
            **consumer_args,
        )
        self.attach(made)
        return made

    def attach(self, consumer: Consumer) -> None:
        """Acknowledge timed flushes to ``consumer``, and stop it when a timed flush fails.

        For a consumer made with ``callback=writer, on_stop=writer.on_stop``
        (and ``on_batch_end=writer.batch_end``); call it before the consumer
        starts.
        """
        if self._consumer is not None and self._consumer is not consumer:
            raise ConfigurationError("this sink writer is attached to another consumer already")
        self._consumer = consumer
        # Without on_batch_end=writer.batch_end, the writer pushes at every
        # transaction end instead.
        self._batched = getattr(consumer, "_on_batch_end", None) == self.batch_end

    # -- the callback (the consumer's reader thread)

    def __call__(self, event: Event) -> LSN | None:
        """Write ``event`` to the sink; return the durable LSN when it moved, else None."""
        if not self._holding:
            self._lock.acquire()
            # With a consumer that calls batch_end(), the lock is held from a
            # batch's first event to its end: one acquisition per batch, not
            # per event (a timed flush waits for the batch, a few ms at most).
            self._holding = self._batched
            if (
                self._batched
                and self.flush_interval
                and (self._timer is None or self._timer_stop.is_set())
            ):
                self._start_timer()
        # The work under the lock, written here rather than in a method of its
        # own: a call per event is a tenth of what a row costs the command.
        try:
            if self._failure is not None or self._closed:
                self._raise_failure()
            lsn = event.lsn
            if lsn > self._delivered:
                self._delivered = lsn
            try:
                self.sink.write(event)
            except BaseException as error:
                self._failure = error
                self._failure_raised = True  # it goes to the consumer right now
                raise
            if lsn > self._written:
                self._written = lsn
            self._dirty = True
            kind = type(event)
            if kind not in _ROWS:
                if self.flush_interval == 0 and is_boundary(event):
                    self._push_locked(flush=True)  # at every transaction end
                elif not self._batched and (kind is SnapshotEnd or is_boundary(event)):
                    # No batch ends come from the consumer: push at each transaction
                    # end, and at a snapshot table's end (its rows come outside any).
                    self._push_locked(flush=False)
            # See to the timer at each event (a batch's start does, otherwise).
            if (
                not self._batched
                and self.flush_interval
                and (self._timer is None or self._timer_stop.is_set())
            ):
                self._start_timer()
            durable = self._durable
            result = None
            if durable > self._returned:
                self._returned = durable
                result = durable
        except BaseException:
            self._holding = False
            self._lock.release()
            raise
        if not self._holding:
            self._lock.release()
        return result

    def batch_end(self) -> LSN | None:
        """The consumer's ``on_batch_end``: let the sink push out what it buffers.

        Calls the sink's ``batch_end()``, if it has one and something was
        written since the last flush (the JSON Lines sink hands its lines to
        the operating system there, so a reader of the file sees them at
        once); with ``flush_interval=0`` that is what a batch left after its
        last transaction end (a snapshot's rows). Returns the durable LSN when it moved since
        the callback last said (or None); raises what the sink raised,
        which ends the stream. A consumer made with
        ``on_batch_end=writer.batch_end`` must call it after every batch in
        which it called the writer (the :class:`~replicant.runtime.Consumer`
        does, also for a batch cut short): it ends the batch's hold on the
        writer.
        """
        if not self._holding:
            self._lock.acquire()
        self._holding = False
        try:
            if self._failure is not None:
                if self._failure_raised:
                    return None  # the consumer has it already
                self._raise_failure()
            if self._closed:
                self._raise_failure()
            self._push_locked(flush=False)
            durable = self._durable
            if durable > self._returned:
                self._returned = durable
                return durable
            return None
        finally:
            self._lock.release()

    def _push_locked(self, *, flush: bool) -> None:
        # Under the lock: a flush (flush_interval 0, at a transaction end), or
        # the sink's own batch_end() (at a batch end, or, for a consumer
        # without batch ends, a transaction or snapshot table end). A failure
        # is recorded and raised to the reader.
        if not self._dirty:
            return
        try:
            if flush:
                self._flush_locked()
            elif self._sink_batch_end is not None:
                self._sink_batch_end()
        except BaseException as error:
            self._failure = error
            self._failure_raised = True  # raised from the callback
            raise

    # -- flushing

    def flush(self) -> LSN:
        """Flush the sink now (from any thread); return the durable LSN.

        What the flush made durable is acknowledged to the attached consumer.
        Raises what the sink's ``flush()`` raised (or an earlier failure).
        """
        with self._lock:
            if self._failure is not None or self._closed:
                self._raise_failure()
            durable = self._flush_locked()
        self._acknowledge(durable)
        return durable

    def on_stop(self) -> LSN | None:
        """The consumer's ``on_stop``: flush what is left; return the LSN to acknowledge.

        Called before the final status update. Raises a flush failure the
        consumer has not had yet (so that ``join()`` raises it); after a
        failure it already had, returns what was durable before it.
        """
        self._timer_stop.set()
        with self._lock:
            if self._failure is not None:
                if not self._failure_raised:
                    self._failure_raised = True
                    raise self._failure
                return self._durable or None
            if self._dirty and not self._closed:
                try:
                    self._flush_locked()
                finally:
                    self._failure_raised = self._failure is not None
            return self._durable or None

    def _flush_locked(self) -> LSN:
        # Under the lock. A failure is recorded and raised; nothing past the
        # durable LSN before it is acknowledged from then on.
        written = self._written
        self._dirty = False
        try:
            result: object = self.sink.flush()  # a sink's own code: checked, not trusted
            if result is not None:
                if not isinstance(result, int) or isinstance(result, bool):
                    raise ConfigurationError(
                        f"{type(self.sink).__name__}.flush() returned {result!r}: "
                        "return an LSN or None"
                    )
                vouched = min(LSN(result), written)
                if vouched > self._durable:
                    self._durable = vouched
        except BaseException as error:
            self._failure = error
            raise
        return self._durable

    def _acknowledge(self, lsn: LSN) -> None:
        consumer = self._consumer
        if consumer is not None and lsn:
            consumer.acknowledge(lsn)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            self._failure_raised = True
            raise self._failure
        raise ReplicantError("this sink writer is closed")

    # -- the timer thread

    def _start_timer(self) -> None:
        # Under the lock, from the reader: the first write of a stream (or of
        # a stream that went on after on_stop).
        self._timer_stop = stop = threading.Event()
        consumer = self._consumer
        name = "replicant-flush" + (f"[{consumer.slot}]" if consumer is not None else "")
        self._timer = threading.Thread(
            target=self._timer_loop, args=(stop,), name=name, daemon=True
        )
        self._timer.start()

    def _timer_loop(self, stop: threading.Event) -> None:
        clock = time.monotonic
        due = clock() + self.flush_interval
        try:
            while not stop.wait(min(_TIMER_POLL, max(0.0, due - clock()))):
                consumer = self._consumer
                if consumer is not None and not consumer.running:
                    return  # it ended without on_stop (a lost connection): close() flushes
                if clock() < due:
                    continue
                due = clock() + self.flush_interval
                with self._lock:
                    if self._failure is not None or self._closed or stop.is_set():
                        return
                    if not self._dirty:
                        continue
                    try:
                        durable = self._flush_locked()
                    except BaseException as error:
                        failed: BaseException | None = error
                    else:
                        failed = None
                if failed is not None:
                    logger.debug("flushing the sink failed: %s; stopping", failed)
                    if consumer is not None:
                        # Without waiting (the stop calls on_stop, which takes the
                        # lock): on_stop raises the failure, so join() raises it.
                        consumer.stop(timeout=0)
                    return
                self._acknowledge(durable)
        finally:
            with self._lock:
                if self._timer is threading.current_thread():
                    self._timer = None

    # -- the end

    def close(self) -> None:
        """Stop the timer, flush what is left (unless the sink failed), close the sink.

        Raises what the final flush or the sink's ``close()`` raised; the sink
        is closed either way. Closing twice does nothing.
        """
        self._timer_stop.set()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failure is None and self._dirty:
                    self._flush_locked()
            finally:
                self.sink.close()

    def __enter__(self) -> SinkWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
