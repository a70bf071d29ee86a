"""SQLiteSink: exactly once into SQLite, its value mapping, and SIGKILL at random moments.

``REPLICANT_KILLS`` sets how many kills the kill test makes (5 by default;
``REPLICANT_KILLS=20`` for the full count).
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicant import LSN, ConfigurationError, Consumer, sinks
from replicant.sinks import (
    JsonLinesSink,
    Sink,
    SinkError,
    SinkWriter,
    SQLiteSink,
    open_sink,
    register_scheme,
    sink_scheme,
)

from .conftest import Database
from .helpers import confirmed_flush, running, wait_for
from .sink_workload import SOURCE_DDL, Workload, kill_loop, kills

ROOT = Path(__file__).resolve().parent.parent


def source_end(source: Database) -> LSN:
    return LSN(source.query("SELECT pg_current_wal_lsn()::text")[0][0])


def stream_until(
    source: Database, sink: SQLiteSink, slot: str, done: Callable[[], object], **args: Any
) -> None:
    writer = SinkWriter(sink, flush_interval=0.1)
    consumer = writer.consumer(
        source.dsn, slot=slot, publication="pub", status_interval=0.2, **args
    )
    with writer, running(consumer):
        wait_for(lambda: done() or not consumer.running, 60, "SQLite to catch up")


def caught_up(sink: SQLiteSink, source: Database) -> Callable[[], bool]:
    end = source_end(source)
    return lambda: (sink.resume_lsn() or 0) >= end


def lite(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_the_value_mapping(db: Database, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE typed (id int PRIMARY KEY, i8 bigint, b bool, f8 float8, nan float8, "
        "n numeric, t text, by bytea, jb jsonb, j json, ia int[], ts timestamptz, inf timestamp, "
        "d date, iv interval, r int4range, u uuid, big text)"
    )
    db.execute("ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL")  # sent only if changed
    db.execute("CREATE PUBLICATION pub FOR TABLE typed")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute(
        "INSERT INTO typed VALUES (1, 9223372036854775807, true, 1.5, 'NaN', 1.50, 'héllo', "
        "'\\x00ff', '{\"b\": 1, \"a\": [true, null]}', '{\"a\": 1, \"a\": 2}', '{1,NULL,3}', "
        "'2024-05-06 07:08:09.5+00', 'infinity', '2024-02-29', '1 mon 2 days 03:00:00', "
        "'[1,5)', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', repeat('x', 10000))"
    )
    db.execute("INSERT INTO typed (id) VALUES (2)")
    db.execute("UPDATE typed SET f8 = -0.25 WHERE id = 1")  # big: unchanged, TOASTed
    path = tmp_path / "m.db"
    sink = SQLiteSink(path)
    stream_until(db, sink, "s", caught_up(sink, db))
    with lite(path) as conn:
        row = conn.execute("SELECT * FROM typed WHERE id = 1").fetchone()
        kinds = conn.execute(
            "SELECT typeof(i8), typeof(b), typeof(f8), typeof(nan), typeof(n), typeof(by) "
            "FROM typed WHERE id = 1"
        ).fetchone()
        empty = conn.execute("SELECT * FROM typed WHERE id = 2").fetchone()
    assert row == (
        1,
        9223372036854775807,
        1,
        -0.25,
        "NaN",
        "1.50",
        "héllo",
        b"\x00\xff",
        '{"a": [true, null], "b": 1}',
        '{"a": 1, "a": 2}',
        "[1,null,3]",
        "2024-05-06T07:08:09.500000+00:00",
        "infinity",
        "2024-02-29",
        "P1M2DT3H",
        "[1,5)",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "x" * 10000,
    )
    assert kinds == ("integer", "integer", "real", "text", "text", "blob")
    assert empty == (2,) + (None,) * 17


def test_a_missing_table_and_a_constraint_violation(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    before = source_end(db)
    db.execute("INSERT INTO t VALUES (1, 1)")
    good = source_end(db)  # at or after that commit's end (the cluster is shared)
    db.execute("INSERT INTO t VALUES (2, 200)")
    path = tmp_path / "m.db"
    with pytest.raises(SinkError, match=r"table t .*does not exist"):
        stream_until(db, SQLiteSink(path, create_tables=False), "s", lambda: False)
    with lite(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER CHECK (v < 100))")
    sink = SQLiteSink(path)
    writer = SinkWriter(sink, flush_interval=0)
    consumer = writer.consumer(db.dsn, slot="s", publication="pub", status_interval=0.2)
    with writer, pytest.raises(SinkError, match="CHECK constraint failed") as caught:
        consumer.run()
    error = caught.value
    assert error.lsn is not None and error.lsn >= good
    assert error.statement is not None and "INSERT INTO" in error.statement
    assert "200" in error.statement
    assert (confirmed_flush(db, "s") or 0) <= error.lsn  # nothing from it on
    with lite(path) as conn:
        assert conn.execute("SELECT * FROM t").fetchall() == [(1, 1)]
        (stored,) = conn.execute("SELECT lsn FROM replicant_progress").fetchone()
    assert before < LSN(stored) <= good


def test_a_slot_behind_sqlite_gets_nothing_applied_twice(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE txlog (id bigint PRIMARY KEY, kind text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE txlog")
    db.execute("SELECT pg_create_logical_replication_slot('ahead', 'pgoutput')")
    db.execute("SELECT pg_create_logical_replication_slot('behind', 'pgoutput')")
    for i in range(1, 21):
        db.execute("INSERT INTO txlog VALUES (%s, 'first')", i)
    path = tmp_path / "m.db"
    sink = SQLiteSink(path)
    stream_until(db, sink, "ahead", caught_up(sink, db))
    held = sink.resume_lsn()
    for i in range(21, 26):
        db.execute("INSERT INTO txlog VALUES (%s, 'second')", i)
    again = SQLiteSink(path)
    assert again.resume_lsn() == held
    writer = SinkWriter(again, flush_interval=0.1)
    consumer = Consumer(
        db.dsn, slot="behind", publication="pub", callback=writer, on_stop=writer.on_stop
    )
    writer.attach(consumer)
    done = caught_up(again, db)
    with writer, running(consumer):
        wait_for(done, 30, "the second run")
    assert again.transactions == 5
    with lite(path) as conn:
        assert conn.execute("SELECT transactions FROM replicant_progress").fetchone() == (25,)
        assert conn.execute("SELECT count(*) FROM txlog").fetchone() == (25,)


# --- SIGKILL at random moments

CONSUMER = """
import sys
from replicant.sinks import SQLiteSink, SinkWriter
source, slot, path = sys.argv[1:4]
sink = SQLiteSink(path, max_batch=50)
with SinkWriter(sink, flush_interval=0.05) as writer:
    writer.consumer(source, slot=slot, publication="pub", status_interval=0.1).run()
"""

SQLITE_DDL = """
CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT, n INTEGER);
CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, version INTEGER);
CREATE TABLE txlog (id INTEGER PRIMARY KEY, kind TEXT);
CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, txlog_id INTEGER NOT NULL);
CREATE TRIGGER audit_txlog AFTER INSERT ON txlog BEGIN
    INSERT INTO audit (txlog_id) VALUES (NEW.id);
END;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
"""


def test_killed_at_random_moments_each_transaction_applied_once(
    db: Database, tmp_path: Path
) -> None:
    db.execute(SOURCE_DDL)
    db.execute("CREATE PUBLICATION pub FOR TABLE items, docs, txlog")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    path = tmp_path / "mirror.db"
    with lite(path) as conn:
        conn.executescript(SQLITE_DDL)

    def position() -> LSN:
        with lite(path) as conn:
            try:
                row = conn.execute("SELECT lsn FROM replicant_progress").fetchone()
            except sqlite3.OperationalError:  # not created yet
                return LSN(0)
        return LSN(row[0]) if row else LSN(0)

    seed = random.randrange(1 << 30)
    workload = Workload(db.dsn, count=200, seed=seed)
    killed = kill_loop(
        CONSUMER,
        [db.dsn, "s", str(path)],
        workload=workload,
        position=position,
        source_end=lambda: source_end(db),
        count=kills(5),
        seed=seed,
    )
    assert killed == kills(5)
    with lite(path) as conn:
        for table, columns in (
            ("items", "id, payload, n"),
            ("docs", "id, body, version"),
            ("txlog", "id, kind"),
        ):
            mirrored = conn.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()
            source = db.query(f"SELECT {columns} FROM {table} ORDER BY id")
            assert mirrored == [tuple(r) for r in source], f"{table} (seed {seed})"
        twice = conn.execute(
            "SELECT txlog_id, count(*) FROM audit GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
        assert twice == [], f"applied more than once (seed {seed}): {twice[:10]}"
        applied = [r[0] for r in conn.execute("SELECT txlog_id FROM audit ORDER BY 1")]
        transactions = conn.execute("SELECT transactions FROM replicant_progress").fetchone()
    assert applied == list(range(1, workload.done + 1))
    assert transactions == (workload.done,)


# --- the command line, and open_sink


def replicant_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "replicant", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_stream_to_sqlite_from_the_command_line(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g")
    db.execute("UPDATE t SET v = 'new' WHERE id = 2")
    end = str(source_end(db))
    path = tmp_path / "cli.db"
    url = f"sqlite:///{path}"
    assert url.startswith("sqlite:////")  # an absolute path
    result = replicant_cli(
        "stream", db.dsn, "--slot", "s", "--publication", "pub", "--to", url, "--end", end
    )
    assert result.returncode == 0, result.stderr
    with lite(path) as conn:
        assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == [
            (1, "v1"),
            (2, "new"),
            (3, "v3"),
            (4, "v4"),
            (5, "v5"),
        ]
        (name, lsn) = conn.execute("SELECT name, lsn FROM replicant_progress").fetchone()
    assert name == "s" and LSN(lsn) <= LSN(end)
    assert (confirmed_flush(db, "s") or 0) <= LSN(end)
    # Run again: nothing new, nothing applied twice.
    result = replicant_cli(
        "stream", db.dsn, "--slot", "s", "--publication", "pub", "--to", url, "--end", end
    )
    assert result.returncode == 0, result.stderr
    with lite(path) as conn:
        assert conn.execute("SELECT transactions FROM replicant_progress").fetchone() == (2,)


def test_stream_to_a_bad_url(db: Database) -> None:
    for url, message in (
        ("kafkaa://x/y", "no sink for kafkaa://"),
        ("sqlite://x", "sqlite:///PATH"),
    ):
        result = replicant_cli("stream", db.dsn, "--slot", "s", "--publication", "pub", "--to", url)
        assert result.returncode != 0
        assert message in result.stderr


def test_open_sink_picks_the_sink_by_url(tmp_path: Path) -> None:
    sink = open_sink(f"sqlite:///{tmp_path}/a.db", slot="myslot")
    assert isinstance(sink, SQLiteSink) and sink.name == "myslot"
    assert sink.path == f"{tmp_path}/a.db"
    sink.close()
    lines = open_sink(str(tmp_path / "out.jsonl"), fsync=False)
    assert isinstance(lines, JsonLinesSink) and lines.path == str(tmp_path / "out.jsonl")
    lines.close()
    assert isinstance(open_sink("-"), JsonLinesSink)
    assert sink_scheme("postgresql://u@h/db") == "postgresql"
    assert sink_scheme("postgres://h/db") == "postgres"
    assert sink_scheme("some/dir/file.jsonl") == "lines"
    with pytest.raises(ConfigurationError, match="no sink for nope://"):
        open_sink("nope://x")

    made: list[tuple[str, dict[str, Any]]] = []

    def factory(url: str, **options: Any) -> Sink:
        made.append((url, options))
        return JsonLinesSink(None)

    register_scheme("test-scheme", factory)
    try:
        open_sink("test-scheme://where", slot="s1", extra=1)
    finally:
        sinks._SCHEMES.pop("test-scheme")
    assert made == [("test-scheme://where", {"slot": "s1", "extra": 1})]
