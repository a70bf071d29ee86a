"""Exactly once: mirror tables into SQLite, never applying a transaction twice.

replicant delivers at least once: after a crash, the server re-sends every
transaction after the last LSN it was told about, and a crash can come
after a transaction was applied but before the server heard of it. The
cure is to keep the position *with the data*: each transaction is applied
and its commit LSN stored in the same SQLite transaction. On start, the
stored LSN says where to resume, and a transaction at or before it is
recognised and skipped. Whatever happens, SQLite holds each transaction
exactly once.

    CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
    CREATE PUBLICATION mirror_pub FOR TABLE accounts;

    python examples/sqlite_mirror.py "dbname=app" mirror.db

Every published table is mirrored into one SQLite table, ``rows``, keyed by
table name and primary key; ``progress`` holds the LSN and the number of
transactions applied.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from typing import Any

import replicant
from replicant import LSN, Begin, Commit, Delete, Event, Insert, Row, Truncate, Update

SLOT = "sqlite_mirror"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    relation TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (relation, key)
);
CREATE TABLE IF NOT EXISTS progress (
    slot TEXT PRIMARY KEY,
    lsn TEXT NOT NULL,
    transactions INTEGER NOT NULL
);
"""


def as_json(row: Row) -> str:
    # Row.to_dict() gives lossless JSON forms (decimals and dates as text).
    return json.dumps(row.to_dict(), sort_keys=True)


class Mirror:
    """The change callback: applies each transaction to SQLite at its commit."""

    def __init__(self, path: str) -> None:
        # isolation_level=None: we open and commit transactions ourselves.
        # check_same_thread=False: the callback runs in replicant's reader
        # thread, not the one that opened the file; only that thread uses
        # the connection from then on.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")  # a commit survives a power cut
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT lsn FROM progress WHERE slot = ?", (SLOT,)).fetchone()
        self.applied: LSN | None = LSN(row[0]) if row else None
        self.pending: list[Event] = []

    def __call__(self, event: Event) -> LSN | None:
        if isinstance(event, Begin):
            self.pending = []
        elif isinstance(event, (Insert, Update, Delete, Truncate)):
            self.pending.append(event)
        elif isinstance(event, Commit):
            if self.applied is not None and event.lsn <= self.applied:
                # Already in SQLite: the server re-sent it because our
                # acknowledgement never reached it. Skip, and acknowledge.
                return event.lsn
            self.apply(event.lsn, self.pending)
            self.pending = []
            return event.lsn
        return None  # nothing is durable before the commit

    def apply(self, lsn: LSN, changes: list[Event]) -> None:
        """Apply one transaction and record its LSN, atomically."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for change in changes:
                self.apply_change(cur, change)
            cur.execute(
                "INSERT INTO progress (slot, lsn, transactions) VALUES (?, ?, 1)"
                " ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn,"
                " transactions = transactions + 1",
                (SLOT, str(lsn)),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self.applied = lsn

    def apply_change(self, cur: sqlite3.Cursor, change: Event) -> None:
        if isinstance(change, Truncate):
            for schema, table in change.tables:
                cur.execute("DELETE FROM rows WHERE relation = ?", (f"{schema}.{table}",))
            return
        assert isinstance(change, (Insert, Update, Delete))
        relation = f"{change.schema}.{change.table}"
        if isinstance(change, (Update, Delete)):
            # The old key: an update may have changed the key itself.
            cur.execute(
                "DELETE FROM rows WHERE relation = ? AND key = ?", (relation, as_json(change.key))
            )
        if isinstance(change, (Insert, Update)):
            new_key = as_json(change.new.project(change.relation.key_columns))
            cur.execute(
                "INSERT OR REPLACE INTO rows (relation, key, data) VALUES (?, ?, ?)",
                (relation, new_key, as_json(change.new)),
            )


def main(dsn: str, path: str) -> None:
    mirror = Mirror(path)
    options: dict[str, Any] = {}
    if mirror.applied is not None:
        # Resume after what SQLite holds, even if the slot lags behind it.
        options["start_lsn"] = mirror.applied
    print(f"mirror: resuming after {mirror.applied}", flush=True)
    replicant.run(dsn, slot=SLOT, publication="mirror_pub", callback=mirror, **options)
    print(f"mirror: stopped; SQLite holds everything up to {mirror.applied}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: sqlite_mirror.py DSN SQLITE_FILE")
    main(sys.argv[1], sys.argv[2])
