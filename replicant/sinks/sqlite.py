"""Exactly once into SQLite: each source transaction applied with its position, atomically.

The value mapping (SQLite has five storage classes):

=====================================  =====================================
source value                           SQLite value
=====================================  =====================================
NULL                                   NULL
smallint, integer, bigint, oid         INTEGER
boolean                                INTEGER 0 or 1
real, double precision                 REAL (NaN as the TEXT ``'NaN'``:
                                       SQLite turns a NaN REAL into NULL)
bytea                                  BLOB
text, varchar, char, name              TEXT
numeric                                TEXT, the digits as the server printed
                                       them (``'1.50'``, ``'NaN'``)
json, jsonb                            TEXT, the JSON as the server sent it
arrays                                 TEXT, a JSON array of the elements'
                                       forms below
everything else                        TEXT, replicant's lossless JSON form
                                       of it (dates and timestamps ISO 8601
                                       or ``'infinity'``; intervals ISO 8601
                                       durations; ranges, uuid, inet, and
                                       values Python cannot hold as the
                                       server's text)
=====================================  =====================================

Tables are created as needed (``create_tables``, the default) with
declared types INTEGER, REAL, BLOB or TEXT following that mapping (so
SQLite's type affinity changes nothing) and the source's replica identity
as primary key.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import sqlite3
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from replicant.changes import (
    UNCHANGED,
    Delete,
    Insert,
    Relation,
    Row,
    Truncate,
    Update,
    json_value,
)
from replicant.lsn import LSN
from replicant.sinks._apply import TransactionalSink, same_shape
from replicant.sinks.base import SinkError

__all__ = ["SQLiteSink"]

logger = logging.getLogger("replicant")

_INTEGER = {20, 21, 23, 26, 16}  # int8, int2, int4, oid, bool
_REAL = {700, 701}
_BLOB = {17}
_TEXT_AS_IS = {25, 1043, 1042, 19, 18}  # text, varchar, bpchar, name, "char"
_JSON = {114, 3802}
_INT64 = range(-(2**63), 2**63)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _declared(type_oid: int) -> str:
    if type_oid in _INTEGER:
        return "INTEGER"
    if type_oid in _REAL:
        return "REAL"
    if type_oid in _BLOB:
        return "BLOB"
    return "TEXT"


def sqlite_value(row: Row, name: str) -> Any:
    """The SQLite value of column ``name`` of ``row`` (the module's table says which)."""
    return sqlite_values(row, (name,))[0]


def sqlite_values(row: Row, names: Sequence[str]) -> list[Any]:
    """The SQLite values of the columns ``names`` of ``row``, in that order."""
    out: list[Any] = []
    for name in names:
        value = row[name]
        kind = type(value)
        if value is None:
            out.append(None)
        elif kind is int:
            out.append(value if value in _INT64 else str(value))
        elif kind is str and row.type_oid(name) not in _JSON:
            out.append(value)
        elif kind is bool:
            out.append(int(value))
        elif kind is float:
            out.append("NaN" if math.isnan(value) else value)
        elif kind is bytes:
            out.append(value)
        elif kind is Decimal:
            out.append(format(value, "f"))  # the digits as the server printed them
        else:
            form = _json_form(row, name, value)
            if isinstance(form, str):
                out.append(form)
            elif isinstance(form, dict) and set(form) == {"$json"}:
                out.append(form["$json"])
            else:
                out.append(json.dumps(form, separators=(",", ":"), ensure_ascii=False))
    return out


def _json_form(row: Row, name: str, value: Any) -> Any:
    """Column ``name``'s lossless JSON form: what ``row.to_dict()[name]`` is, for one column.

    Like :meth:`Row.to_dict`, from the value as received where the row's
    layout has a form for it (json, numeric, ranges, infinite timestamps,
    intervals), else from the Python value.
    """
    layout = row._layout
    forms = layout.json
    index = layout.index[name]
    form = forms[index] if forms is not None else None
    raw = row._raw[index]
    if form is None or raw is None or raw is UNCHANGED:
        return json_value(value)
    try:
        return form(raw, value)
    except Exception as exc:  # a form parses the raw value: bad input
        raise row._error(name, exc) from exc


class SQLiteSink(TransactionalSink):
    """Applies each source transaction to the SQLite database at ``path`` exactly once.

    Each table goes to the SQLite table of its name (``schema.table`` for
    schemas other than ``public``; ``table_map`` maps ``"schema.table"`` to
    another name); it is created from the source's columns unless
    ``create_tables`` is false (then a missing table is a
    :class:`SinkError`). Rows are found by the source's replica identity;
    an unchanged TOASTed column is left as SQLite has it. Values follow the
    mapping at the top of ``replicant/sinks/sqlite.py`` (and the guide).

    The position (the end LSN of the last source transaction applied) and
    a count of transactions go into the table ``replicant_progress``, row
    ``name``, in the same SQLite transaction as the changes, so SQLite holds
    each source transaction once whatever crashes; :meth:`resume_lsn` is
    where the stream starts again. Source transactions are batched into
    one SQLite transaction until the writer flushes or ``max_batch`` of
    them; ``synchronous`` is SQLite's ``PRAGMA synchronous`` (``FULL``, the
    default, makes each commit survive a power cut). The database is in WAL
    mode, so readers see the last commit while the sink writes.
    """

    target_name = "SQLite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table_map: Mapping[str, str] | None = None,
        name: str = "replicant",
        create_tables: bool = True,
        max_batch: int = 1000,
        synchronous: str = "FULL",
        strict: bool = True,
    ) -> None:
        super().__init__(max_batch=max_batch)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise SinkError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = os.fspath(path)
        self.name = name
        self.table_map = dict(table_map or {})
        self.create_tables = create_tables
        self.strict = strict
        self._tables: dict[tuple[str, str], tuple[Relation, str, tuple[str, ...]]] = {}
        self._inserts: dict[tuple[str, tuple[str, ...]], str] = {}  # statements made
        try:
            # isolation_level=None: the sink opens and commits transactions
            # itself. check_same_thread=False: the writer calls it from more
            # than one thread, one call at a time.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replicant_progress ("
                "name TEXT PRIMARY KEY, lsn TEXT NOT NULL, lsn_int INTEGER NOT NULL, "
                "transactions INTEGER NOT NULL, commit_time TEXT)"
            )
            row = self._db.execute(
                "SELECT lsn FROM replicant_progress WHERE name = ?", (name,)
            ).fetchone()
        except sqlite3.Error as error:
            raise SinkError(f"cannot open the SQLite database {self.path}: {error}") from error
        self._position = self._durable = LSN(row[0]) if row else LSN(0)
        self._cur = self._db.cursor()

    def __repr__(self) -> str:
        return f"<SQLiteSink {self.path} {self.name} at {self._position}>"

    # -- tables

    def _name_of(self, relation: Relation) -> str:
        key = f"{relation.schema}.{relation.table}"
        mapped = self.table_map.get(key)
        if mapped is not None:
            return mapped
        return relation.table if relation.schema == "public" else key

    def _table(self, relation: Relation) -> tuple[Relation, str, tuple[str, ...]]:
        key = (relation.schema, relation.table)
        known = self._tables.get(key)
        if known is None or known[0] is not relation:
            if known is None or not same_shape(known[0], relation):
                known = self._describe(relation)
            # Kept with the newest description: the next change of it is found at once.
            known = self._tables[key] = (relation, known[1], known[2])
        return known

    def _relation(self, event: Relation) -> None:
        self._table(event)

    def _describe(self, relation: Relation) -> tuple[Relation, str, tuple[str, ...]]:
        name = self._name_of(relation)
        columns = {r[1] for r in self._cur.execute(f"PRAGMA table_info({_ident(name)})")}
        if not columns:
            if not self.create_tables:
                raise SinkError(
                    f"table {name} (for {relation.schema}.{relation.table}) does not exist in "
                    f"{self.path}: create it, or pass create_tables=True"
                )
            definitions = [f"{_ident(c.name)} {_declared(c.type_oid)}" for c in relation.columns]
            keys = relation.key_columns
            if keys and relation.replica_identity in ("default", "index"):
                definitions.append(f"PRIMARY KEY ({', '.join(_ident(k) for k in keys)})")
            self._cur.execute(f"CREATE TABLE {_ident(name)} ({', '.join(definitions)})")
            columns = {c.name for c in relation.columns}
        missing = [c.name for c in relation.columns if c.name not in columns]
        if missing:
            # A column added on the source: added here too (SQLite adds columns cheaply).
            for column in relation.columns:
                if column.name in missing:
                    self._cur.execute(
                        f"ALTER TABLE {_ident(name)} ADD COLUMN "
                        f"{_ident(column.name)} {_declared(column.type_oid)}"
                    )
        return relation, _ident(name), tuple(c.name for c in relation.columns)

    # -- applying changes

    def _open(self) -> None:
        self._cur.execute("BEGIN IMMEDIATE")

    def _apply_change(self, event: Insert | Update | Delete | Truncate) -> None:
        try:
            self._apply_one(event)
        except sqlite3.Error as error:
            raise SinkError(
                f"applying the source change at {event.lsn} failed in SQLite: {error}\n"
                f"statement: {self._last_statement}",
                lsn=event.lsn,
                statement=self._last_statement,
            ) from error

    _last: tuple[str, list[Any]] = ("", [])

    @property
    def _last_statement(self) -> str:
        sql, params = self._last  # rendered only for a message
        return f"{sql} with {params!r}"[:2000]

    def _run(self, sql: str, params: list[Any]) -> int:
        self._last = (sql, params)
        self._cur.execute(sql, params)
        return self._cur.rowcount

    def _apply_one(self, event: Insert | Update | Delete | Truncate) -> None:
        if isinstance(event, Truncate):
            for relation in event.relations:
                self._run(f"DELETE FROM {self._table(relation)[1]}", [])
            return
        relation, table, columns = self._table(event.relation)
        if isinstance(event, Insert):
            row = event.new
            if row.columns == columns and UNCHANGED not in row._raw:
                names = columns  # the usual case, without a look at each column
            else:
                names = tuple(c for c in columns if row.raw(c) is not UNCHANGED)
            sql = self._inserts.get((table, names))
            if sql is None:
                marks = ", ".join("?" * len(names))
                sql = self._inserts[(table, names)] = (
                    f"INSERT INTO {table} ({', '.join(_ident(c) for c in names)}) VALUES ({marks})"
                )
            self._run(sql, sqlite_values(row, names))
            return
        key_row = event.old if event.old is not None else event.new
        assert key_row is not None
        where: list[str] = []
        params: list[Any] = []
        for column in relation.key_columns:
            if column not in key_row.columns or key_row.raw(column) is UNCHANGED:
                continue
            value = sqlite_value(key_row, column)
            if value is None:
                where.append(f"{_ident(column)} IS NULL")
            else:
                where.append(f"{_ident(column)} = ?")
                params.append(value)
        if not where:
            raise SinkError(
                f"no key to find the row of {relation.schema}.{relation.table}: the table "
                "needs a primary key or a replica identity",
                lsn=event.lsn,
            )
        condition = " AND ".join(where)
        if relation.replica_identity == "full" or not relation.key_columns:
            condition = f"rowid = (SELECT rowid FROM {table} WHERE {condition} LIMIT 1)"
        if isinstance(event, Update):
            new = event.new
            names = tuple(c for c in columns if new.raw(c) is not UNCHANGED)
            if not names:
                return
            sets = ", ".join(f"{_ident(c)} = ?" for c in names)
            count = self._run(
                f"UPDATE {table} SET {sets} WHERE {condition}",
                sqlite_values(new, names) + params,
            )
            what = "update"
        else:
            count = self._run(f"DELETE FROM {table} WHERE {condition}", params)
            what = "delete"
        if count == 0:
            message = (
                f"the row to {what} in {table} (source change at {event.lsn}) is not in SQLite"
            )
            if self.strict:
                raise SinkError(message, lsn=event.lsn, statement=self._last_statement)
            logger.warning("%s; skipped", message)

    # -- committing

    def _commit(self, lsn: LSN, commit_time: _dt.datetime | None) -> None:
        self._cur.execute(
            "INSERT INTO replicant_progress (name, lsn, lsn_int, transactions, commit_time) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET lsn = excluded.lsn, "
            "lsn_int = excluded.lsn_int, transactions = transactions + excluded.transactions, "
            "commit_time = excluded.commit_time",
            (
                self.name,
                str(lsn),
                int(lsn),
                self._batch,
                None if commit_time is None else commit_time.isoformat(),
            ),
        )
        self._cur.execute("COMMIT")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._cur.execute("ROLLBACK")

    def _set_savepoint(self) -> None:
        self._cur.execute("SAVEPOINT replicant_transaction")

    def _release_savepoint(self, keep: bool) -> None:
        if not keep:
            self._cur.execute("ROLLBACK TO replicant_transaction")
        self._cur.execute("RELEASE replicant_transaction")

    def close(self) -> None:
        """Roll back a batch not committed (a partial transaction) and close the file."""
        self._abandon()
        self._db.close()
