"""PostgresSink: exactly once into another PostgreSQL, proven against real servers.

The target is a second database on the shared cluster where one server will
do, and a second :class:`~replicant.cluster.LocalCluster` where the test
stops the target or kills the consumer (``REPLICANT_KILLS`` sets how many
kills the kill test makes: 5 by default, ``REPLICANT_KILLS=20`` for the full count).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicant import LSN, UNCHANGED, Consumer, Delete, Update
from replicant.cluster import LocalCluster
from replicant.sinks import PostgresSink, SinkError, SinkWriter

from .conftest import Database, _database_name
from .helpers import Recorder, confirmed_flush, running, wait_for
from .sink_workload import SOURCE_DDL, Workload, kill_loop, kills

ROOT = Path(__file__).resolve().parent.parent

# Types whose every value must survive the trip, as the source's text, cast.
TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE typed (
    id int PRIMARY KEY,
    n numeric, n2 numeric(10, 2), f8 float8, f4 real, b bool, t text, vc varchar(10),
    by bytea, j json, jb jsonb, ia int[], ta text[], r int4range, tr tstzrange,
    ts timestamp, tz timestamptz, d date, iv interval, u uuid, ip inet, p point,
    m mood, big text, c5 char(5), bits bit(3), ca char(3)[], vb varbit
);
-- Out of line and uncompressed: an update that leaves it alone does not send it.
ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL;
"""

TYPED_ROWS = [
    "(1, 'NaN', 12.5, 'Infinity', '-Infinity', true, 'tab\tnew\nline \\ back', 'short',"
    " '\\x00ff5c0a', '{\"a\": 1, \"a\": 2}', '{\"k\": [1, null]}', '[0:2]={1,2,3}',"
    " '{\"a,b\",NULL,\"c\\\"d\"}', '[1,10)', '[2024-01-01 00:00+00,infinity)',"
    " 'infinity', '-infinity', '0044-03-15 BC', '1 year 2 mons 3 days 04:05:06.789',"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.0.0.1/8', '(1.5,2)', 'happy',"
    " repeat('toast', 5000), 'ab', B'101', '{abc,de}', B'10110')",
    "(2, '123456789012345678901234567890.000000000001', NULL, 'NaN', 1.5, NULL, '', NULL,"
    " '', 'null', 'null', '{}', '{}', 'empty', NULL, '294276-12-31 23:59:59',"
    " '2000-01-01 00:00+05:30', '5874897-12-31', '-178000000 years', NULL, '::1', NULL,"
    " 'sad', NULL, 'abcde', B'010', NULL, B'')",
]


def make_target(cluster: LocalCluster, request: pytest.FixtureRequest) -> Database:
    """A new database in ``cluster``; its replication origin (named after it) dropped after."""
    target = Database(cluster, _database_name(request) + "_t")
    cluster.create_database(target.dbname)

    def drop() -> None:
        target.drop()
        if cluster.running:
            # Origins belong to the cluster, not to a database.
            cluster.execute(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
                "WHERE roname = %s",
                (target.dbname,),
            )

    request.addfinalizer(drop)
    return target


def sink_for(target: Database, **options: Any) -> PostgresSink:
    """A sink into ``target`` whose origin is named after it (origins are cluster-wide)."""
    options.setdefault("name", target.dbname)
    return PostgresSink(target.dsn, **options)


@pytest.fixture
def target(db: Database, request: pytest.FixtureRequest) -> Database:
    """A second database on the same cluster as ``db``."""
    return make_target(db.cluster, request)


def table_rows(db: Database, table: str) -> list[str]:
    return [r[0] for r in db.query(f"SELECT t::text FROM {table} t ORDER BY 1")]


def stream_until(
    source: Database,
    sink: PostgresSink,
    slot: str,
    done: Callable[[], object],
    *,
    flush_interval: float = 0.1,
    **consumer_args: Any,
) -> SinkWriter:
    """Stream ``slot`` into ``sink`` until ``done()``; stop cleanly; return the writer."""
    writer = SinkWriter(sink, flush_interval=flush_interval)
    consumer = writer.consumer(
        source.dsn, slot=slot, publication="pub", status_interval=0.2, **consumer_args
    )
    with writer, running(consumer):
        wait_for(lambda: done() or not consumer.running, 60, "the target to catch up")
    return writer


def target_position(target: Database) -> LSN:
    row = target.query(
        "SELECT (SELECT pg_replication_origin_progress(roname, true) FROM pg_replication_origin "
        "WHERE roname = %s)::text",
        target.dbname,
    )
    return LSN(row[0][0] or "0/0")


def source_end(source: Database) -> LSN:
    return LSN(source.query("SELECT pg_current_wal_lsn()::text")[0][0])


# --- values, TOAST, the statements


def test_every_value_arrives_as_the_source_has_it(db: Database, target: Database) -> None:
    for database in (db, target):
        database.execute(TYPES_DDL)
    db.execute("CREATE PUBLICATION pub FOR TABLE typed")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute("SELECT pg_create_logical_replication_slot('check', 'pgoutput')")
    for row in TYPED_ROWS:
        db.execute(f"INSERT INTO typed VALUES {row}")
    # An update leaving the TOASTed column alone: the server does not send
    # it, and the target must keep its copy.
    db.execute("UPDATE typed SET n = n + 1, m = 'ok' WHERE id = 1")
    db.execute("UPDATE typed SET id = 3 WHERE id = 2")  # the key itself changes
    db.execute("INSERT INTO typed (id, t) VALUES (4, 'gone soon')")
    db.execute("DELETE FROM typed WHERE id = 4")
    end = source_end(db)
    sink = sink_for(target)
    stream_until(db, sink, "s", lambda: sink.resume_lsn() and sink.resume_lsn() >= end)
    assert table_rows(target, "typed") == table_rows(db, "typed")
    # The stream did carry the TOASTed column as UNCHANGED in that update.
    recorder = Recorder()
    with running(Consumer(db.dsn, slot="check", publication="pub", callback=recorder)):
        wait_for(lambda: any(isinstance(e, Delete) for e in recorder.events), 30, "the stream")
    first_update = recorder.of(Update)[0]
    assert first_update.new.raw("big") is UNCHANGED
    assert target.query("SELECT length(big), m::text FROM typed WHERE id = 1") == [(25000, "ok")]


def test_truncate_and_restart_identity(db: Database, target: Database) -> None:
    for database in (db, target):
        database.execute("CREATE TABLE a (id serial PRIMARY KEY, v text)")
        database.execute("CREATE TABLE b (id int PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE a, b")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute("INSERT INTO a (v) SELECT 'x' || g FROM generate_series(1, 50) g")
    db.execute("INSERT INTO b SELECT g, 'y' FROM generate_series(1, 50) g")
    db.execute("TRUNCATE a, b RESTART IDENTITY")
    db.execute("INSERT INTO b VALUES (7, 'after')")
    end = source_end(db)
    sink = sink_for(target)
    stream_until(db, sink, "s", lambda: (sink.resume_lsn() or 0) >= end)
    assert table_rows(target, "a") == []
    assert table_rows(target, "b") == ["(7,after)"]


def test_replica_identity_full_without_a_key_on_the_target(db: Database, target: Database) -> None:
    db.execute("CREATE TABLE f (a int, j json, t text)")
    db.execute("ALTER TABLE f REPLICA IDENTITY FULL")
    target.execute("CREATE TABLE f (a int, j json, t text)")
    db.execute("CREATE PUBLICATION pub FOR TABLE f")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute(
        "INSERT INTO f VALUES (1, '{\"x\": 1}', 'a'), (1, '{\"x\": 1}', 'a'), (2, NULL, NULL)"
    )
    db.execute("UPDATE f SET t = 'b' WHERE a = 2")
    db.execute("DELETE FROM f WHERE ctid = (SELECT min(ctid) FROM f WHERE a = 1)")
    end = source_end(db)
    sink = sink_for(target)
    stream_until(db, sink, "s", lambda: (sink.resume_lsn() or 0) >= end)
    assert table_rows(target, "f") == table_rows(db, "f")


def test_mapped_and_created_tables(db: Database, target: Database) -> None:
    db.execute("CREATE TABLE src (id bigint PRIMARY KEY, v numeric(8, 3), tags text[])")
    db.execute("CREATE PUBLICATION pub FOR TABLE src")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute("INSERT INTO src VALUES (1, 2.5, '{a,b}')")
    end = source_end(db)
    with pytest.raises(SinkError, match=r"mirror\.dst .*does not exist on the target"):
        sink = sink_for(target, table_map={"public.src": "mirror.dst"})
        stream_until(db, sink, "s", lambda: False)
    assert target_position(target) == 0
    sink = sink_for(target, table_map={"public.src": "mirror.dst"}, create_tables=True)
    stream_until(db, sink, "s", lambda: (sink.resume_lsn() or 0) >= end)
    assert target.query("SELECT id, v::text, tags FROM mirror.dst") == [(1, "2.500", ["a", "b"])]
    assert target.query(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'mirror.dst'::regclass AND attnum > 0 ORDER BY attnum"
    ) == [("bigint",), ("numeric(8,3)",), ("text[]",)]


# --- the position: resume, skip, batch


def audit_ddl() -> str:
    return """
    CREATE TABLE audit (seq bigserial PRIMARY KEY, txlog_id bigint NOT NULL,
                        target_xid xid8 DEFAULT pg_current_xact_id());
    CREATE FUNCTION audit_txlog() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO audit (txlog_id) VALUES (NEW.id); RETURN NEW; END $$;
    CREATE TRIGGER audit_txlog AFTER INSERT ON txlog FOR EACH ROW EXECUTE FUNCTION audit_txlog();
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit is append-only'; END $$;
    CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    """


def assert_applied_once(source: Database, target: Database) -> None:
    """Every source transaction (one txlog row each) applied on the target exactly once."""
    twice = target.query("SELECT txlog_id, count(*) FROM audit GROUP BY 1 HAVING count(*) > 1")
    assert twice == [], f"applied more than once: {twice[:10]}"
    applied = [r[0] for r in target.query("SELECT txlog_id FROM audit ORDER BY 1")]
    committed = [r[0] for r in source.query("SELECT id FROM txlog ORDER BY 1")]
    assert applied == committed


def test_a_slot_behind_the_target_gets_nothing_applied_twice(
    db: Database, target: Database
) -> None:
    for database in (db, target):
        database.execute("CREATE TABLE txlog (id bigint PRIMARY KEY, note text)")
    target.execute(audit_ddl())
    db.execute("CREATE PUBLICATION pub FOR TABLE txlog")
    # Two slots from the same point: the second lags behind everything the
    # first one applies, so it re-sends what the target holds.
    db.execute("SELECT pg_create_logical_replication_slot('ahead', 'pgoutput')")
    db.execute("SELECT pg_create_logical_replication_slot('behind', 'pgoutput')")
    for i in range(1, 31):
        db.execute("INSERT INTO txlog VALUES (%s, 'first')", i)
    end = source_end(db)
    sink = sink_for(target)
    stream_until(db, sink, "ahead", lambda: (sink.resume_lsn() or 0) >= end)
    held = target_position(target)
    assert held >= end
    assert sink.transactions == 30

    for i in range(31, 41):
        db.execute("INSERT INTO txlog VALUES (%s, 'second')", i)
    end = source_end(db)
    # By hand, without start_lsn: the server sends every transaction again.
    again = sink_for(target)
    assert again.resume_lsn() == held
    writer = SinkWriter(again, flush_interval=0.1)
    consumer = Consumer(
        db.dsn, slot="behind", publication="pub", callback=writer, on_stop=writer.on_stop
    )
    writer.attach(consumer)
    with writer, running(consumer):
        wait_for(lambda: (again.resume_lsn() or 0) >= end, 30, "the second run")
    assert again.transactions == 10  # the first 30 were skipped
    assert_applied_once(db, target)
    # Through writer.consumer() the stream starts at the target's position.
    third = sink_for(target)
    made = SinkWriter(third).consumer(db.dsn, slot="behind", publication="pub")
    assert made._start_lsn == third.resume_lsn()
    third.close()


def test_small_transactions_are_batched(db: Database, target: Database) -> None:
    for database in (db, target):
        database.execute("CREATE TABLE txlog (id bigint PRIMARY KEY, note text)")
    target.execute(audit_ddl())
    db.execute("CREATE PUBLICATION pub FOR TABLE txlog")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    for i in range(1, 201):
        db.execute("INSERT INTO txlog VALUES (%s, 'x')", i)
    end = source_end(db)
    sink = sink_for(target, max_batch=50)
    stream_until(db, sink, "s", lambda: (sink.resume_lsn() or 0) >= end, flush_interval=30)
    assert_applied_once(db, target)
    # 200 source transactions in 4 target transactions of 50.
    assert target.query("SELECT count(DISTINCT target_xid) FROM audit") == [(4,)]


def test_progress_table_where_origins_are_not_allowed(db: Database, target: Database) -> None:
    role = target.dbname[:50] + "_app"
    target.execute(f"CREATE ROLE {role} LOGIN")
    target.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    target.execute("CREATE TABLE t (id int PRIMARY KEY)")
    target.execute(f"GRANT ALL ON t TO {role}")
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute("INSERT INTO t SELECT generate_series(1, 10)")
    end = source_end(db)
    try:
        with pytest.raises(SinkError, match="may not use replication origins"):
            PostgresSink(target.dsn_with(user=role), progress="origin")
        sink = PostgresSink(target.dsn_with(user=role), name="mine")
        assert sink.progress == "table"
        stream_until(db, sink, "s", lambda: (sink.resume_lsn() or 0) >= end)
        stored = target.query("SELECT name, lsn::text FROM replicant_progress")
        assert stored == [("mine", str(sink.resume_lsn()))]
        assert PostgresSink(target.dsn_with(user=role), name="mine").resume_lsn() == LSN(
            stored[0][1]
        )
        assert len(table_rows(target, "t")) == 10
    finally:
        target.execute("DROP TABLE IF EXISTS replicant_progress")
        target.execute(f"DROP OWNED BY {role}")
        target.close()
        db.cluster.execute(f"DROP ROLE {role}")


# --- faults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_target_unreachable_at_start() -> None:
    started = time.monotonic()
    with pytest.raises(SinkError, match="cannot connect to the target database"):
        PostgresSink(f"host=127.0.0.1 port={free_port()} dbname=x user=x", connect_timeout=2)
    assert time.monotonic() - started < 10


def test_a_constraint_violation_stops_with_the_lsn_and_the_statement(
    db: Database, target: Database
) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    target.execute("CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v < 100))")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    before = source_end(db)
    db.execute("INSERT INTO t VALUES (1, 1)")
    good = source_end(db)  # at or after that commit's end (the cluster is shared)
    db.execute("INSERT INTO t SELECT g, g FROM generate_series(2, 150) g")  # 100 violates
    db.execute("INSERT INTO t VALUES (1000, 1)")
    for _attempt in range(2):  # and again after a restart: it stops at the same change
        sink = sink_for(target)
        writer = SinkWriter(sink, flush_interval=0)
        consumer = writer.consumer(db.dsn, slot="s", publication="pub", status_interval=0.2)
        with writer, pytest.raises(SinkError) as caught:
            consumer.run()
        error = caught.value
        assert error.sqlstate == "23514"
        assert error.statement is not None
        assert error.statement.startswith('INSERT INTO "public"."t"') and "'100'" in error.statement
        assert error.lsn is not None and error.lsn >= good
        assert "t_v_check" in str(error) and str(error.lsn) in str(error)
        assert before < target_position(target) <= good
        # Nothing from the failing transaction on is acknowledged (idle
        # advance may move the slot over other databases' WAL before it).
        assert (confirmed_flush(db, "s") or 0) <= error.lsn
        assert table_rows(target, "t") == ["(1,1)"]


def test_target_lost_mid_stream_fails_and_resumes_with_nothing_skipped(
    db: Database, make_cluster: Callable[..., LocalCluster], request: pytest.FixtureRequest
) -> None:
    other = make_cluster()
    target = make_target(other, request)
    for database in (db, target):
        database.execute("CREATE TABLE txlog (id bigint PRIMARY KEY, note text)")
    target.execute(audit_ddl())
    db.execute("CREATE PUBLICATION pub FOR TABLE txlog")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    for i in range(1, 21):
        db.execute("INSERT INTO txlog VALUES (%s, 'before')", i)
    sink = sink_for(target)
    writer = SinkWriter(sink, flush_interval=0)
    consumer = writer.consumer(db.dsn, slot="s", publication="pub", status_interval=0.2)
    consumer.start()
    wait_for(lambda: sink.transactions == 20, 30, "the first transactions")
    target.close()
    other.stop("immediate", keep_data=True)
    lost_from = source_end(db)
    db.execute("INSERT INTO txlog VALUES (21, 'while the target is down')")
    with pytest.raises(SinkError, match=r"connection to the target was lost|target database"):
        consumer.join(30)
    writer.close()
    held = sink.resume_lsn()
    # Acknowledged: at most up to where the failed transaction starts.
    assert (confirmed_flush(db, "s") or 0) <= lost_from
    assert held is not None and held <= lost_from
    other.start()
    for i in range(22, 31):
        db.execute("INSERT INTO txlog VALUES (%s, 'after')", i)
    end = source_end(db)
    resumed = sink_for(target)
    stream_until(db, resumed, "s", lambda: (resumed.resume_lsn() or 0) >= end)
    assert_applied_once(db, target)


# --- SIGKILL at random moments: exactly once all the same

CONSUMER = """
import sys
from replicant.sinks import PostgresSink, SinkWriter
source, slot, target, name = sys.argv[1:5]
sink = PostgresSink(target, name=name, max_batch=50)
with SinkWriter(sink, flush_interval=0.05) as writer:
    writer.consumer(source, slot=slot, publication="pub", status_interval=0.1).run()
"""


def test_killed_at_random_moments_each_transaction_applied_once(
    db: Database, make_cluster: Callable[..., LocalCluster], request: pytest.FixtureRequest
) -> None:
    other = make_cluster()
    target = make_target(other, request)
    for database in (db, target):
        database.execute(SOURCE_DDL)
    target.execute(audit_ddl())
    db.execute("CREATE PUBLICATION pub FOR TABLE items, docs, txlog")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    seed = random.randrange(1 << 30)
    workload = Workload(db.dsn, count=200, seed=seed)
    killed = kill_loop(
        CONSUMER,
        [db.dsn, "s", target.dsn, target.dbname],
        workload=workload,
        position=lambda: target_position(target),
        source_end=lambda: source_end(db),
        count=kills(5),
        seed=seed,
    )
    assert killed == kills(5)
    for table in ("items", "docs", "txlog"):
        assert table_rows(target, table) == table_rows(db, table), f"{table} (seed {seed})"
    assert_applied_once(db, target)
    assert len(table_rows(db, "txlog")) == workload.done


def test_stream_to_postgresql_from_the_command_line(db: Database, target: Database) -> None:
    for database in (db, target):
        database.execute("CREATE TABLE t (id int PRIMARY KEY, v jsonb)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    db.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    db.execute(
        """INSERT INTO t SELECT g, jsonb_build_object('g', g) FROM generate_series(1, 5) g"""
    )
    end = str(source_end(db))
    params = target.cluster.params_for(target.dbname)
    url = f"postgresql://{params['user']}@{params['host']}:{params['port']}/{target.dbname}"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "replicant", "stream", db.dsn, "--slot", "s"]
    command += ["--publication", "pub", "--to", url, "--end", end]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert table_rows(target, "t") == table_rows(db, "t")
        # The position is the replication origin named after the slot.
        held = target.query("SELECT pg_replication_origin_progress('replicant_s', true)::text")
        assert LSN(held[0][0]) <= LSN(end)
    finally:
        target.cluster.execute("SELECT pg_replication_origin_drop('replicant_s')")
