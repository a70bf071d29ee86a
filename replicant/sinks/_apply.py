"""What the database sinks share: whole source transactions applied in target transactions.

A :class:`TransactionalSink` applies each source transaction inside a
target transaction and stores the source position (the commit's end LSN)
in that same target transaction, so the target holds each transaction
exactly once, whatever crashes. Small transactions are batched: several
source transactions go into one target transaction, committed when the
writer flushes or the batch is full; its position is the last commit it
holds, so the guarantee stays (a batch is all there or not at all).

Subclasses implement the target side (``_open``, ``_apply_change``,
``_relation``, ``_commit``, ``_rollback``, savepoints); this class owns the
transaction framing, the skipping of what the target already holds, and
the watermark it returns from ``flush()``.
"""

from __future__ import annotations

import datetime as _dt
import logging

from replicant.changes import (
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Event,
    Insert,
    Message,
    Origin,
    Prepare,
    RawChange,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from replicant.lsn import LSN
from replicant.sinks.base import SinkError

__all__ = ["TransactionalSink", "same_shape"]

logger = logging.getLogger("replicant")

_CHANGES = (Insert, Update, Delete, Truncate)
_UNSUPPORTED = (
    StreamStart,
    StreamStop,
    StreamCommit,
    StreamAbort,
    StreamPrepare,
    BeginPrepare,
    Prepare,
    CommitPrepared,
    RollbackPrepared,
)


def same_shape(known: Relation, new: Relation) -> bool:
    """The same columns and identity (a Relation sent again after a reconnect, say)."""
    return known.columns == new.columns and known.replica_identity == new.replica_identity


class TransactionalSink:
    """Applies source transactions into target transactions, the position stored with them.

    ``max_batch`` bounds how many source transactions one target transaction
    holds (the writer's flushes end a batch sooner). Not public: the
    database sinks derive from it.
    """

    #: for messages: "the target", "SQLite", ...
    target_name = "the target"

    def __init__(self, *, max_batch: int) -> None:
        if max_batch < 1:
            raise SinkError(f"max_batch must be at least 1, not {max_batch!r}")
        self.max_batch = max_batch
        # What the target holds: the end LSN of the last source transaction
        # committed there (read at start, then moved by each batch commit).
        self._position = LSN(0)
        # What flush() vouches for: _position, or a later commit that needed
        # nothing written (an empty transaction, one the target already had).
        self._durable = LSN(0)
        self._open_target = False  # a target transaction is open
        self._in_source = False  # between a source Begin and its Commit
        self._skipping = False  # the current source transaction is on the target already
        self._savepoint = False  # the current one is applied under a savepoint (see _on_begin)
        self._applied_any = False  # a change of the current source transaction was applied
        self._batch = 0  # source transactions in the open target transaction
        self._batch_end: tuple[LSN, _dt.datetime | None] | None = None
        self._commit_due = False  # a flush asked for a commit in the middle of a transaction
        self._failed: BaseException | None = None
        self._fresh = True  # no source transaction applied since start (or recovery)
        self.transactions = 0  # source transactions applied since the sink was made

    # -- what subclasses provide

    def _open(self) -> None:
        raise NotImplementedError

    def _apply_change(self, event: Insert | Update | Delete | Truncate) -> None:
        raise NotImplementedError

    def _relation(self, event: Relation) -> None:
        raise NotImplementedError

    def _commit(self, lsn: LSN, commit_time: _dt.datetime | None) -> None:
        """Record ``lsn`` as the position and commit the open target transaction."""
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _set_savepoint(self) -> None:
        raise NotImplementedError

    def _release_savepoint(self, keep: bool) -> None:
        raise NotImplementedError

    # -- the Sink protocol

    def resume_lsn(self) -> LSN | None:
        """The end LSN of the last source transaction the target holds (None: nothing yet).

        :meth:`~replicant.sinks.SinkWriter.consumer` starts the stream
        there; a transaction at or before it that comes again is skipped.
        """
        return self._position or None

    def write(self, event: Event) -> None:
        """Apply ``event`` into the open target transaction (opened as needed).

        At a source Commit the target transaction is committed with the
        position when the batch is full or a flush asked for it.
        """
        if self._failed is not None:
            raise SinkError(f"the sink failed earlier: {self._failed}")
        kind = type(event)
        if kind in _CHANGES:
            if self._skipping:
                return
            if not self._in_source:
                raise SinkError(f"a change outside a transaction at {event.lsn}")
            if not self._open_target:
                self._guard(self._open)
                self._open_target = True
            self._guard(self._apply_change, event)
            self._applied_any = True
        elif kind is Begin:
            assert isinstance(event, Begin)
            self._on_begin(event)
        elif kind is Commit:
            assert isinstance(event, Commit)
            self._on_commit(event)
        elif kind is Relation:
            assert isinstance(event, Relation)
            self._guard(self._relation, event)
        elif kind in _UNSUPPORTED:
            raise SinkError(
                f"{type(self).__name__} applies whole transactions: "
                f"{kind.__name__} at {event.lsn} is not supported (do not turn on "
                "pgoutput's streaming or two_phase for this consumer)"
            )
        elif kind is RawChange:
            raise SinkError(
                f"{type(self).__name__} needs decoded changes (pgoutput or wal2json), "
                f"not raw payloads (at {event.lsn})"
            )
        elif kind is Message or kind is Origin:
            return  # nothing to apply

    def flush(self) -> LSN | None:
        """Commit the open batch (or, inside a source transaction, at its commit).

        Returns the end LSN of the last source transaction the target holds.
        """
        if self._failed is not None:
            raise SinkError(f"the sink failed earlier: {self._failed}")
        if self._batch:
            if self._in_source:
                self._commit_due = True  # at this transaction's commit
            else:
                self._commit_batch()
        return self._durable or None

    # -- transaction framing

    def _on_begin(self, event: Begin) -> None:
        if self._in_source:
            raise SinkError(f"a transaction began at {event.lsn} inside another")
        self._in_source = True
        self._applied_any = False
        self._savepoint = False
        position = self._position
        if event.final_lsn is not None:
            # The commit record starts before its end: a transaction the
            # target holds starts its commit before the stored position; a
            # new one at or after it.
            self._skipping = bool(position) and event.final_lsn < position
        elif position and self._fresh:
            # No commit position yet (wal2json format 1): decide at the
            # commit, and undo what was applied if the target had it.
            self._skipping = False
            if not self._open_target:
                self._guard(self._open)
                self._open_target = True
            self._guard(self._set_savepoint)
            self._savepoint = True
        else:
            self._skipping = False

    def _on_commit(self, event: Commit) -> None:
        if not self._in_source:
            raise SinkError(f"a commit at {event.lsn} without its transaction's begin")
        self._in_source = False
        lsn = event.lsn
        if self._savepoint:
            self._savepoint = False
            held = lsn <= self._position
            self._guard(self._release_savepoint, not held)
            self._skipping = held
        if self._skipping or lsn <= self._position:
            self._skipping = False
            logger.debug("%s holds the transaction ending at %s already", self.target_name, lsn)
            if lsn > self._durable and not self._batch:
                self._durable = lsn
            return
        self._fresh = False
        if not self._applied_any and not self._batch:
            # Nothing to apply and nothing pending: everything up to it is
            # on the target, so it may be acknowledged without a target write.
            if lsn > self._durable:
                self._durable = lsn
            return
        self._batch += 1
        self._batch_end = (lsn, event.commit_time)
        if self._commit_due or self._batch >= self.max_batch:
            self._commit_batch()

    def _commit_batch(self) -> None:
        end = self._batch_end
        assert end is not None
        if self._open_target:
            self._guard(self._commit, end[0], end[1])
            self._open_target = False
        self.transactions += self._batch
        self._batch = 0
        self._batch_end = None
        self._commit_due = False
        self._position = end[0]
        if end[0] > self._durable:
            self._durable = end[0]

    def _guard(self, step: object, *args: object) -> None:
        """Run a target step; on failure roll back, remember it, and raise a SinkError."""
        try:
            step(*args)  # type: ignore[operator]
        except BaseException as error:
            self._failed = error
            self._abandon()
            if isinstance(error, SinkError):
                raise
            raise self._wrap(error) from error

    def _wrap(self, error: BaseException) -> SinkError:
        return SinkError(f"{self.target_name}: {type(error).__name__}: {error}")

    def _abandon(self) -> None:
        """Roll back the open target transaction, if the target still answers."""
        if self._open_target:
            self._open_target = False
            try:
                self._rollback()
            except Exception as error:  # the target is gone: its transaction is gone too
                logger.debug("rolling back on %s failed: %s", self.target_name, error)
        self._batch = 0
        self._batch_end = None
