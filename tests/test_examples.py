"""Every program in examples/ runs (against one server version: more would add nothing),
and the API reference in docs/ builds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replicant import LSN
from replicant.cluster import Installation

from .conftest import ClusterPool, Database, DatabaseFactory, selected_installations
from .helpers import confirmed_flush

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


class Example:
    """One example program running in the background, its output collected line by line."""

    def __init__(self, name: str, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None and not condition():
                self._reader.join(5)
                pytest.fail(f"{what}: the example exited {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; output so far:\n{self.output}")
            time.sleep(0.05)

    def wait_for_text(self, text: str, count: int = 1, timeout: float = 20) -> None:
        self.wait_for(lambda: self.output.count(text) >= count, repr(text), timeout)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 30) -> int:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def run_example() -> Iterator[Callable[..., Example]]:
    started: list[Example] = []

    def start(name: str, *args: str) -> Example:
        example = Example(name, *args)
        started.append(example)
        return example

    yield start
    for example in started:
        example.kill()


def _database(
    make_db: DatabaseFactory,
    pool: ClusterPool,
    request: pytest.FixtureRequest,
    pick: Callable[[Installation], bool],
) -> Database:
    installs = [i for i in selected_installations(request.config) if pick(i)]
    if not installs:
        pytest.skip("no suitable PostgreSQL installation")
    return make_db(pool.get(installs[0]))


@pytest.fixture
def example_db(
    make_db: DatabaseFactory, cluster_pool: ClusterPool, request: pytest.FixtureRequest
) -> Database:
    """A fresh database on the newest server, with the examples' notes table and publication."""
    database = _database(make_db, cluster_pool, request, lambda i: True)
    database.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    database.execute("CREATE PUBLICATION notes_pub FOR TABLE notes")
    return database


@pytest.fixture
def wal2json_example_db(
    make_db: DatabaseFactory, cluster_pool: ClusterPool, request: pytest.FixtureRequest
) -> Database:
    """A fresh database on a server that has wal2json (or a skip)."""
    return _database(make_db, cluster_pool, request, lambda i: i.has_plugin("wal2json"))


def wait_slot_active(db: Database, slot: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = db.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", slot)
        if rows and rows[0][0]:
            return
        assert time.monotonic() < deadline, f"slot {slot} never became active"
        time.sleep(0.05)


def last_commit_end(db: Database) -> LSN:
    return LSN(db.query("SELECT pg_current_wal_lsn()::text")[0][0])


def test_print_changes(example_db: Database, run_example: Callable[..., Example]) -> None:
    example = run_example("print_changes.py", example_db.dsn)
    wait_slot_active(example_db, "print_changes")
    example_db.execute("INSERT INTO notes (body) VALUES ('hello')")
    example_db.execute("UPDATE notes SET body = 'hello again'")
    example.wait_for_text("Commit(", count=2)
    assert example.stop(signal.SIGINT) == 0
    assert "Insert(" in example.output and "'hello'" in example.output
    assert "Update(" in example.output and "'hello again'" in example.output

    # A second run resumes after what the first one printed.
    example_db.execute("DELETE FROM notes")
    again = run_example("print_changes.py", example_db.dsn)
    again.wait_for_text("Commit(")
    assert again.stop(signal.SIGINT) == 0
    assert "Delete(" in again.output and "Insert(" not in again.output


def test_service_stops_cleanly_on_sigterm(
    example_db: Database, run_example: Callable[..., Example]
) -> None:
    service = run_example("service.py", example_db.dsn)
    service.wait_for_text("service: started")
    wait_slot_active(example_db, "service")
    for body in ("a", "b", "c"):
        example_db.execute("INSERT INTO notes (body) VALUES (%s)", body)
    service.wait_for_text("service: insert public.notes", count=3)
    service.wait_for_text("service: healthy")
    end = last_commit_end(example_db)
    assert service.stop(signal.SIGTERM) == 0
    assert "service: stopped cleanly at" in service.output
    assert "'insert public.notes': 3" in service.output
    assert confirmed_flush(example_db, "service") >= end - 1024  # at the last commit


def test_transactions(example_db: Database, run_example: Callable[..., Example]) -> None:
    example = run_example("transactions.py", example_db.dsn)
    wait_slot_active(example_db, "transactions")
    conn = example_db.connect()
    with conn, conn.cursor() as cur:  # one transaction
        cur.execute("INSERT INTO notes (body) VALUES ('one'), ('two')")
        cur.execute("UPDATE notes SET body = 'three' WHERE body = 'two'")
    conn.close()
    example_db.execute("DELETE FROM notes WHERE body = 'one'")
    example.wait_for_text("committed at", count=2)
    assert example.stop() == 0
    summaries = [line for line in example.lines if line.startswith("transaction ")]
    assert summaries[0].endswith(": 2 insert, 1 update"), summaries
    assert summaries[1].endswith(": 1 delete"), summaries


def test_sqlite_mirror_applies_each_transaction_once(
    example_db: Database, run_example: Callable[..., Example], tmp_path: Path
) -> None:
    db = example_db
    db.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric, notes text)"
    )
    # Out of line, uncompressed: an update that leaves notes alone does not send them.
    db.execute("ALTER TABLE accounts ALTER COLUMN notes SET STORAGE EXTERNAL")
    db.execute("CREATE PUBLICATION mirror_pub FOR TABLE accounts")
    mirror_file = str(tmp_path / "mirror.db")

    def applied() -> tuple[int, str | None]:
        if not Path(mirror_file).exists():
            return 0, None
        with sqlite3.connect(mirror_file) as lite:
            try:
                row = lite.execute("SELECT transactions, lsn FROM replicant_progress").fetchone()
            except sqlite3.OperationalError:  # not created yet
                return 0, None
        return (row[0], row[1]) if row else (0, None)

    def transactions(first: int, last: int) -> int:
        """Run them; return how many transactions that was."""
        count = 0
        for i in range(first, last + 1):
            # A TOASTed value that the updates below leave alone.
            db.execute(
                "INSERT INTO accounts VALUES (%s, %s, %s, repeat(%s, 3000))",
                i,
                f"owner {i}",
                i * 10,
                f"n{i}",
            )
            count += 1
            if i % 3 == 0:
                db.execute("UPDATE accounts SET balance = balance + 0.5 WHERE id = %s", i - 1)
                count += 1
            if i % 5 == 0:
                db.execute("DELETE FROM accounts WHERE id = %s", i - 4)
                count += 1
        return count

    mirror = run_example("sqlite_mirror.py", db.dsn, mirror_file)
    mirror.wait_for_text("mirror: resuming after None")
    wait_slot_active(db, "sqlite_mirror")
    total = transactions(1, 10)
    mirror.wait_for(lambda: applied()[0] == total, "the first transactions")
    # A crash right after SQLite committed: the server was (most likely) told
    # nothing yet, so it still holds those transactions for us.
    mirror.kill()
    stored = LSN(applied()[1] or "0/0")
    assert confirmed_flush(db, "sqlite_mirror") <= stored

    total += transactions(11, 20)
    resumed = run_example("sqlite_mirror.py", db.dsn, mirror_file)
    resumed.wait_for_text(f"mirror: resuming after {stored}")
    resumed.wait_for(lambda: applied()[0] >= total, "the rest")
    end = db.query("SELECT pg_current_wal_lsn()::text")[0][0]
    resumed.wait_for(lambda: confirmed_flush(db, "sqlite_mirror") >= LSN(end), "the ack")
    assert resumed.stop() == 0
    assert "SQLite holds everything up to" in resumed.output
    assert applied()[0] == total  # each transaction applied exactly once

    with sqlite3.connect(mirror_file) as lite:
        mirrored = sorted(lite.execute("SELECT id, owner, balance, notes FROM accounts"))
    source = db.query("SELECT id, owner, balance::text, notes FROM accounts ORDER BY id")
    assert mirrored == [tuple(r) for r in source]
    # The updates left the TOASTed notes alone: SQLite kept its text, not a
    # marker for "unchanged".
    assert all(notes.startswith("n") and "unchanged" not in notes for *_, notes in mirrored)


def test_wal2json_stream(
    wal2json_example_db: Database, run_example: Callable[..., Example]
) -> None:
    db = wal2json_example_db
    db.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    example = run_example("wal2json_stream.py", db.dsn)
    wait_slot_active(db, "wal2json_example")
    db.execute("INSERT INTO notes (body) VALUES ('from wal2json')")
    db.execute("DELETE FROM notes")
    example.wait_for_text("delete public.notes")
    assert example.stop() == 0
    assert "insert public.notes: {'id': 1, 'body': 'from wal2json'}" in example.output
    assert "delete public.notes: key {'id': 1}" in example.output


def test_api_reference_builds(tmp_path: Path) -> None:
    out = tmp_path / "api.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build_api.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    for name in ("class `Consumer`", "`Consumer.acknowledge(", "class `LSN`", "## `replicant.cli`"):
        assert name in text, name


def test_snapshot_to_sqlite_copies_then_follows(
    example_db: Database, run_example: Callable[..., Example], tmp_path: Path
) -> None:
    db = example_db
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
    db.execute(
        "INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.50 FROM generate_series(1, 500) g"
    )
    db.execute("CREATE PUBLICATION accounts_pub FOR TABLE accounts")
    path = str(tmp_path / "accounts.db")

    def mirrored() -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as lite:
            return sorted(lite.execute("SELECT id, owner, balance FROM accounts").fetchall())

    def source() -> list[tuple[Any, ...]]:
        return [tuple(r) for r in db.query("SELECT id, owner, balance::text FROM accounts")]

    example = run_example("snapshot_to_sqlite.py", db.dsn, path)
    example.wait_for_text("snapshot: 500 rows")
    assert mirrored() == sorted(source())
    db.execute("UPDATE accounts SET balance = 0 WHERE id <= 10")
    db.execute("DELETE FROM accounts WHERE id > 490")
    db.execute("INSERT INTO accounts VALUES (1000, 'new', 2.25)")
    example.wait_for_text("applied transaction", count=3)
    assert example.stop() == 0
    assert mirrored() == sorted(source())
    # Started again: no second snapshot, the stream resumes after what SQLite holds.
    db.execute("DELETE FROM accounts WHERE id = 1")
    again = run_example("snapshot_to_sqlite.py", db.dsn, path)
    again.wait_for_text("applied transaction")
    assert again.stop() == 0
    assert "snapshot:" not in again.output
    assert mirrored() == sorted(source())
