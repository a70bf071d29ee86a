"""The initial snapshot: every existing row of the published tables, then the stream.

How it is taken (the guide's "Snapshot" chapter says it for users):

* The slot is created with ``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')``
  as a **temporary** slot under a name of its own. The exported snapshot
  stays importable only while that replication connection runs no other
  command, so the connection is left idle until the copy is done.
* ``workers`` ordinary connections open a ``REPEATABLE READ, READ ONLY``
  transaction each and import the snapshot (``SET TRANSACTION SNAPSHOT``);
  the first locks every table ``ACCESS SHARE`` (as pg_dump does, so a table
  cannot be dropped half-read) and splits large tables into chunks: primary
  key ranges, or ``ctid`` page ranges for a table without a key.
* Each chunk is read with ``COPY (SELECT ...) TO STDOUT`` (text, or binary
  when the consumer streams binary) and its rows go through the very value
  readers pgoutput's rows use, so a :class:`~replicant.changes.Read` holds
  the same values an :class:`~replicant.changes.Insert` of the row would.
* The rows reach the callback in the calling thread, one chunk at a time
  (every row of a chunk together, chunks in the order they started), through
  one bounded queue per worker: memory is bounded by
  ``workers * _QUEUE_BATCHES * _BATCH_ROWS`` rows whatever the table size.
* Only once every row was delivered (and the callback returned) does the
  slot get its real name: ``pg_copy_logical_replication_slot`` makes a
  permanent copy at the same consistent point, and the temporary one is
  dropped. So a slot under the consumer's name exists only for a finished
  snapshot: a crash, ``stop()`` or failure before that leaves no slot (the
  server drops a temporary slot with its connection), and the next start
  takes the snapshot again from the beginning.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import secrets
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from replicant.changes import (
    Column,
    Event,
    Read,
    Relation,
    Row,
    RowLayout,
    SnapshotBegin,
    SnapshotEnd,
    new_read,
)
from replicant.connection import (
    PINNED_SETTINGS,
    CreatedSlot,
    ReplicationConnection,
    _connect_error,
    _from_psycopg2,
    _pin_session_settings,
)
from replicant.decoders.pgoutput import _Table
from replicant.errors import (
    ConfigurationError,
    ConnectionLost,
    DecodeError,
    ReplicantError,
    ServerError,
    SlotError,
)
from replicant.lsn import LSN
from replicant.protocol import quote_identifier, validate_slot_name

__all__ = [
    "SNAPSHOT_MODES",
    "SnapshotMode",
    "SnapshotTable",
    "check_snapshot_options",
    "connect_sql",
    "create_slot_with_snapshot",
    "describe_tables",
    "reading_options",
    "take_snapshot",
]

logger = logging.getLogger("replicant")

SnapshotMode = Literal["never", "initial", "initial_only"]
SNAPSHOT_MODES: Final = ("never", "initial", "initial_only")

# Rows per batch handed from a worker to the callback's thread, and batches
# a worker may have waiting: the bound on memory (per worker).
_BATCH_ROWS = 500
_QUEUE_BATCHES = 8
# How often a waiting thread looks up to notice a stop or a failure.
_POLL = 0.1
# Sampled keys per chunk when a table's primary key ranges are chosen.
_SAMPLES_PER_CHUNK = 20


class _Stopped(Exception):
    """The snapshot was stopped (stop() or a failure elsewhere): unwind quietly."""


# --- connections ------------------------------------------------------------------------


def connect_sql(dsn: str | None = None, **params: Any) -> psycopg2.extensions.connection:
    """An ordinary (not replication) connection with the settings replicant parses pinned.

    The same DSN and keyword parameters as a replication connection, so the
    same server, database, role and client encoding; ``datestyle``,
    ``intervalstyle`` and ``extra_float_digits`` are pinned as on the
    replication connection, so COPY's text is the text pgoutput sends.
    """
    params = {key: value for key, value in params.items() if value is not None}
    params.pop("replication", None)
    by_set = _pin_session_settings(dsn, params)
    try:
        raw = psycopg2.connect(dsn or "", **params)
        raw.autocommit = True
        with raw.cursor() as cur:
            if by_set:
                for name, value in PINNED_SETTINGS:
                    cur.execute(f"SET {name} = '{value}'")
            # A policy that would hide rows is an error, never a silent gap.
            cur.execute("SET row_security = off")
    except psycopg2.Error as error:
        raise _connect_error(error) from None
    connection: psycopg2.extensions.connection = raw
    return connection


def _translate(error: psycopg2.Error, doing: str) -> ReplicantError:
    return _from_psycopg2(error, doing)


# --- what is read -------------------------------------------------------------------------


@dataclass
class SnapshotTable:
    """One table of a snapshot: its description and how to read it."""

    oid: int
    schema: str
    name: str
    relkind: str
    relation: Relation
    primary_key: tuple[str, ...]
    key_types: tuple[str, ...]
    row_filter: str | None
    binary_ok: bool
    pages: int
    estimated_rows: float

    @property
    def qualified(self) -> str:
        """``schema.table``, each part quoted as an identifier."""
        return f"{quote_identifier(self.schema)}.{quote_identifier(self.name)}"

    @property
    def display(self) -> str:
        """``schema.table`` as people read it."""
        return f"{self.schema}.{self.name}"


@dataclass
class _Chunk:
    table: SnapshotTable
    number: int
    where: str
    params: tuple[Any, ...] = ()
    rows: int = 0
    binary: bool = False


def _published_tables(
    cur: psycopg2.extensions.cursor, publications: Sequence[str], version: int
) -> dict[int, tuple[set[str] | None, list[str | None]]]:
    """Per table OID: the published column names (None: all) and the row filters."""
    if version >= 150000:
        cur.execute(
            "SELECT c.oid, t.attnames, t.rowfilter FROM pg_catalog.pg_publication_tables t"
            " JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname"
            " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename"
            " WHERE t.pubname = ANY(%s) ORDER BY t.schemaname, t.tablename",
            (list(publications),),
        )
    else:
        cur.execute(
            "SELECT c.oid, NULL, NULL FROM pg_catalog.pg_publication_tables t"
            " JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname"
            " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename"
            " WHERE t.pubname = ANY(%s) ORDER BY t.schemaname, t.tablename",
            (list(publications),),
        )
    out: dict[int, tuple[set[str] | None, list[str | None]]] = {}
    for oid, attnames, rowfilter in cur.fetchall():
        columns, filters = out.get(int(oid), (set(), []))
        if attnames is None or columns is None:
            columns = None
        else:
            columns |= set(attnames)
        filters.append(rowfilter)
        out[int(oid)] = (columns, filters)
    return out


def describe_tables(
    cur: psycopg2.extensions.cursor,
    *,
    tables: Sequence[str] | None,
    publications: Sequence[str],
    lsn: LSN,
) -> list[SnapshotTable]:
    """Describe the tables to read, as the snapshot's catalog shows them.

    ``tables`` (names as SQL writes them, ``schema.table`` or a name on the
    search path) or else every table of ``publications``; with both, only the
    named tables, each of which must be published. Columns, their types and
    the key flags are those a pgoutput Relation message gives (publication
    column lists and row filters included, 15+). Raises
    :class:`ConfigurationError` for an unknown table or an empty list, and
    :class:`ServerError` (42501) for a table the role may not read.
    """
    version = int(cur.connection.server_version)
    published = _published_tables(cur, publications, version) if publications else None
    oids: list[int] = []
    if tables is not None:
        for name in tables:
            try:
                cur.execute("SAVEPOINT describe")
                cur.execute("SELECT %s::regclass::oid", (name,))
                row = cur.fetchone()
                cur.execute("RELEASE SAVEPOINT describe")
            except psycopg2.Error as error:
                cur.execute("ROLLBACK TO SAVEPOINT describe")
                raise ConfigurationError(
                    f"cannot snapshot table {name!r}: {error.diag.message_primary or error}"
                ) from None
            assert row is not None
            oid = int(row[0])
            if published is not None and oid not in published:
                raise ConfigurationError(
                    f"table {name!r} is not in publication(s) {', '.join(publications)}: "
                    "its changes would not follow its snapshot"
                )
            if oid not in oids:
                oids.append(oid)
    elif published is not None:
        oids = list(published)
    if not oids:
        raise ConfigurationError(
            "nothing to snapshot: the publication holds no tables"
            if tables is None
            else "nothing to snapshot: snapshot_tables is empty"
        )
    out = []
    for oid in oids:
        no_filter: list[str | None] = [None]
        columns, filters = (None, no_filter) if published is None else published[oid]
        out.append(_describe(cur, oid, columns, filters, lsn, version))
    return out


def _describe(
    cur: psycopg2.extensions.cursor,
    oid: int,
    published_columns: set[str] | None,
    filters: list[str | None],
    lsn: LSN,
    version: int,
) -> SnapshotTable:
    cur.execute(
        "SELECT n.nspname, c.relname, c.relkind, c.relreplident, c.reltuples,"
        " pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::int,"
        " pg_catalog.has_table_privilege(c.oid, 'SELECT'),"
        " pg_catalog.row_security_active(c.oid)"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = %s",
        (oid,),
    )
    row = cur.fetchone()
    if row is None:
        raise ConfigurationError(f"table with OID {oid} does not exist")
    schema, name, relkind, identity, reltuples, pages, can_select, rls = row
    display = f"{schema}.{name}"
    if relkind not in ("r", "p"):
        raise ConfigurationError(f"{display} is not a table (relkind {relkind!r})")
    generated = "AND a.attgenerated = ''" if published_columns is None else ""
    cur.execute(
        "SELECT a.attname, a.atttypid, a.atttypmod, a.attnum,"
        " pg_catalog.format_type(a.atttypid, a.atttypmod),"
        " coalesce(i.indisprimary, false), coalesce(i.indisreplident, false),"
        " t.typsend <> 0, pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')"
        " FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN LATERAL (SELECT bool_or(x.indisprimary) AS indisprimary,"
        "   bool_or(x.indisreplident) AS indisreplident FROM pg_catalog.pg_index x"
        "   WHERE x.indrelid = a.attrelid AND a.attnum = ANY(x.indkey::int2[])"
        "   AND (x.indisprimary OR x.indisreplident)) i ON true"
        f" WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped {generated}"
        " ORDER BY a.attnum",
        (oid,),
    )
    attributes = [
        r for r in cur.fetchall() if published_columns is None or r[0] in published_columns
    ]
    if not can_select and not all(r[8] for r in attributes):
        raise ServerError(
            f"permission denied for table {display}: the snapshot cannot read it",
            sqlstate="42501",
            hint=f"GRANT SELECT ON {quote_identifier(schema)}.{quote_identifier(name)} "
            "to the role replicant connects as",
        )
    if rls:
        raise ServerError(
            f"row-level security is active for table {display}: the snapshot would miss rows",
            sqlstate="42501",
            hint="connect as the table's owner or a role with BYPASSRLS",
        )
    # The primary key, in its index's column order (not the table's).
    cur.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)"
        " FROM pg_catalog.pg_index x, unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, pos)"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = %s AND a.attnum = k.attnum"
        " WHERE x.indrelid = %s AND x.indisprimary ORDER BY k.pos",
        (oid, oid),
    )
    key = cur.fetchall()
    identity_name = {"d": "default", "n": "nothing", "f": "full", "i": "index"}.get(
        identity, "unknown"
    )
    columns = []
    for attname, typid, typmod, _, _, primary, replident, _, _ in attributes:
        is_key = (
            identity == "f"
            or (identity == "d" and bool(primary))
            or (identity == "i" and bool(replident))
        )
        columns.append(Column(attname, int(typid), int(typmod), is_key))
    relation = Relation(
        lsn=lsn,
        xid=None,
        relid=oid,
        schema=schema,
        table=name,
        columns=tuple(columns),
        replica_identity=identity_name,
    )
    names = {c.name for c in columns}
    key_names = tuple(k for k, _ in key)
    if not set(key_names) <= names:
        key_names = ()  # a key column left out of the publication's column list
    row_filter = None
    if filters and all(f is not None for f in filters):
        row_filter = " OR ".join(f"({f})" for f in dict.fromkeys(filters))
    return SnapshotTable(
        oid=oid,
        schema=schema,
        name=name,
        relkind=relkind,
        relation=relation,
        primary_key=key_names,
        key_types=tuple(t for k, t in key) if key_names else (),
        row_filter=row_filter,
        binary_ok=all(r[7] for r in attributes),
        pages=int(pages or 0),
        estimated_rows=float(reltuples or 0),
    )


# --- chunks -----------------------------------------------------------------------------


def _plan(
    cur: psycopg2.extensions.cursor, table: SnapshotTable, chunk_rows: int, version: int
) -> list[_Chunk]:
    """Split ``table`` into chunks of about ``chunk_rows`` rows (one for a small table).

    Ranges by primary key, bounded by keys sampled with ``TABLESAMPLE``; for
    a table without one, ranges of ``ctid`` pages (14+, where a TID range is
    read without a full scan). The ranges cover every possible key, so the
    sample decides only how even they are, never what is read.
    """
    estimate = table.estimated_rows
    if estimate <= 0 and table.pages > 0:
        estimate = table.pages * 100.0  # never analysed: a rough guess from its size
    count = int(estimate // max(chunk_rows, 1)) + 1
    if count <= 1 or table.relkind == "p":
        return [_Chunk(table, 0, "")]
    if table.primary_key:
        return _key_chunks(cur, table, count, estimate)
    if version < 140000 or table.pages < 2:
        return [_Chunk(table, 0, "")]
    count = min(count, table.pages)
    edges = [table.pages * i // count for i in range(1, count)]
    chunks = []
    low: int | None = None
    for number, high in enumerate([*edges, None]):
        parts = []
        if low is not None:
            parts.append(f"ctid >= '({low},0)'::tid")
        if high is not None:
            parts.append(f"ctid < '({high},0)'::tid")
        chunks.append(_Chunk(table, number, " AND ".join(parts)))
        low = high
    return chunks


def _key_chunks(
    cur: psycopg2.extensions.cursor, table: SnapshotTable, count: int, estimate: float
) -> list[_Chunk]:
    keys = ", ".join(quote_identifier(k) for k in table.primary_key)
    edges = _histogram_edges(cur, table, count) if len(table.primary_key) == 1 else []
    if not edges:
        edges = _sampled_edges(cur, table, count, estimate)
    if not edges:
        return [_Chunk(table, 0, "")]
    casts = ", ".join(f"%s::{t}" for t in table.key_types)
    row = f"({keys})" if len(table.primary_key) > 1 else keys
    bound = f"({casts})" if len(table.primary_key) > 1 else casts
    chunks = []
    low: tuple[Any, ...] | None = None
    for number, high in enumerate([*edges, None]):
        parts = []
        params: list[Any] = []
        if low is not None:
            parts.append(f"{row} > {bound}")
            params.extend(low)
        if high is not None:
            parts.append(f"{row} <= {bound}")
            params.extend(high)
        chunks.append(_Chunk(table, number, " AND ".join(parts), tuple(params)))
        low = high
    return chunks


def _histogram_edges(
    cur: psycopg2.extensions.cursor, table: SnapshotTable, count: int
) -> list[tuple[Any, ...]]:
    """Chunk edges from the planner's statistics of a one-column key (a random sample)."""
    cur.execute(
        "SELECT histogram_bounds::text::text[] FROM pg_catalog.pg_stats"
        " WHERE schemaname = %s AND tablename = %s AND attname = %s AND NOT inherited",
        (table.schema, table.name, table.primary_key[0]),
    )
    row = cur.fetchone()
    bounds = row[0] if row else None
    if not bounds or len(bounds) < 2:
        return []
    edges: list[tuple[Any, ...]] = []
    for i in range(1, count):
        edge = (bounds[len(bounds) * i // count],)
        if not edges or edges[-1] != edge:
            edges.append(edge)
    return edges


def _sampled_edges(
    cur: psycopg2.extensions.cursor, table: SnapshotTable, count: int, estimate: float
) -> list[tuple[Any, ...]]:
    """Chunk edges from keys of whole pages sampled at random (``TABLESAMPLE SYSTEM``)."""
    keys = ", ".join(quote_identifier(k) for k in table.primary_key)
    # Aliased, so that ORDER BY sorts by the key, not by its text.
    texts = ", ".join(
        f"{quote_identifier(k)}::text AS _key{i}" for i, k in enumerate(table.primary_key)
    )
    pages = max(table.pages, 1)
    # Enough pages for the keys wanted and spread over the table; more until
    # there are enough (a small sample of a small table may come back empty).
    wanted = count * _SAMPLES_PER_CHUNK
    per_page = max(estimate / pages, 1.0)
    percent = min(100.0, 100.0 * max(count * 8.0, wanted / per_page) / pages)
    source = f"{'ONLY ' if table.relkind == 'r' else ''}{table.qualified}"
    while True:
        cur.execute(
            f"SELECT {texts} FROM {source} TABLESAMPLE SYSTEM (%s) ORDER BY {keys}",
            (percent,),
        )
        sample = cur.fetchall()
        if len(sample) >= count or percent >= 100.0:
            break
        percent = min(100.0, percent * 4)
    edges: list[tuple[Any, ...]] = []
    for i in range(1, count):
        edge = tuple(sample[len(sample) * i // count]) if sample else None
        if edge is not None and (not edges or edges[-1] != edge):
            edges.append(edge)
    return edges


def _copy_command(chunk: _Chunk, binary: bool, cur: psycopg2.extensions.cursor) -> str:
    table = chunk.table
    columns = ", ".join(quote_identifier(c.name) for c in table.relation.columns)
    conditions = [c for c in (chunk.where, table.row_filter) if c]
    source = f"{'ONLY ' if table.relkind == 'r' else ''}{table.qualified}"
    where = f" WHERE {' AND '.join(f'({c})' for c in conditions)}" if conditions else ""
    select = f"SELECT {columns} FROM {source}{where}"
    if chunk.params:
        select = cur.mogrify(select, chunk.params).decode()
    form = " (FORMAT binary)" if binary else ""
    return f"COPY ({select}) TO STDOUT{form}"


# --- reading COPY output ------------------------------------------------------------------

_ESCAPES: Final = {
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
}
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_NULL_TEXT: Final = b"\\N"
_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00"
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


def _unescape(value: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)


class _CopyReader:
    """The file object ``copy_expert`` writes into: COPY data in, Read events out in batches.

    ``emit(batch)`` is called with every ``_BATCH_ROWS`` events (and the
    rest at :meth:`close`); it may block (that is the back-pressure that
    bounds memory) and raises :class:`_Stopped` to abandon the copy.
    """

    def __init__(
        self,
        layout: RowLayout,
        relation: Relation,
        lsn: LSN,
        binary: bool,
        emit: Callable[[list[Read]], None],
    ) -> None:
        self._layout = layout
        self._relation = relation
        self._lsn = lsn
        self._binary = binary
        self._emit = emit
        self._ncolumns = len(layout.names)
        self._pending = b""
        self._header = not binary
        self._batch: list[Read] = []
        self._ended = False
        self.rows = 0

    def write(self, data: bytes) -> int:
        # psycopg2 hands over one COPY message at a time: one row, the usual
        # case, taken on the short path; anything else is buffered.
        if self._binary:
            if self._header and not self._pending:
                self._binary_row(data)
            else:
                self._binary_rows(data)
        elif not self._pending and data.find(b"\n") == len(data) - 1:
            fields: list[Any] = data[:-1].split(b"\t")
            if len(fields) != self._ncolumns:
                self._text_rows(data)  # says what is wrong
                return len(data)
            if b"\\" in data:
                fields = [
                    None if f == _NULL_TEXT else _unescape(f) if b"\\" in f else f for f in fields
                ]
            self._batch.append(new_read(self._lsn, None, self._relation, Row(self._layout, fields)))
            self.rows += 1
        else:
            self._text_rows(data)
        if len(self._batch) >= _BATCH_ROWS:
            self._flush()
        return len(data)

    def _binary_row(self, data: bytes) -> None:
        """One message that should hold exactly one tuple (or the trailer)."""
        end = len(data)
        if end < 2:
            self._binary_rows(data)
            return
        count = int.from_bytes(data[:2], "big", signed=True)
        if count != self._ncolumns:
            self._binary_rows(data)  # the trailer, or an error worded there
            return
        raw: list[Any] = []
        append = raw.append
        unpack = _I32.unpack_from
        pos = 2
        for _ in range(count):
            if pos + 4 > end:
                self._binary_rows(data)
                return
            (length,) = unpack(data, pos)
            pos += 4
            if length < 0:
                append(None)
                continue
            append(data[pos : pos + length])
            pos += length
        if pos != end:
            self._binary_rows(data)  # a tuple cut in two messages, or two in one
            return
        self._add(raw)

    def _add(self, raw: list[Any]) -> None:
        self._batch.append(new_read(self._lsn, None, self._relation, Row(self._layout, raw)))
        self.rows += 1

    def _text_rows(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        ncolumns = self._ncolumns
        for line in lines:
            fields: list[Any] = line.split(b"\t")
            if len(fields) != ncolumns:
                if ncolumns == 0 and line == b"":
                    fields = []
                else:
                    raise DecodeError(
                        f"COPY row of {self._relation.schema}.{self._relation.table} has "
                        f"{len(fields)} fields, not {ncolumns}"
                    )
            if b"\\" in line:
                fields = [
                    None if f == _NULL_TEXT else _unescape(f) if b"\\" in f else f for f in fields
                ]
            self._add(fields)

    def _binary_rows(self, data: bytes) -> None:
        buf = self._pending + data if self._pending else data
        pos = 0
        end = len(buf)
        if not self._header:
            if end < 19:
                self._pending = buf
                return
            if buf[:11] != _SIGNATURE:
                raise DecodeError("COPY binary data does not start with its signature")
            (extension,) = _I32.unpack_from(buf, 15)
            if end < 19 + extension:
                self._pending = buf
                return
            pos = 19 + extension
            self._header = True
        ncolumns = self._ncolumns
        while pos + 2 <= end:
            start = pos
            (count,) = _I16.unpack_from(buf, pos)
            pos += 2
            if count == -1:
                self._ended = True
                pos = end
                break
            if count != ncolumns:
                raise DecodeError(
                    f"COPY row of {self._relation.schema}.{self._relation.table} has "
                    f"{count} fields, not {ncolumns}"
                )
            raw: list[Any] = []
            complete = True
            for _ in range(count):
                if pos + 4 > end:
                    complete = False
                    break
                (length,) = _I32.unpack_from(buf, pos)
                pos += 4
                if length == -1:
                    raw.append(None)
                    continue
                if pos + length > end:
                    complete = False
                    break
                raw.append(buf[pos : pos + length])
                pos += length
            if not complete:
                pos = start
                break
            self._add(raw)
        self._pending = buf[pos:]

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._emit(batch)

    def close(self) -> None:
        """The copy ended: check nothing was cut, hand over the last rows."""
        if self._pending or (self._binary and not self._ended):
            raise DecodeError(
                f"COPY data of {self._relation.schema}.{self._relation.table} ends in the "
                "middle of a row"
            )
        self._flush()


# --- the snapshot ---------------------------------------------------------------------------


@dataclass
class _Shared:
    """What the workers and the delivering thread share."""

    stop: threading.Event
    chunks: list[_Chunk]
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Worker numbers, one per chunk started (and None when a worker ends):
    # the delivering thread takes chunks in this order.
    started: queue.SimpleQueue[tuple[int, _Chunk] | tuple[int, None]] = field(
        default_factory=queue.SimpleQueue
    )
    failure: BaseException | None = None

    def next_chunk(self) -> _Chunk | None:
        with self.lock:
            return self.chunks.pop(0) if self.chunks and not self.stop.is_set() else None

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = error
        self.stop.set()


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=_POLL)
            return
        except queue.Full:
            continue


def _layout_for(table: SnapshotTable, binary: bool, decode_values: bool, strict: bool) -> RowLayout:
    shape = _Table(table.relation, decode_values, strict)
    return shape.binary if binary else shape.text


class _Collector:
    """The file object a worker's ``copy_expert`` writes into: COPY messages, in batches.

    The worker thread only collects the server's messages; parsing them
    into rows happens in the delivering thread, so the workers hold the
    interpreter lock as little as possible and overlap the server's work.
    """

    __slots__ = ("_batch", "_emit")

    def __init__(self, emit: Callable[[list[bytes]], None]) -> None:
        self._emit = emit
        self._batch: list[bytes] = []

    def write(self, data: bytes) -> int:
        batch = self._batch
        batch.append(data)
        if len(batch) >= _BATCH_ROWS:
            self._batch = []
            self._emit(batch)
        return len(data)

    def close(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._emit(batch)


def _worker(
    number: int,
    conn: psycopg2.extensions.connection,
    shared: _Shared,
    out: queue.Queue[Any],
    *,
    binary: bool,
) -> None:
    """Read chunks until none is left, handing their COPY data to ``out``."""
    try:
        with conn.cursor() as cur:
            while True:
                chunk = shared.next_chunk()
                if chunk is None:
                    break
                chunk.binary = binary and chunk.table.binary_ok
                collector = _Collector(lambda batch: _put(out, batch, shared.stop))
                shared.started.put((number, chunk))
                command = _copy_command(chunk, chunk.binary, cur)
                try:
                    cur.copy_expert(command, collector)
                except psycopg2.Error as error:
                    if shared.stop.is_set():
                        raise _Stopped from None
                    raise _translate(error, f"COPY {chunk.table.display}") from None
                collector.close()
                _put(out, chunk, shared.stop)
    except _Stopped:
        pass
    except BaseException as error:
        shared.fail(error)
    finally:
        shared.started.put((number, None))


def _deliver_all(deliver: Callable[[Event], object], events: list[Read]) -> None:
    for event in events:
        deliver(event)


def _import(conn: psycopg2.extensions.connection, snapshot_name: str) -> None:
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))


def _lock(
    conn: psycopg2.extensions.connection, tables: list[SnapshotTable], *, wait: bool
) -> list[SnapshotTable]:
    """Lock every table ACCESS SHARE; return those that were dropped (none when not waiting)."""
    dropped = []
    with conn.cursor() as cur:
        for table in tables:
            cur.execute("SAVEPOINT lock")
            try:
                cur.execute(
                    f"LOCK TABLE {'ONLY ' if table.relkind == 'r' else ''}{table.qualified}"
                    f" IN ACCESS SHARE MODE{'' if wait else ' NOWAIT'}"
                )
                # Dropped and created again under the same name: not the table
                # the snapshot knows.
                cur.execute("SELECT to_regclass(%s)::oid", (table.qualified,))
                row = cur.fetchone()
                same = row is not None and row[0] is not None and int(row[0]) == table.oid
                cur.execute("RELEASE SAVEPOINT lock")
            except psycopg2.errors.UndefinedTable:
                cur.execute("ROLLBACK TO SAVEPOINT lock")
                same = False
            if not same:
                dropped.append(table)
    return dropped


def take_snapshot(
    dsn: str | None,
    connect_params: dict[str, Any],
    *,
    snapshot_name: str,
    lsn: LSN,
    deliver: Callable[[Event], object],
    stop: threading.Event,
    tables: Sequence[str] | None = None,
    publications: Sequence[str] = (),
    workers: int = 1,
    binary: bool = False,
    decode_values: bool = True,
    strict_values: bool = False,
    chunk_rows: int = 100_000,
    name: str = "snapshot",
) -> bool:
    """Read every table inside the exported snapshot ``snapshot_name``; deliver the events.

    ``deliver`` (the callback) is called in this thread: a
    :class:`SnapshotBegin` for the whole snapshot, then for each chunk its
    :class:`Read` rows (with the table's own :class:`SnapshotBegin` before
    its first chunk and :class:`SnapshotEnd` after its last), then the
    overall :class:`SnapshotEnd`. Returns True once all of it was
    delivered, False when ``stop`` was set first. A failure (of a worker,
    a connection, the callback) is raised after every worker has ended.
    The exporting connection must stay idle until this returns.
    """
    if workers < 1:
        raise ConfigurationError(f"snapshot_workers must be at least 1, not {workers!r}")
    connections: list[psycopg2.extensions.connection] = []
    threads: list[threading.Thread] = []
    shared = _Shared(stop=threading.Event(), chunks=[])
    queues: list[queue.Queue[Any]] = []
    stopped_by_user = False
    try:
        first = connect_sql(dsn, **connect_params)
        connections.append(first)
        version = int(first.server_version)
        try:
            _import(first, snapshot_name)
            with first.cursor() as cur:
                described = describe_tables(cur, tables=tables, publications=publications, lsn=lsn)
            dropped = {t.oid for t in _lock(first, described, wait=True)}
            present = [t for t in described if t.oid not in dropped]
            with first.cursor() as cur:
                for table in present:
                    shared.chunks.extend(_plan(cur, table, chunk_rows, version))
        except psycopg2.Error as error:
            raise _translate(error, "snapshot") from None
        for table in described:
            if table.oid in dropped:
                logger.warning(
                    "%s: table %s was dropped before it could be read", name, table.display
                )
        # More workers than chunks would only sit idle.
        for _ in range(min(workers, len(shared.chunks)) - 1):
            conn = connect_sql(dsn, **connect_params)
            connections.append(conn)
            try:
                _import(conn, snapshot_name)
                if not _lock(conn, present, wait=False):
                    continue
            except psycopg2.Error as error:
                if getattr(error, "pgcode", None) != "55P03":
                    raise _translate(error, "snapshot worker") from None
            # Someone waits for an exclusive lock on a table: this worker
            # would queue behind it (and it behind the first worker's lock).
            logger.info("%s: a table is locked by someone else; one worker fewer", name)
            conn.close()
            connections.pop()
        for number, conn in enumerate(connections):
            out: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_BATCHES)
            queues.append(out)
            thread = threading.Thread(
                target=_worker,
                args=(number, conn, shared, out),
                kwargs={"binary": binary},
                name=f"replicant-snapshot[{name}]-{number}",
                daemon=True,
            )
            threads.append(thread)
        chunks_left: dict[int, int] = {}
        for planned in shared.chunks:
            chunks_left[planned.table.oid] = chunks_left.get(planned.table.oid, 0) + 1
        rows_of: dict[int, int] = {}
        deliver(
            SnapshotBegin(
                lsn=lsn,
                xid=None,
                schema=None,
                table=None,
                tables=tuple(t.display for t in present),
                incremental=False,
            )
        )
        for thread in threads:
            thread.start()
        running = len(threads)
        total = 0
        while running:
            try:
                number, started = shared.started.get(timeout=_POLL)
            except queue.Empty:
                if stop.is_set():
                    stopped_by_user = True
                    shared.stop.set()
                continue
            if started is None:
                running -= 1
                continue
            chunk = started
            table = chunk.table
            if table.oid not in rows_of:
                rows_of[table.oid] = 0
                deliver(
                    SnapshotBegin(
                        lsn=lsn,
                        xid=None,
                        schema=table.schema,
                        table=table.name,
                        tables=(),
                        incremental=False,
                    )
                )
            source = queues[number]
            reader = _CopyReader(
                _layout_for(table, chunk.binary, decode_values, strict_values),
                table.relation,
                lsn,
                chunk.binary,
                lambda events: _deliver_all(deliver, events),
            )
            while True:
                try:
                    item = source.get(timeout=_POLL)
                except queue.Empty:
                    if stop.is_set():
                        stopped_by_user = True
                        shared.stop.set()
                    if shared.stop.is_set():
                        break
                    continue
                if item is chunk:
                    reader.close()
                    chunk.rows = reader.rows
                    rows_of[table.oid] += chunk.rows
                    total += chunk.rows
                    chunks_left[table.oid] -= 1
                    if not chunks_left[table.oid]:
                        deliver(
                            SnapshotEnd(
                                lsn=lsn,
                                xid=None,
                                schema=table.schema,
                                table=table.name,
                                rows=rows_of[table.oid],
                                incremental=False,
                            )
                        )
                    break
                write = reader.write
                for data in item:
                    write(data)
                if stop.is_set():
                    stopped_by_user = True
                    shared.stop.set()
                    break
            if shared.stop.is_set():
                break
        if shared.failure is not None:
            raise shared.failure
        if stopped_by_user or shared.stop.is_set():
            return False
        deliver(
            SnapshotEnd(
                lsn=lsn,
                xid=None,
                schema=None,
                table=None,
                rows=total,
                incremental=False,
                missing=tuple(t.display for t in described if t.oid in dropped),
            )
        )
        return True
    except BaseException:
        shared.stop.set()
        raise
    finally:
        shared.stop.set()
        for thread in threads:
            thread.join(1.0)
        if any(thread.is_alive() for thread in threads):
            # A worker waits on the server (a slow COPY): cancel its query.
            for conn in connections:
                with contextlib.suppress(psycopg2.Error):
                    conn.cancel()
            for thread in threads:
                thread.join(30.0)
        for conn in connections:
            with contextlib.suppress(psycopg2.Error):
                conn.close()


# --- the consumer's arguments ----------------------------------------------------------


def check_snapshot_options(
    mode: str,
    tables: Sequence[str] | None,
    workers: int,
    chunk_rows: int,
    *,
    create_slot: bool,
    publication: str | Sequence[str] | None,
) -> str:
    """Validate the snapshot arguments; return the mode."""
    if mode not in SNAPSHOT_MODES:
        raise ConfigurationError(
            f"snapshot must be one of {', '.join(map(repr, SNAPSHOT_MODES))}, not {mode!r}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"snapshot_workers must be a whole number >= 1, not {workers!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ConfigurationError(
            f"snapshot_chunk_rows must be a whole number >= 1, not {chunk_rows!r}"
        )
    if isinstance(tables, str):
        raise ConfigurationError("snapshot_tables is a list of table names, not one string")
    if mode == "never":
        return mode
    if not create_slot:
        raise ConfigurationError(
            f"snapshot={mode!r} needs create_slot=True: the snapshot is the one a slot exports "
            "when it is created, and an existing slot's is gone. To read the tables of a "
            "running slot again, call consumer.snapshot([...]) (an incremental snapshot)"
        )
    if publication is None and tables is None:
        raise ConfigurationError(
            f"snapshot={mode!r} needs snapshot_tables=[...] when there is no publication"
        )
    return mode


def reading_options(decoder: Any) -> dict[str, bool]:
    """How a snapshot reads values so that they match the decoder's rows.

    ``binary`` when the decoder asks pgoutput for binary values, and its
    ``decode_values`` and ``strict_values``.
    """
    extra = getattr(decoder, "extra_options", None) or {}
    asked = str(extra.get("binary", "")).lower() in ("true", "on", "1")
    return {
        "binary": asked or bool(getattr(decoder, "binary", False)),
        "decode_values": bool(getattr(decoder, "decode_values", True)),
        "strict_values": bool(getattr(decoder, "strict_values", False)),
    }


# --- the slot ----------------------------------------------------------------------------


def _work_slot_name(slot: str) -> str:
    """A name for the temporary slot of ``slot``'s snapshot, unique to this attempt."""
    return validate_slot_name(f"{slot[:40]}_snapshot_{secrets.token_hex(4)}")


def create_slot_with_snapshot(
    connection: ReplicationConnection,
    slot: str,
    plugin: str,
    *,
    temporary: bool,
    two_phase: bool,
    copy: Callable[[CreatedSlot], bool],
) -> tuple[LSN, bool]:
    """Create ``slot`` with an exported snapshot, run ``copy`` inside it, then keep the slot.

    ``copy(created)`` reads the tables inside ``created.snapshot_name`` and
    returns True when it finished. Only then is the slot given its name (a
    permanent copy of the temporary work slot, at the same consistent
    point); when ``copy`` returns False or raises, no slot named ``slot``
    exists afterwards. With ``temporary`` the slot is temporary from the
    start, under its own name. Returns the consistent point and whether
    the copy finished.
    """
    work = slot if temporary else _work_slot_name(slot)
    created = connection.create_slot(
        work, plugin, temporary=True, snapshot="export", two_phase=two_phase
    )
    if created.snapshot_name is None:
        raise SlotError(f'the server exported no snapshot for slot "{work}"')
    logger.info(
        "created slot %s at %s exporting snapshot %s",
        work,
        created.consistent_point,
        created.snapshot_name,
    )
    finished = copy(created)
    if not finished or temporary:
        return created.consistent_point, finished
    # The copy is complete: only now does the slot get its name.
    try:
        connection.execute(
            "SELECT 1 FROM pg_catalog.pg_copy_logical_replication_slot(%s, %s, false)",
            (work, slot),
        )
        connection.drop_slot(work)
    except ServerError as error:
        if error.sqlstate == "42710":
            raise SlotError(
                f'replication slot "{slot}" was created by someone else while the snapshot '
                "was being taken; the snapshot is discarded",
                sqlstate="42710",
            ) from None
        raise
    except ConnectionLost:
        raise
    logger.info("slot %s is ready at %s", slot, created.consistent_point)
    return created.consistent_point, True
