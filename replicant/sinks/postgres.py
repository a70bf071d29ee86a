"""Exactly once into PostgreSQL: each source transaction applied in a target transaction.

The position goes into the same target transaction: a replication origin
(as PostgreSQL's own subscriber does), or a row of a progress table where
the role may not use origins. Values are written as the source server's
text, cast explicitly to the target column's type, so nothing is lost in a
round trip through Python (numeric digits, infinite timestamps, arrays,
ranges, json as sent, values Python cannot hold).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from replicant.changes import UNCHANGED, Delete, Insert, Relation, Row, Truncate, Update
from replicant.lsn import LSN
from replicant.sinks._apply import TransactionalSink, same_shape
from replicant.sinks.base import SinkError

__all__ = ["PostgresSink"]

logger = logging.getLogger("replicant")

Progress = Literal["auto", "origin", "table"]

# Rows of inserts gathered into one COPY before it is sent.
_COPY_ROWS = 5000
# How long to wait for a replication origin still held by a session that
# is going away (a consumer killed a moment ago).
_ORIGIN_BUSY_TIMEOUT = 10.0
# OIDs below this are built into every server: only those may be named by
# OID on another server (to create a missing table).
_FIRST_NORMAL_OID = 16384


def _ident(name: str) -> str:
    # With % doubled: every statement goes through psycopg2's parameter
    # formatting (with an empty list when it has none), which undoes it.
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


def _unformatted(sql: str) -> str:
    """``sql`` as the server sees it (for what psycopg2 does not format: COPY, names as values)."""
    return sql.replace("%%", "%")


def _qualified(schema: str, table: str) -> str:
    return f"{_ident(schema)}.{_ident(table)}"


def _text(raw: Any) -> str:
    """A column's value as the server's text (pgoutput's text format gives bytes of it)."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8")
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):  # wal2json
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return repr(raw)
    return json.dumps(raw)


def _copy_field(raw: Any) -> bytes:
    """One field of COPY's text format: the server's text with \\, tab and newlines escaped."""
    if raw is None:
        return b"\\N"
    data = raw if isinstance(raw, bytes) else _text(raw).encode("utf-8")
    if b"\\" in data or b"\t" in data or b"\n" in data or b"\r" in data:
        data = (
            data.replace(b"\\", b"\\\\")
            .replace(b"\t", b"\\t")
            .replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r")
        )
    return data


def _copy_line(raw: list[Any]) -> bytes:
    """A row in COPY's text format, from the values as received."""
    if None not in raw:
        try:
            line = b"\t".join(raw)
        except TypeError:  # not all bytes (wal2json): field by field
            pass
        else:
            # One scan per special byte for the whole line, not per field.
            if (
                not (b"\\" in line or b"\n" in line or b"\r" in line)
                and line.count(b"\t") == len(raw) - 1
            ):
                return line + b"\n"
    return b"\t".join([_copy_field(v) for v in raw]) + b"\n"


@dataclass
class _Target:
    """A source table's target: its name there, its column types, how rows are found."""

    source: Relation
    name: str  # qualified and quoted
    label: str  # schema.table, for messages (name is for psycopg2's formatting: % doubled)
    types: dict[str, str]  # target column -> type to cast to
    primary_key: tuple[str, ...]
    columns: tuple[str, ...]  # the source columns written (the target's generated ones left out)
    copy_sql: dict[tuple[str, ...], str] = field(default_factory=dict)


class _CopyRun:
    """Consecutive inserts into one table with the same columns, sent as one COPY."""

    __slots__ = ("columns", "lines", "lsns", "rows", "target")

    def __init__(self, target: _Target, columns: tuple[str, ...]) -> None:
        self.target = target
        self.columns = columns
        self.lines: list[bytes] = []
        self.lsns: list[LSN] = []
        self.rows: list[Row] = []


class PostgresSink(TransactionalSink):
    """Applies each source transaction to a PostgreSQL database exactly once.

    Inserts, updates, deletes and truncates go to the tables of the same
    name on the target (``table_map`` maps ``"schema.table"`` of the source
    to ``"schema.table"``, or ``"table"`` in the source's schema, on the
    target). Updates and deletes find the row by the target's primary key
    (when the change carries it) or the source's replica identity; an
    unchanged TOASTed column is left as the target has it.

    The position (the end LSN of the last source transaction applied) is
    stored in the same target transaction as the changes: with
    ``progress="origin"`` in the replication origin ``name`` (advanced by
    ``pg_replication_origin_xact_setup``, read back with
    ``pg_replication_origin_progress``; needs a superuser or the grants on
    those functions), with ``"table"`` in a row of
    ``progress_table`` (created if missing); ``"auto"`` (the default) uses
    an origin when the role may, else the table. On start the sink reads it:
    :meth:`resume_lsn`; :meth:`SinkWriter.consumer
    <replicant.sinks.SinkWriter.consumer>` starts the stream there, and a
    transaction the target holds already that comes again is skipped.

    Batching: source transactions are applied into one open target
    transaction, committed at the writer's flush or after ``max_batch`` of
    them; the stored position is the batch's last commit, so a crash loses
    the whole batch or nothing, and the stream resumes after what is there.

    A source table missing on the target is a :class:`SinkError`, unless
    ``create_tables`` (then it is created from the source's column types
    and key, for built-in types). Any failure (the target gone, a
    constraint violated) raises :class:`SinkError` with the source LSN of the
    change and the statement, rolls the open batch back, and ends the
    stream: nothing after the last committed batch is acknowledged, and a
    restart applies it again. Values are the source's text, cast to the
    target column's type: pgoutput's text format (its default) is needed,
    not ``binary``. ``strict`` (default) makes an update or delete that
    finds no row an error; without it, a warning.
    """

    target_name = "the target database"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        table_map: Mapping[str, str] | None = None,
        name: str = "replicant",
        progress: Progress = "auto",
        progress_table: str = "public.replicant_progress",
        create_tables: bool = False,
        max_batch: int = 1000,
        strict: bool = True,
        connect_timeout: float = 10.0,
        **connect_params: Any,
    ) -> None:
        super().__init__(max_batch=max_batch)
        if progress not in ("auto", "origin", "table"):
            raise SinkError(f"progress must be 'auto', 'origin' or 'table', not {progress!r}")
        if not name:
            raise SinkError("the progress name must not be empty")
        self.dsn = dsn
        self.name = name
        self.table_map = dict(table_map or {})
        self.create_tables = create_tables
        self.strict = strict
        self._progress_table = self._table_name(progress_table, "public")
        self._connect_params = dict(connect_params)
        self._connect_params.setdefault("connect_timeout", max(1, round(connect_timeout)))
        self._targets: dict[tuple[str, str], _Target] = {}
        self._run: _CopyRun | None = None
        self._conn = self._connect()
        self._cur = self._conn.cursor()
        try:
            self.progress = self._setup_progress(progress)
            self._position = self._durable = self._read_position()
        except psycopg2.Error as error:
            self._conn.close()
            raise SinkError(f"cannot set up progress on the target: {error}".strip()) from error
        except BaseException:
            self._conn.close()
            raise
        logger.info(
            "target holds everything up to %s (progress in %s)",
            self._position,
            "replication origin " + name if self.progress == "origin" else self._progress_table,
        )

    def __repr__(self) -> str:
        return f"<PostgresSink {self.name} progress={self.progress} at {self._position}>"

    # -- connecting and the position

    def _connect(self) -> psycopg2.extensions.connection:
        try:
            conn: psycopg2.extensions.connection = psycopg2.connect(
                self.dsn or "", **self._connect_params
            )
        except psycopg2.Error as error:
            raise SinkError(
                f"cannot connect to the target database: {str(error).strip()}"
            ) from error
        conn.autocommit = False
        with conn.cursor() as cur:
            # The source's text is UTF-8 in Python; let the target convert.
            cur.execute("SET client_encoding = 'UTF8'", [])
        conn.commit()
        return conn

    def _setup_progress(self, wanted: Progress) -> Literal["origin", "table"]:
        cur = self._cur
        if wanted in ("auto", "origin"):
            try:
                cur.execute("SELECT pg_replication_origin_oid(%s)", (self.name,))
                row = cur.fetchone()
                if row is None or row[0] is None:
                    cur.execute("SELECT pg_replication_origin_create(%s)", (self.name,))
                self._conn.commit()
                self._origin_session()
                return "origin"
            except psycopg2.errors.InsufficientPrivilege as error:
                self._conn.rollback()
                if wanted == "origin":
                    raise SinkError(
                        f"the target role may not use replication origins: {error}".strip()
                    ) from error
                logger.info("the target role may not use replication origins; using a table")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._progress_table} ("
            "name text PRIMARY KEY, lsn pg_lsn NOT NULL, commit_time timestamptz, "
            "updated_at timestamptz NOT NULL DEFAULT now())",
            [],
        )
        self._conn.commit()
        return "table"

    def _origin_session(self) -> None:
        # A consumer killed a moment ago may still hold the origin: its
        # backend ends once it notices the client went away.
        deadline = time.monotonic() + _ORIGIN_BUSY_TIMEOUT
        while True:
            try:
                self._cur.execute("SELECT pg_replication_origin_session_setup(%s)", (self.name,))
                self._conn.commit()
                return
            except psycopg2.errors.ObjectInUse:
                self._conn.rollback()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _read_position(self) -> LSN:
        cur = self._cur
        if self.progress == "origin":
            cur.execute("SELECT pg_replication_origin_progress(%s, true)::text", (self.name,))
        else:
            cur.execute(
                f"SELECT lsn::text FROM {self._progress_table} WHERE name = %s", (self.name,)
            )
        row = cur.fetchone()
        self._conn.commit()
        return LSN(row[0]) if row and row[0] else LSN(0)

    # -- tables

    def _table_name(self, spec: str, schema: str) -> str:
        parts = spec.split(".", 1)
        return _qualified(parts[0], parts[1]) if len(parts) == 2 else _qualified(schema, spec)

    def _target_of(self, relation: Relation) -> _Target:
        key = (relation.schema, relation.table)
        target = self._targets.get(key)
        if target is None or target.source is not relation:
            if target is None or not same_shape(target.source, relation):
                target = self._targets[key] = self._describe(relation)
            target.source = relation  # the next change of it is found at once
        return target

    def _relation(self, event: Relation) -> None:
        self._target_of(event)

    def _describe(self, relation: Relation) -> _Target:
        spec = self.table_map.get(f"{relation.schema}.{relation.table}")
        if spec is None:
            schema, table = relation.schema, relation.table
        elif "." in spec:
            schema, table = spec.split(".", 1)
        else:
            schema, table = relation.schema, spec
        name = _qualified(schema, table)
        label = f"{schema}.{table}"
        cur = self._cur
        cur.execute("SELECT to_regclass(%s)::oid", (_unformatted(name),))
        row = cur.fetchone()
        if row is None or row[0] is None:
            if not self.create_tables:
                raise SinkError(
                    f"table {label} (for {relation.schema}.{relation.table}) does not exist on "
                    "the target: create it, or pass create_tables=True"
                )
            self._create(relation, schema, table)
            cur.execute("SELECT to_regclass(%s)::oid", (_unformatted(name),))
            row = cur.fetchone()
            assert row is not None
        oid = row[0]
        # format_type(..., -1), not NULL: "bpchar" and "bit" rather than
        # "character" and bit, which as casts mean char(1) and bit(1).
        generated = "a.attgenerated <> ''" if self._conn.server_version >= 120000 else "false"
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, -1), "
            f"{generated}, COALESCE(a.attnum = ANY(i.indkey), false) "
            "FROM pg_attribute a LEFT JOIN pg_index i "
            "ON i.indrelid = a.attrelid AND i.indisprimary "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (oid,),
        )
        types: dict[str, str] = {}
        primary: list[str] = []
        skip: set[str] = set()
        for column, type_name, is_generated, in_key in cur.fetchall():
            types[column] = type_name
            if is_generated:
                skip.add(column)
            if in_key:
                primary.append(column)
        missing = [c.name for c in relation.columns if c.name not in types]
        if missing:
            raise SinkError(
                f"table {label} on the target lacks column(s) {', '.join(missing)} "
                f"of {relation.schema}.{relation.table}"
            )
        written = tuple(c.name for c in relation.columns if c.name not in skip)
        return _Target(relation, name, label, types, tuple(primary), written)

    def _create(self, relation: Relation, schema: str, table: str) -> None:
        cur = self._cur
        definitions = []
        for column in relation.columns:
            if column.type_oid >= _FIRST_NORMAL_OID or column.type_oid == 0:
                raise SinkError(
                    f"cannot create {schema}.{table} on the target: column {column.name} has a "
                    f"type that is not built in (OID {column.type_oid}); create the table there"
                )
            cur.execute("SELECT format_type(%s, %s)", (column.type_oid, column.type_modifier))
            found = cur.fetchone()
            assert found is not None
            definitions.append(f"{_ident(column.name)} {found[0].replace('%', '%%')}")
        keys = relation.key_columns
        if keys and relation.replica_identity in ("default", "index"):
            definitions.append(f"PRIMARY KEY ({', '.join(_ident(k) for k in keys)})")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}", [])
        cur.execute(f"CREATE TABLE {_qualified(schema, table)} ({', '.join(definitions)})", [])
        logger.info("created %s.%s on the target", schema, table)

    # -- applying changes

    def _open(self) -> None:
        pass  # psycopg2 opens the target transaction with the first statement

    def _apply_change(self, event: Insert | Update | Delete | Truncate) -> None:
        if type(event) is Insert:
            assert isinstance(event, Insert)
            self._insert(event)
            return
        self._send_run()
        if isinstance(event, Update):
            self._update(event)
        elif isinstance(event, Delete):
            self._delete(event)
        else:
            assert isinstance(event, Truncate)
            self._truncate(event)

    def _insert(self, event: Insert) -> None:
        target = self._target_of(event.relation)
        row = event.new
        columns = target.columns
        # The row's own list of values when it has the columns written, in
        # order (the usual case: no generated columns on the target).
        raw: list[Any] = row._raw if row.columns == columns else [row.raw(n) for n in columns]
        if UNCHANGED in raw:
            # Not sent by servers for an insert; if it comes, write what came.
            self._send_run()
            sent = [n for n, v in zip(columns, raw, strict=True) if v is not UNCHANGED]
            params = [self._param(v) for v in raw if v is not UNCHANGED]
            self._execute(event, self._insert_sql(target, sent), params)
            return
        run = self._run
        if run is None or run.target is not target:
            self._send_run()
            run = self._run = _CopyRun(target, target.columns)
        run.lines.append(_copy_line(raw))
        run.lsns.append(event.lsn)
        run.rows.append(row)
        if len(run.lines) >= _COPY_ROWS:
            self._send_run()

    def _insert_sql(self, target: _Target, columns: Sequence[str]) -> str:
        names = ", ".join(_ident(c) for c in columns)
        values = ", ".join(f"%s::{target.types[c]}" for c in columns)
        return f"INSERT INTO {target.name} ({names}) VALUES ({values})"

    def _send_run(self) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        target = run.target
        sql = target.copy_sql.get(run.columns)
        if sql is None:
            names = ", ".join(_ident(c) for c in run.columns)
            sql = target.copy_sql[run.columns] = _unformatted(
                f"COPY {target.name} ({names}) FROM STDIN"
            )
        try:
            self._cur.copy_expert(sql, io.BytesIO(b"".join(run.lines)))
        except psycopg2.Error as error:
            raise self._copy_error(run, error) from error

    def _copy_error(self, run: _CopyRun, error: psycopg2.Error) -> SinkError:
        # COPY names the line that failed: that is the change to blame.
        index = None
        context = getattr(error.diag, "context", None) or ""
        found = re.search(r"COPY [^,]*, line (\d+)", context)
        if found and 1 <= int(found.group(1)) <= len(run.lsns):
            index = int(found.group(1)) - 1
        if index is None:
            return self._sql_error(
                error, run.lsns[0], f"COPY {run.target.label} of {len(run.lsns)} rows"
            )
        row = run.rows[index]
        statement = self._render(
            self._insert_sql(run.target, run.columns),
            [self._param(row.raw(c)) for c in run.columns],
        )
        return self._sql_error(error, run.lsns[index], statement)

    def _update(self, event: Update) -> None:
        target = self._target_of(event.relation)
        new = event.new
        sets: list[str] = []
        params: list[Any] = []
        for column in target.columns:
            raw = new.raw(column)
            if raw is UNCHANGED:
                continue  # an unchanged TOASTed value: the target has it
            sets.append(f"{_ident(column)} = %s::{target.types[column]}")
            params.append(self._param(raw))
        where, key_params = self._where(event, target, event.old if event.old is not None else new)
        if not sets:
            return
        self._execute_row(
            event,
            target,
            f"UPDATE {target.name} SET {', '.join(sets)}",
            where,
            params + key_params,
            "update",
        )

    def _delete(self, event: Delete) -> None:
        target = self._target_of(event.relation)
        where, params = self._where(event, target, event.old)
        self._execute_row(event, target, f"DELETE FROM {target.name}", where, params, "delete")

    def _where(self, event: Update | Delete, target: _Target, row: Row) -> tuple[str, list[Any]]:
        """The condition finding the row by the target's primary key, else the replica identity."""
        present = set(row.columns)
        if target.primary_key and all(
            c in present and row.raw(c) is not UNCHANGED for c in target.primary_key
        ):
            columns: Sequence[str] = target.primary_key
            exact = True
        else:
            columns = [
                c
                for c in event.relation.key_columns
                if c in present and row.raw(c) is not UNCHANGED and c in target.types
            ]
            exact = event.relation.replica_identity != "full"
        if not columns:
            raise SinkError(
                f"no key to find the row of {event.relation.schema}.{event.relation.table} on "
                "the target: the table needs a primary key or a replica identity",
                lsn=event.lsn,
            )
        parts: list[str] = []
        params: list[Any] = []
        for column in columns:
            raw = row.raw(column)
            if raw is None:
                parts.append(f"{_ident(column)} IS NULL")
            elif exact:
                parts.append(f"{_ident(column)} = %s::{target.types[column]}")
                params.append(self._param(raw))
            else:
                # Every column (REPLICA IDENTITY FULL): compared as the
                # target prints them, which needs no equality operator.
                parts.append(f"{_ident(column)}::text = (%s::{target.types[column]})::text")
                params.append(self._param(raw))
        return " AND ".join(parts), params

    def _execute_row(
        self,
        event: Update | Delete,
        target: _Target,
        head: str,
        where: str,
        params: list[Any],
        what: str,
    ) -> None:
        if target.primary_key:
            sql = f"{head} WHERE {where}"
        else:
            # Without a key on the target, rows may repeat: change one, as
            # the source did.
            sql = f"{head} WHERE ctid = (SELECT ctid FROM {target.name} WHERE {where} LIMIT 1)"
        count = self._execute(event, sql, params)
        if count == 0:
            message = (
                f"the row to {what} in {target.label} (source change at {event.lsn}) "
                "is not on the target"
            )
            if self.strict:
                raise SinkError(
                    message + "; the target differs from the source",
                    lsn=event.lsn,
                    statement=self._render(sql, params),
                )
            logger.warning("%s; skipped", message)

    def _truncate(self, event: Truncate) -> None:
        names = ", ".join(self._target_of(r).name for r in event.relations)
        sql = f"TRUNCATE ONLY {names}"
        if event.restart_identity:
            sql += " RESTART IDENTITY"
        if event.cascade:
            sql += " CASCADE"
        self._execute(event, sql, [])

    @staticmethod
    def _param(raw: Any) -> Any:
        return None if raw is None else _text(raw)

    def _execute(
        self, event: Insert | Update | Delete | Truncate, sql: str, params: list[Any]
    ) -> int:
        try:
            self._cur.execute(sql, params)
        except psycopg2.Error as error:
            raise self._sql_error(error, event.lsn, self._render(sql, params)) from error
        count: int = self._cur.rowcount
        return count

    def _render(self, sql: str, params: list[Any]) -> str:
        try:
            return self._cur.mogrify(sql, params).decode("utf-8", "replace")
        except psycopg2.Error:  # the connection is gone: show it unbound
            return f"{sql} with {params!r}"

    def _sql_error(self, error: psycopg2.Error, lsn: LSN, statement: str) -> SinkError:
        text = (error.pgerror or str(error)).strip()
        if isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError)) and (
            self._conn.closed or error.pgcode is None
        ):
            text = f"the connection to the target was lost: {text}"
        shown = statement if len(statement) <= 500 else statement[:500] + "..."
        return SinkError(
            f"applying the source change at {lsn} failed on the target: {text}\nstatement: {shown}",
            lsn=lsn,
            statement=statement,
            sqlstate=error.pgcode,
        )

    # -- committing

    def _commit(self, lsn: LSN, commit_time: _dt.datetime | None) -> None:
        self._send_run()
        cur = self._cur
        try:
            if self.progress == "origin":
                cur.execute(
                    "SELECT pg_replication_origin_xact_setup(%s::pg_lsn, %s)",
                    (str(lsn), commit_time or _dt.datetime.now(_dt.timezone.utc)),
                )
            else:
                cur.execute(
                    f"INSERT INTO {self._progress_table} (name, lsn, commit_time) "
                    "VALUES (%s, %s::pg_lsn, %s) ON CONFLICT (name) DO UPDATE SET "
                    "lsn = excluded.lsn, commit_time = excluded.commit_time, updated_at = now()",
                    (self.name, str(lsn), commit_time),
                )
            self._conn.commit()
        except psycopg2.Error as error:
            raise self._sql_error(
                error, lsn, f"COMMIT of the source transactions up to {lsn}"
            ) from error

    def _rollback(self) -> None:
        self._run = None
        if not self._conn.closed:
            self._conn.rollback()

    def _set_savepoint(self) -> None:
        self._cur.execute("SAVEPOINT replicant_transaction", [])

    def _release_savepoint(self, keep: bool) -> None:
        self._send_run()
        if keep:
            self._cur.execute("RELEASE SAVEPOINT replicant_transaction", [])
        else:
            self._cur.execute("ROLLBACK TO SAVEPOINT replicant_transaction", [])

    def close(self) -> None:
        """Roll back a batch not committed (a partial transaction), and disconnect."""
        self._abandon()
        if not self._conn.closed:
            self._conn.close()
