"""Exactly once: mirror tables into SQLite, never applying a transaction twice.

replicant delivers at least once: after a crash, the server re-sends every
transaction after the last LSN it was told about. ``SQLiteSink`` keeps the
position *with the data*: each source transaction is applied and its
commit LSN stored in the same SQLite transaction, so on start the stream
resumes right after what SQLite holds, and a transaction it holds already
is skipped. Whatever happens, SQLite holds each transaction exactly once.
An UPDATE that leaves a large (TOASTed) column alone leaves SQLite's copy
of it alone too.

    CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
    CREATE PUBLICATION mirror_pub FOR TABLE accounts;

    python examples/sqlite_mirror.py "dbname=app" mirror.db

Each published table becomes a SQLite table of the same name (created on
first sight); ``replicant_progress`` holds the position and the number of
transactions applied. Ctrl-C stops cleanly.
"""

from __future__ import annotations

import sys

from replicant.sinks import SinkWriter, SQLiteSink

SLOT = "sqlite_mirror"


def main(dsn: str, path: str) -> None:
    sink = SQLiteSink(path, name=SLOT)
    print(f"mirror: resuming after {sink.resume_lsn()}", flush=True)
    # Batches of source transactions, committed to SQLite (and then
    # acknowledged to the server) every half second.
    with SinkWriter(sink, flush_interval=0.5) as writer:
        writer.consumer(dsn, slot=SLOT, publication="mirror_pub").run()
    print(f"mirror: stopped; SQLite holds everything up to {sink.resume_lsn()}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: sqlite_mirror.py DSN SQLITE_FILE")
    main(sys.argv[1], sys.argv[2])
