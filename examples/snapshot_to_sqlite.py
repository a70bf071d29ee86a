"""Copy a table into SQLite, then follow its changes: a snapshot, then the stream.

    CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
    CREATE PUBLICATION accounts_pub FOR TABLE accounts;

    python examples/snapshot_to_sqlite.py "dbname=app" accounts.db

The first run creates the slot with a snapshot: every existing row arrives as
a ``Read`` event, framed by ``SnapshotBegin``/``SnapshotEnd``, and is written
into SQLite in one transaction with the snapshot's position. Only then does
the stream start, from exactly that position: each change after it is
applied in its own SQLite transaction together with its commit LSN, so a
restart resumes right after what SQLite holds and applies nothing twice.

A crash during the snapshot leaves no slot behind (replicant names the slot
only once the snapshot was delivered), and SQLite's snapshot transaction was
never committed, so the next run simply takes the snapshot again.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import replicant
from replicant import (
    LSN,
    Begin,
    Commit,
    Delete,
    Event,
    Insert,
    Read,
    Row,
    SnapshotBegin,
    SnapshotEnd,
    Update,
)

SLOT = "snapshot_to_sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT, balance TEXT);
CREATE TABLE IF NOT EXISTS progress (lsn TEXT);
"""


def values(row: Row) -> tuple[Any, ...]:
    data = row.to_dict()  # numeric as its exact text
    return (data["id"], data["owner"], data["balance"])


class Mirror:
    """The callback: the snapshot in one SQLite transaction, then one per source transaction."""

    def __init__(self, path: str) -> None:
        # The callback runs in replicant's threads (one at a time), not in this one.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT lsn FROM progress").fetchone()
        self.stored = LSN(row[0]) if row else None
        self.skipping = False

    def __call__(self, event: Event) -> LSN | None:
        db = self.db
        if isinstance(event, SnapshotBegin) and event.table is None:
            db.execute("BEGIN")
            db.execute("DELETE FROM accounts")  # the snapshot replaces whatever was here
        elif isinstance(event, Read):
            db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?)", values(event.new))
        elif isinstance(event, SnapshotEnd) and event.table is None:
            db.execute("DELETE FROM progress")
            db.execute("INSERT INTO progress VALUES (?)", (str(event.lsn),))
            db.execute("COMMIT")
            self.stored = event.lsn
            print(f"snapshot: {event.rows} rows at {event.lsn}; following changes", flush=True)
        elif isinstance(event, Begin):
            # A transaction SQLite already holds (sent again after a crash).
            self.skipping = (
                self.stored is not None
                and event.final_lsn is not None
                and (event.final_lsn < self.stored)
            )
            if not self.skipping:
                db.execute("BEGIN")
        elif self.skipping:
            return None
        elif isinstance(event, (Insert, Update)):
            if isinstance(event, Update) and event.old is not None:
                db.execute("DELETE FROM accounts WHERE id = ?", (event.old["id"],))
            db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?)", values(event.new))
        elif isinstance(event, Delete):
            db.execute("DELETE FROM accounts WHERE id = ?", (event.old["id"],))
        elif isinstance(event, Commit):
            db.execute("DELETE FROM progress")
            db.execute("INSERT INTO progress VALUES (?)", (str(event.lsn),))
            db.execute("COMMIT")
            self.stored = event.lsn
            print(f"applied transaction up to {event.lsn}", flush=True)
            return event.lsn
        return None


def main() -> None:
    dsn, path = sys.argv[1], sys.argv[2]
    mirror = Mirror(path)
    print(f"mirror: resuming after {mirror.stored}", flush=True)
    replicant.run(
        dsn,
        slot=SLOT,
        publication="accounts_pub",
        callback=mirror,
        # Taken only when the slot is created: a later run just streams.
        snapshot="initial",
    )


if __name__ == "__main__":
    main()
