"""The incremental snapshot: re-read tables while the stream runs (the DBLog watermark method).

``consumer.snapshot(["public.t"])`` reads ``t`` again in primary-key chunks on
an ordinary connection, without locks and without stopping the stream. For
each chunk a thread of its own:

1. writes a **low watermark** into the WAL (``pg_logical_emit_message``, not
   transactional, so it is decoded where it is written);
2. reads the chunk (``COPY (SELECT ... WHERE key > last ORDER BY key LIMIT n)``)
   in a ``REPEATABLE READ`` transaction, noting the transactions its snapshot
   does not see (``pg_current_snapshot()``);
3. writes a **high watermark**.

The reader thread, where the callback runs, watches the stream: between the
low and the high watermark it notes the key of every change to the table;
at the high watermark it delivers the chunk's rows whose key no change in
that window touched, as :class:`~replicant.changes.Read` events (``lsn`` the
high watermark's), then lets the thread read the next chunk. A row changed in
the window is left to the stream, which carries its newer value, so a
``Read`` never brings back an older value than a change already delivered.

One more check closes a gap the method leaves on PostgreSQL: a transaction
whose commit record precedes the low watermark can still be invisible to the
chunk's snapshot (it is written to the WAL a moment before it becomes
visible). The reader remembers the ids of the transactions it delivered
recently; if one the chunk could not see was delivered before the low
watermark, the chunk is read again.

Watermark messages carry the prefix :data:`WATERMARK_PREFIX`; the consumer
never passes them to the callback. Needs pgoutput's ``messages`` (PostgreSQL
14+). Progress lives in the consumer's memory: a reconnect continues, a
chunk in flight is read again; after the process ends, an unfinished
incremental snapshot is not resumed (its table's :class:`SnapshotEnd` never
came): ask again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg2
import psycopg2.extensions

from replicant.changes import (
    Begin,
    Delete,
    Event,
    Insert,
    Message,
    Row,
    SnapshotBegin,
    SnapshotEnd,
    Truncate,
    Update,
    new_read,
)
from replicant.errors import ConfigurationError, ReplicantError
from replicant.lsn import LSN
from replicant.protocol import quote_identifier
from replicant.snapshot import (
    SnapshotTable,
    _CopyReader,
    _layout_for,
    _translate,
    connect_sql,
    describe_tables,
)

__all__ = ["WATERMARK_PREFIX", "IncrementalSnapshot", "IncrementalSnapshots", "streams_messages"]

logger = logging.getLogger("replicant")

WATERMARK_PREFIX: Final = "replicant.watermark"
"""The prefix of the logical messages that delimit an incremental snapshot's chunks."""

# Transactions remembered for the visibility check (see the module doc).
_RECENT = 8192
_POLL = 0.1


@dataclass
class _Window:
    """One chunk between its watermarks."""

    ident: str
    table: SnapshotTable
    first: bool
    rows: list[Row] = field(default_factory=list)
    final: bool = False
    invisible: frozenset[int] = frozenset()
    opened: bool = False
    seen_before: frozenset[int] = frozenset()
    changed: set[tuple[Any, ...]] = field(default_factory=set)
    truncated: bool = False
    redo: bool = False
    delivered: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class IncrementalSnapshot:
    """The handle ``consumer.snapshot()`` returns: wait for it, see how it went."""

    def __init__(self, tables: tuple[str, ...]) -> None:
        self.tables = tables
        self.rows = 0
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        """True once every table was read (and delivered), or the snapshot failed."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until done; re-raise its failure. Returns False if ``timeout`` passed first."""
        if not self._done.wait(timeout):
            return False
        if self.error is not None:
            raise self.error
        return True


class IncrementalSnapshots:
    """The consumer's incremental snapshots: the chunk thread and the stream-side filter.

    :meth:`wrap` gives the callback the reader calls: it swallows this
    consumer's watermarks, notes the keys changed inside a window and
    delivers the chunk rows at the high watermark.
    """

    def __init__(
        self,
        dsn: str | None,
        connect_params: dict[str, Any],
        *,
        name: str,
        publications: Sequence[str],
        binary: bool,
        decode_values: bool,
        strict_values: bool,
    ) -> None:
        self._dsn = dsn
        self._params = connect_params
        self._name = name
        self._publications = tuple(publications)
        self._binary = binary
        self._decode_values = decode_values
        self._strict = strict_values
        self._token = secrets.token_hex(6)
        self._sequence = 0
        self._windows: dict[str, _Window] = {}
        self._open: _Window | None = None
        self._recent: collections.deque[int] = collections.deque(maxlen=_RECENT)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._callback: Callable[[Event], Any] | None = None
        self._rows_of: dict[int, int] = {}  # rows delivered so far per table (reader thread)

    # -- the stream side (the reader thread)

    def wrap(self, callback: Callable[[Event], Any]) -> Callable[[Event], Any]:
        """The callback the reader is to call instead of ``callback``."""
        self._callback = callback

        def filtered(event: Event) -> Any:
            kind = type(event)
            if kind is Message and event.prefix == WATERMARK_PREFIX:  # type: ignore[attr-defined]
                return self._watermark(event)  # type: ignore[arg-type]
            window = self._open
            if window is not None:
                self._note(window, event)
            if kind is Begin and event.xid is not None:
                self._recent.append(event.xid)
            return callback(event)

        return filtered

    def _note(self, window: _Window, event: Event) -> None:
        if isinstance(event, (Insert, Update, Delete)):
            if event.relation.relid != window.table.oid:
                return
            key = window.table.primary_key
            for row in (event.new, event.old):
                if row is not None and all(k in row for k in key):
                    window.changed.add(tuple(row[k] for k in key))
        elif isinstance(event, Truncate) and any(
            r.relid == window.table.oid for r in event.relations
        ):
            window.truncated = True

    def _watermark(self, message: Message) -> Any:
        text = message.content.decode("utf-8", "replace")
        side, _, ident = text.partition(":")
        window = self._windows.get(ident)
        if window is None or window.done.is_set():
            return None  # another consumer's, or one already handled (a resent one)
        if side == "low":
            if not window.opened:
                window.opened = True
                window.seen_before = frozenset(self._recent)
            self._open = window
            return None
        if side != "high":
            return None
        if not window.opened:
            # Its low watermark was never seen on this stream: the window is
            # unknown, so the chunk is read again.
            window.redo = True
            window.done.set()
            return None
        self._open = None
        if window.invisible & window.seen_before:
            # Committed before the low watermark yet unseen by the chunk.
            window.redo = True
            window.done.set()
            return None
        assert self._callback is not None
        table = window.table
        result = None
        if window.first:
            self._rows_of[table.oid] = 0
            self._callback(
                SnapshotBegin(
                    lsn=message.lsn,
                    xid=None,
                    schema=table.schema,
                    table=table.name,
                    tables=(),
                    incremental=True,
                )
            )
        key = table.primary_key
        if not window.truncated:
            for row in window.rows:
                if tuple(row[k] for k in key) in window.changed:
                    continue
                result = self._callback(new_read(message.lsn, None, table.relation, row))
                window.delivered += 1
        self._rows_of[table.oid] = self._rows_of.get(table.oid, 0) + window.delivered
        if window.final:
            self._callback(
                SnapshotEnd(
                    lsn=message.lsn,
                    xid=None,
                    schema=table.schema,
                    table=table.name,
                    rows=self._rows_of.pop(table.oid, 0),
                    incremental=True,
                )
            )
        window.rows = []
        window.done.set()
        return result

    # -- the chunk side (a thread of its own)

    def request(
        self, tables: Sequence[str], *, chunk_rows: int, stream_running: Callable[[], bool]
    ) -> IncrementalSnapshot:
        """Check ``tables`` and start reading them; return the handle.

        Raises :class:`ConfigurationError` at once for a server before 14,
        an unknown or unpublished table, or one without a primary key (or
        whose replica identity does not carry it).
        """
        if isinstance(tables, str):
            raise ConfigurationError("snapshot() takes a list of table names, not one string")
        if chunk_rows < 1:
            raise ConfigurationError(f"chunk_rows must be at least 1, not {chunk_rows!r}")
        conn = connect_sql(self._dsn, **self._params)
        try:
            version = int(conn.server_version)
            if version < 140000:
                raise ConfigurationError(
                    "incremental snapshots need PostgreSQL 14 or later: their watermarks are "
                    "logical messages, which pgoutput delivers from 14 on; this server is "
                    f"{version // 10000}"
                )
            try:
                with conn.cursor() as cur:
                    cur.execute("BEGIN READ ONLY")
                    described = describe_tables(
                        cur, tables=list(tables), publications=self._publications, lsn=LSN(0)
                    )
                    cur.execute("COMMIT")
            except psycopg2.Error as error:
                raise _translate(error, "snapshot") from None
            for table in described:
                _check_keyed(table)
        except BaseException:
            conn.close()
            raise
        handle = IncrementalSnapshot(tuple(t.display for t in described))
        thread = threading.Thread(
            target=self._run,
            args=(conn, described, handle, chunk_rows, stream_running),
            name=f"replicant-incremental[{self._name}]",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()
        return handle

    def _run(
        self,
        conn: psycopg2.extensions.connection,
        tables: list[SnapshotTable],
        handle: IncrementalSnapshot,
        chunk_rows: int,
        stream_running: Callable[[], bool],
    ) -> None:
        try:
            for table in tables:
                self._table(conn, table, handle, chunk_rows, stream_running)
        except _Stopped:
            handle.error = ReplicantError("the consumer stopped before the snapshot finished")
        except psycopg2.Error as error:
            handle.error = _translate(error, "incremental snapshot")
        except BaseException as error:
            handle.error = error
        finally:
            if handle.error is not None:
                logger.error("%s: incremental snapshot failed: %s", self._name, handle.error)
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            handle._done.set()

    def _table(
        self,
        conn: psycopg2.extensions.connection,
        table: SnapshotTable,
        handle: IncrementalSnapshot,
        chunk_rows: int,
        stream_running: Callable[[], bool],
    ) -> None:
        last: tuple[str, ...] | None = None
        first = True
        while True:
            with self._lock:
                self._sequence += 1
                ident = f"{self._token}-{self._sequence}"
            window = _Window(ident, table, first)
            self._windows[ident] = window
            try:
                self._emit(conn, f"low:{ident}")
                rows, upper = self._read_chunk(conn, table, last, chunk_rows, window)
                window.rows = rows
                window.final = len(rows) < chunk_rows
                self._emit(conn, f"high:{ident}")
                while not window.done.wait(_POLL):
                    if self._stop.is_set() or not stream_running():
                        raise _Stopped
            finally:
                self._windows.pop(ident, None)
                if self._open is window:
                    self._open = None  # abandoned (a failure, a stop): stop noting keys
            if window.redo:
                logger.info("%s: chunk of %s read again (visibility)", self._name, table.display)
                continue
            handle.rows += window.delivered
            first = False
            if window.final or upper is None:
                return
            last = upper

    def _emit(self, conn: psycopg2.extensions.connection, content: str) -> None:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_catalog.pg_logical_emit_message(false, %s, %s)",
                (WATERMARK_PREFIX, content),
            )

    def _read_chunk(
        self,
        conn: psycopg2.extensions.connection,
        table: SnapshotTable,
        last: tuple[str, ...] | None,
        limit: int,
        window: _Window,
    ) -> tuple[list[Row], tuple[str, ...] | None]:
        keys = ", ".join(quote_identifier(k) for k in table.primary_key)
        row = f"({keys})" if len(table.primary_key) > 1 else keys
        casts = ", ".join(f"%s::{t}" for t in table.key_types)
        bound = f"({casts})" if len(table.primary_key) > 1 else casts
        columns = ", ".join(quote_identifier(c.name) for c in table.relation.columns)
        source = f"{'ONLY ' if table.relkind == 'r' else ''}{table.qualified}"
        conditions = [c for c in (f"{row} > {bound}" if last else "", table.row_filter) if c]
        where = f" WHERE {' AND '.join(f'({c})' for c in conditions)}" if conditions else ""
        select = f"SELECT {columns} FROM {source}{where} ORDER BY {keys} LIMIT {int(limit)}"
        binary = self._binary and table.binary_ok
        rows: list[Row] = []
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # The first statement takes the snapshot; note whom it cannot see.
                cur.execute(
                    "SELECT coalesce(array_agg(x::text::bigint % 4294967296), '{}')"
                    " FROM pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) x"
                )
                fetched = cur.fetchone()
                xip = fetched[0] if fetched else []
                params = tuple(last) if last else ()
                command = f"COPY ({cur.mogrify(select, params).decode()}) TO STDOUT"
                if binary:
                    command += " (FORMAT binary)"
                reader = _CopyReader(
                    _layout_for(table, binary, self._decode_values, self._strict),
                    table.relation,
                    LSN(0),
                    binary,
                    lambda batch: rows.extend(e.new for e in batch),
                )
                cur.copy_expert(command, reader)
                reader.close()
                texts = ", ".join(
                    f"{quote_identifier(k)}::text AS _key{i}"
                    for i, k in enumerate(table.primary_key)
                )
                cur.execute(
                    f"SELECT {texts} FROM ({select}) s ORDER BY "
                    + ", ".join(f"s.{quote_identifier(k)} DESC" for k in table.primary_key)
                    + " LIMIT 1",
                    params,
                )
                top = cur.fetchone()
                cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            raise
        # Unseen: those running when the snapshot was taken (an id assigned
        # later belongs to a transaction that commits after the low watermark).
        window.invisible = frozenset(int(x) for x in xip)
        return rows, None if top is None else tuple(top)

    def close(self) -> None:
        """Stop the chunk threads (the consumer ended); idempotent."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(10)
        self._threads.clear()


class _Stopped(Exception):
    pass


def _check_keyed(table: SnapshotTable) -> None:
    if not table.primary_key:
        raise ConfigurationError(
            f"table {table.display} has no primary key: an incremental snapshot reads in key "
            "order and matches the stream's changes by key (the initial snapshot can read it)"
        )
    carried = {c.name for c in table.relation.columns if c.key}
    if not set(table.primary_key) <= carried:
        raise ConfigurationError(
            f"table {table.display}: its replica identity ({table.relation.replica_identity}) "
            "does not carry the primary key, so deletes could not be matched to chunk rows; "
            "use REPLICA IDENTITY DEFAULT or FULL"
        )


def streams_messages(decoder: Any) -> bool:
    """Whether the decoder asks pgoutput for logical messages (the watermarks need them)."""
    extra = getattr(decoder, "extra_options", None) or {}
    asked = str(extra.get("messages", "")).lower() in ("true", "on", "1")
    return getattr(decoder, "plugin", None) == "pgoutput" and (
        asked or bool(getattr(decoder, "messages", False))
    )
