"""The consumer: run(), Consumer, the reader, keepalive and supervisor threads."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

import replicant
from replicant import LSN, ConfigurationError, ConnectionLost, SlotError
from replicant.changes import Begin, Commit, Event, Insert
from replicant.runtime import Backoff, Consumer, StatusTimer, WalProgress

from .conftest import Database
from .helpers import (
    Recorder,
    assert_no_threads_left,
    confirmed_flush,
    wait_for,
)

# --- pure parts


def test_wal_progress_acknowledges_forward_only() -> None:
    progress = WalProgress(LSN("0/100"))
    progress.receive(LSN("0/500"))
    assert progress.acknowledge(LSN("0/200")) == LSN("0/200")
    assert progress.acknowledge(LSN("0/150")) == LSN("0/200")  # never backward
    assert progress.acknowledge("0/300") == LSN("0/300")
    assert progress.acknowledge(LSN("0/900")) == LSN("0/500")  # never above received
    assert progress.position() == (LSN("0/500"), LSN("0/500"), LSN("0/500"))
    with pytest.raises(ConfigurationError, match="return an LSN"):
        progress.acknowledge(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        progress.acknowledge(True)


def test_wal_progress_never_below_start() -> None:
    progress = WalProgress(LSN("1/0"))
    progress.receive(LSN("1/10"))
    progress.acknowledge(LSN("0/10"))
    assert progress.position().flushed == LSN("1/0")


def test_wal_progress_idle_advance() -> None:
    progress = WalProgress(LSN("0/100"))
    progress.receive(LSN("0/200"))
    # An event at 0/180 delivered but not acknowledged: no advance.
    progress.keepalive(LSN("0/300"), in_transaction=False, last_delivered=LSN("0/180"))
    assert progress.position().flushed == LSN("0/100")
    progress.acknowledge(LSN("0/180"))
    # Inside a transaction: no advance.
    progress.keepalive(LSN("0/300"), in_transaction=True, last_delivered=LSN("0/180"))
    assert progress.position().flushed == LSN("0/180")
    # Everything acknowledged, no transaction open: follow the WAL end.
    progress.keepalive(LSN("0/300"), in_transaction=False, last_delivered=LSN("0/180"))
    assert progress.position() == (LSN("0/300"), LSN("0/300"), LSN("0/300"))


def test_wal_progress_idle_advance_off() -> None:
    progress = WalProgress(LSN("0/100"), idle_advance=False)
    progress.keepalive(LSN("0/300"), in_transaction=False, last_delivered=0)
    assert progress.position() == (LSN("0/300"), LSN("0/100"), LSN("0/100"))


def test_status_timer_with_frozen_clock() -> None:
    with freeze_time("2026-01-01 00:00:00") as frozen:
        timer = StatusTimer(10.0, clock=time.time)
        assert not timer.due() and timer.time_left() == pytest.approx(10.0)
        frozen.tick(4)
        assert timer.time_left() == pytest.approx(6.0)
        frozen.tick(6)
        assert timer.due() and timer.time_left() == 0
        timer.sent()
        assert not timer.due() and timer.time_left() == pytest.approx(10.0)
    with pytest.raises(ConfigurationError):
        StatusTimer(0)


def test_arguments_checked_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="publication"):
        Consumer("host=nowhere", slot="s", callback=print)
    with pytest.raises(ConfigurationError, match="slot name"):
        Consumer("host=nowhere", slot="Bad-Name", callback=print, publication="p")
    with pytest.raises(ConfigurationError, match="callable"):
        Consumer("host=nowhere", slot="s", callback=None, publication="p")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="status_interval"):
        Consumer("host=nowhere", slot="s", callback=print, publication="p", status_interval=0)


def test_decoder_argument_is_checked() -> None:
    from replicant.decoders import RawDecoder

    own = RawDecoder("test_decoding")
    consumer = Consumer("host=nowhere", slot="s", callback=print, decoder=own)
    assert consumer.plugin == "test_decoding" and consumer._decoder is own
    # plugin= naming the same plugin is allowed; another one conflicts.
    Consumer("host=nowhere", slot="s", callback=print, decoder=own, plugin="test_decoding")
    with pytest.raises(ConfigurationError, match="conflicts"):
        Consumer("host=nowhere", slot="s", callback=print, decoder=own, plugin="pgoutput")
    with pytest.raises(ConfigurationError, match="configure that decoder itself"):
        Consumer("host=nowhere", slot="s", callback=print, decoder=own, publication="p")
    with pytest.raises(ConfigurationError, match="configure that decoder itself"):
        Consumer("host=nowhere", slot="s", callback=print, decoder=own, options={"a": "b"})
    with pytest.raises(ConfigurationError, match="configure that decoder itself"):
        Consumer("host=nowhere", slot="s", callback=print, decoder=own, decode_values=False)
    with pytest.raises(ConfigurationError, match="Decoder shape"):
        Consumer("host=nowhere", slot="s", callback=print, decoder=object())  # type: ignore[arg-type]


def test_a_decoder_of_ones_own_streams(workload_db: Database) -> None:
    from replicant.decoders import Decoder, PgOutputDecoder

    class Counting:
        """A user's decoder: wraps pgoutput and counts payloads."""

        def __init__(self) -> None:
            self.inner = PgOutputDecoder("pub_a")
            self.plugin = "pgoutput"
            self.payloads = 0
            self.resets = 0

        def start_options(self, server_version: int) -> dict[str, str]:
            return self.inner.start_options(server_version)

        def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
            self.payloads += 1
            return self.inner.decode(data, wal_start, wal_end)

        def reset(self) -> None:
            self.resets += 1
            self.inner.reset()

        @property
        def in_transaction(self) -> bool:
            return self.inner.in_transaction

    db = workload_db
    own = Counting()
    assert isinstance(own, Decoder)
    seen: list[Event] = []
    consumer = Consumer(db.dsn, slot="app", callback=seen.append, decoder=own, status_interval=0.5)
    with consumer:
        wait_for(lambda: confirmed_flush(db, "app") is not None, what="the slot")
        db.execute("INSERT INTO a VALUES (1, 'x')")
        wait_for(lambda: any(isinstance(e, Commit) for e in seen), what="a commit")
    consumer.join(20)
    assert [type(e) for e in seen if isinstance(e, Insert)] == [Insert]
    assert own.payloads >= 3 and own.resets == 1


# --- helpers for the server tests


@pytest.fixture
def workload_db(db: Database) -> Database:
    db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE b (id int PRIMARY KEY, v text)")
    db.execute("CREATE PUBLICATION pub_a FOR TABLE a")
    return db


def consumer_for(db: Database, callback: Any, **kwargs: Any) -> Consumer:
    kwargs.setdefault("slot", "app")
    kwargs.setdefault("publication", "pub_a")
    kwargs.setdefault("status_interval", 0.5)
    # The slot is checked to stop exactly at what was acknowledged: without
    # idle advance, as the shared server's other WAL (a running-xacts record
    # every 15 s, other databases) would otherwise carry it a little further.
    kwargs.setdefault("idle_advance", False)
    return Consumer(db.dsn, callback=callback, **kwargs)


def create_slot(db: Database, slot: str = "app") -> None:
    db.query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", slot)


# --- delivery and acknowledgement


def test_events_in_order_and_acknowledged(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    for i in range(1, 51):
        db.execute("INSERT INTO a VALUES (%s, %s)", i, f"row {i}")
    db.execute("UPDATE a SET v = 'changed' WHERE id = 7")
    db.execute("DELETE FROM a WHERE id = 8")
    recorder = Recorder()
    # idle_advance off: the shared server's other databases move its WAL
    # end, which would otherwise (rightly) carry the slot past the commit.
    with consumer_for(db, recorder, idle_advance=False) as consumer:
        wait_for(lambda: len(recorder.commits()) == 52, what="52 commits")
        progress = consumer.progress
        stats = consumer.stats
    assert recorder.inserted_ids() == list(range(1, 51))
    kinds = [type(e).__name__ for e in recorder.events]
    assert kinds[:4] == ["Begin", "Relation", "Insert", "Commit"]
    assert kinds[-6:] == ["Begin", "Update", "Commit", "Begin", "Delete", "Commit"]
    lsns = [e.lsn for e in recorder.commits()]
    assert lsns == sorted(lsns)
    assert stats.transactions == 52 and stats.events == len(recorder.events)
    assert stats.bytes > 0 and stats.frames >= stats.events - 1
    assert progress.received >= recorder.commits()[-1].lsn
    # stop() returned: the slot confirmed exactly the last acknowledged LSN.
    assert confirmed_flush(db, "app") == recorder.commits()[-1].lsn
    assert_no_threads_left()


def test_run_stops_gracefully_on_ctrl_c(workload_db: Database) -> None:
    db = workload_db
    db.execute("INSERT INTO a VALUES (1, 'x')")  # before the slot: not delivered
    events: list[Event] = []

    def on_change(event: Event) -> LSN:
        events.append(event)
        if isinstance(event, Commit):
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C was pressed
        return event.lsn

    def writer() -> None:
        wait_for(lambda: confirmed_flush(db, "app_run") is not None, what="slot")
        db.execute("INSERT INTO a VALUES (2, 'y')")

    thread = threading.Thread(target=writer, name="test-writer")
    thread.start()
    try:
        replicant.run(
            db.dsn,
            slot="app_run",
            publication="pub_a",
            callback=on_change,
            status_interval=0.5,
            idle_advance=False,  # the slot is checked to stop at the last event
        )
    finally:
        thread.join()
    assert [e.new["id"] for e in events if isinstance(e, Insert)] == [2]
    assert confirmed_flush(db, "app_run") == events[-1].lsn
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert_no_threads_left()


def test_restart_after_graceful_stop_repeats_nothing(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a SELECT g, 'first' FROM generate_series(1, 10) g")
    first = Recorder()
    with consumer_for(db, first):
        wait_for(lambda: len(first.commits()) == 1)
    db.execute("INSERT INTO a SELECT g, 'second' FROM generate_series(11, 20) g")
    second = Recorder()
    with consumer_for(db, second):
        wait_for(lambda: len(second.commits()) == 1)
    assert first.inserted_ids() == list(range(1, 11))
    assert second.inserted_ids() == list(range(11, 21))


def test_unacknowledged_events_are_delivered_again(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'one')")
    db.execute("INSERT INTO a VALUES (2, 'two')")
    seen: list[Event] = []

    def acknowledge_first_only(event: Event) -> LSN | None:
        seen.append(event)
        commits = [e for e in seen if isinstance(e, Commit)]
        return event.lsn if len(commits) <= 1 else None

    with consumer_for(db, acknowledge_first_only):
        wait_for(lambda: sum(isinstance(e, Commit) for e in seen) == 2)
    again = Recorder()
    with consumer_for(db, again):
        wait_for(lambda: len(again.commits()) == 1)
    assert again.inserted_ids() == [2]


def test_callback_exception_comes_out_unchanged(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'ok')")
    db.execute("INSERT INTO a VALUES (2, 'boom')")
    failure = RuntimeError("boom")
    acknowledged: list[LSN] = []

    def callback(event: Event) -> LSN:
        if isinstance(event, Insert) and event.new["v"] == "boom":
            raise failure
        acknowledged.append(event.lsn)
        return event.lsn

    with pytest.raises(RuntimeError) as info:
        replicant.run(db.dsn, slot="app", publication="pub_a", callback=callback)
    assert info.value is failure
    assert_no_threads_left()
    # Nothing after the last acknowledged LSN is confirmed: the first
    # transaction's commit, and not a byte further.
    wait_for(lambda: not db.query("SELECT active FROM pg_replication_slots")[0][0])
    assert confirmed_flush(db, "app") == acknowledged[-1]


def test_callback_returning_garbage_fails_clearly(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    with pytest.raises(ConfigurationError, match="return an LSN"):
        replicant.run(db.dsn, slot="app", publication="pub_a", callback=lambda e: 1.5)
    assert_no_threads_left()


# --- slots


def test_missing_slot_is_created(workload_db: Database) -> None:
    db = workload_db
    recorder = Recorder()
    with consumer_for(db, recorder, slot="fresh"):
        wait_for(lambda: confirmed_flush(db, "fresh") is not None, what="slot created")
        db.execute("INSERT INTO a VALUES (1, 'x')")
        wait_for(lambda: len(recorder.commits()) == 1)
    assert db.query("SELECT temporary FROM pg_replication_slots WHERE slot_name = 'fresh'") == [
        (False,)
    ]


def test_temporary_slot(workload_db: Database) -> None:
    db = workload_db
    recorder = Recorder()
    with consumer_for(db, recorder, slot="temp", temporary=True):
        wait_for(lambda: confirmed_flush(db, "temp") is not None, what="slot created")
    wait_for(lambda: confirmed_flush(db, "temp") is None, what="temporary slot gone")


def test_missing_slot_without_create(workload_db: Database) -> None:
    with pytest.raises(SlotError, match="does not exist"):
        replicant.run(
            workload_db.dsn, slot="absent", publication="pub_a", callback=print, create_slot=False
        )
    assert_no_threads_left()


def test_slot_of_another_plugin(workload_db: Database) -> None:
    db = workload_db
    create_slot(db, "other")
    with pytest.raises(SlotError, match="pgoutput"):
        replicant.run(db.dsn, slot="other", plugin="wal2json", callback=print)


# --- the keepalive thread


def test_slow_callback_keeps_the_connection(make_cluster: Callable[..., Any]) -> None:
    cluster = make_cluster(settings={"wal_sender_timeout": "1s"})
    cluster.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    cluster.execute("CREATE PUBLICATION pub_a FOR TABLE a")
    cluster.execute("SELECT pg_create_logical_replication_slot('app', 'pgoutput')")
    cluster.execute("INSERT INTO a VALUES (1, 'slow')")
    cluster.execute("INSERT INTO a VALUES (2, 'after')")
    seen: list[Event] = []

    def slow(event: Event) -> LSN:
        seen.append(event)
        if isinstance(event, Insert) and event.new["id"] == 1:
            time.sleep(3.0)  # three times wal_sender_timeout
        return event.lsn

    consumer = Consumer(
        cluster.dsn, slot="app", publication="pub_a", callback=slow, status_interval=0.3
    )
    with consumer:
        wait_for(lambda: sum(isinstance(e, Commit) for e in seen) == 2, timeout=30)
        pids = cluster.execute("SELECT active_pid FROM pg_replication_slots")
    assert consumer.stats.reconnects == 0
    assert pids and pids[0][0] is not None
    assert "terminating walsender" not in cluster.log_tail(200)


def test_reply_requested_is_answered_at_once(make_cluster: Callable[..., Any]) -> None:
    # The timer is far away (60 s); the server asks for a reply after half
    # of wal_sender_timeout. Only answers to requests keep it alive.
    cluster = make_cluster(settings={"wal_sender_timeout": "2s"})
    cluster.execute("CREATE PUBLICATION pub_a FOR ALL TABLES")
    recorder = Recorder()
    consumer = Consumer(
        cluster.dsn, slot="app", publication="pub_a", callback=recorder, status_interval=60
    )
    with consumer:
        time.sleep(5)
        stats = consumer.stats
        assert consumer.running
    assert stats.status_updates >= 2
    assert stats.keepalives >= stats.status_updates
    assert "terminating walsender" not in cluster.log_tail(200)


def test_idle_stream_sends_few_updates(workload_db: Database) -> None:
    recorder = Recorder()
    consumer = consumer_for(workload_db, recorder, status_interval=1.0)
    with consumer:
        time.sleep(5)
        stats = consumer.stats
    # About 5 / status_interval timed updates (plus the final one), not a
    # ping-pong of thousands.
    assert 3 <= stats.status_updates <= 8, stats
    # The server's keepalives follow its WAL, which other databases of the
    # shared server move too: a few dozen at most, not thousands.
    assert stats.keepalives < 50, stats


def test_filtered_writes_advance_the_slot(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    start = confirmed_flush(db, "app")
    assert start is not None
    recorder = Recorder()
    with consumer_for(db, recorder, status_interval=0.2, idle_advance=True):
        for i in range(20):
            db.execute("INSERT INTO b VALUES (%s, 'not published')", i)
        wait_for(lambda: (confirmed_flush(db, "app") or 0) > start, what="slot to advance")
    assert not [e for e in recorder.events if isinstance(e, Insert)]


def test_filtered_writes_do_not_advance_without_idle_advance(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    start = confirmed_flush(db, "app")
    recorder = Recorder()
    with consumer_for(db, recorder, status_interval=0.2, idle_advance=False) as consumer:
        for i in range(20):
            db.execute("INSERT INTO b VALUES (%s, 'not published')", i)
        time.sleep(1.5)
        assert consumer.stats.status_updates >= 3
    rows = [e for e in recorder.events if not isinstance(e, (Begin, Commit))]
    assert not rows
    if db.cluster.version >= 15:
        # 15+ sends nothing for a transaction that touched no published table.
        assert not recorder.events
        assert confirmed_flush(db, "app") == start
    else:
        # 13 and 14 send an empty Begin/Commit pair for each: the callback
        # acknowledged those commits, and the position went no further.
        commits = recorder.commits()
        assert len(commits) == 20
        assert recorder.acknowledged is not None
        assert confirmed_flush(db, "app") == recorder.acknowledged


# --- stopping


def test_stop_while_idle_is_prompt(workload_db: Database) -> None:
    recorder = Recorder()
    consumer = consumer_for(workload_db, recorder).start()
    wait_for(
        lambda: consumer.stats.keepalives > 0 or consumer.progress.received > 0,
        what="stream to start",
    )
    time.sleep(0.3)
    started = time.monotonic()
    stopper = threading.Thread(target=consumer.stop, name="test-stopper")
    stopper.start()
    stopper.join()
    assert time.monotonic() - started < 1.0
    consumer.join()
    assert not consumer.running
    assert_no_threads_left()


def test_stop_finishes_the_callback_in_flight(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    entered = threading.Event()
    finished: list[LSN] = []

    def slow(event: Event) -> LSN:
        if isinstance(event, Insert):
            entered.set()
            time.sleep(1.0)
        finished.append(event.lsn)
        return event.lsn

    consumer = consumer_for(db, slow).start()
    assert entered.wait(20)
    consumer.stop()
    consumer.join()
    # The insert's callback completed; the commit after it was never delivered.
    assert confirmed_flush(db, "app") == finished[-1]
    assert_no_threads_left()


def test_join_before_start_and_double_start(workload_db: Database) -> None:
    consumer = consumer_for(workload_db, Recorder())
    with pytest.raises(replicant.ReplicantError):
        consumer.join()
    consumer.start()
    with pytest.raises(replicant.ReplicantError):
        consumer.start()
    consumer.stop()
    consumer.join()


def test_end_lsn_stops_the_stream(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    (end,) = db.query("SELECT pg_current_wal_lsn()::text")[0]
    db.execute("INSERT INTO a VALUES (2, 'y')")
    recorder = Recorder()
    Consumer(db.dsn, slot="app", publication="pub_a", callback=recorder, end_lsn=end).run()
    assert recorder.inserted_ids() == [1]


def test_sigterm_stops_run_gracefully(workload_db: Database, tmp_path: Path) -> None:
    db = workload_db
    create_slot(db)
    script = tmp_path / "consume.py"
    script.write_text(
        textwrap.dedent(f"""
        import faulthandler, signal, sys, replicant
        faulthandler.register(signal.SIGUSR1)  # the test asks for stacks if we hang
        def on_change(event):
            print(type(event).__name__, event.lsn, flush=True)
            return event.lsn
        # idle_advance off: the shared server's other databases move its WAL
        # end, which would otherwise (rightly) carry the slot past the commit.
        replicant.run({db.dsn!r}, slot="app", publication="pub_a", callback=on_change,
                      status_interval=0.5, idle_advance=False)
        print("clean exit", flush=True)
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        db.execute("INSERT INTO a VALUES (1, 'x')")
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.split())
            if line.startswith("Commit"):
                break
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)
            time.sleep(1)
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"run() did not stop on SIGTERM; its threads:\n{err}")
    finally:
        process.kill()
    assert process.returncode == 0
    assert "clean exit" in out
    assert confirmed_flush(db, "app") == LSN(lines[-1][1])


# --- crash: killed while consuming


CRASH_CONSUMER = """
import json, os, sys, replicant
from replicant.changes import Insert, Commit

out = open(sys.argv[2], "a")

def on_change(event):
    if isinstance(event, Insert):
        out.write(json.dumps({"id": event.new["id"], "xid": event.xid}) + "\\n")
    elif isinstance(event, Commit):
        out.write(json.dumps({"commit": str(event.lsn), "xid": event.xid}) + "\\n")
    else:
        return None
    out.flush()
    os.fsync(out.fileno())
    return event.lsn

replicant.run(sys.argv[1], slot="crash", publication="pub_a", callback=on_change,
              status_interval=0.1)
"""


@pytest.mark.slow
def test_sigkill_loses_nothing(workload_db: Database, tmp_path: Path) -> None:
    db = workload_db
    create_slot(db, "crash")
    script = tmp_path / "crash_consumer.py"
    script.write_text(CRASH_CONSUMER)
    output = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    kills: list[LSN] = []  # the slot's confirmed position at each kill
    next_id = 1
    for _round in range(3):
        process = subprocess.Popen([sys.executable, str(script), db.dsn, str(output)], env=env)
        try:
            for _ in range(30):
                db.execute(
                    "INSERT INTO a SELECT g, 'r' FROM generate_series(%s, %s) g",
                    next_id,
                    next_id + 9,
                )
                next_id += 10
            time.sleep(0.3)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        wait_for(
            lambda: (
                not db.query("SELECT active FROM pg_replication_slots WHERE slot_name = 'crash'")[
                    0
                ][0]
            )
        )
        kills.append(confirmed_flush(db, "crash") or LSN(0))
    # A last run drains everything.
    process = subprocess.Popen([sys.executable, str(script), db.dsn, str(output)], env=env)
    try:
        (end,) = db.query("SELECT pg_current_wal_lsn()::text")[0]
        wait_for(
            lambda: (confirmed_flush(db, "crash") or 0) >= LSN(end), timeout=60, what="final drain"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    ids = [r["id"] for r in records if "id" in r]
    assert set(ids) == set(range(1, next_id)), "a committed row is missing"
    # Repeats only of transactions not acknowledged when a kill came.
    commits_by_xid: dict[int, list[LSN]] = {}
    for record in records:
        if "commit" in record:
            commits_by_xid.setdefault(record["xid"], []).append(LSN(record["commit"]))
    for xid, lsns in commits_by_xid.items():
        if len(lsns) > 1:
            assert any(lsns[0] > confirmed for confirmed in kills), (
                f"transaction {xid} at {lsns[0]} repeated though acknowledged"
            )


# --- reconnecting


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    for attempt, window in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0), (1000, 4.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(window / 2 <= d <= window for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered
    with pytest.raises(ConfigurationError):
        Backoff(0, 1)
    with pytest.raises(ConfigurationError):
        Backoff(2, 1)


def terminate_walsender(db: Database, slot: str) -> None:
    wait_for(
        lambda: bool(
            db.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", slot)[0][0]
        ),
        what="slot to be active",
    )
    db.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )


def test_terminated_walsender_reconnects_and_resumes(
    workload_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    db = workload_db
    create_slot(db)
    recorder = Recorder()
    consumer = consumer_for(db, recorder, backoff_initial=0.05, backoff_max=0.2)
    with consumer:
        db.execute("INSERT INTO a VALUES (1, 'before')")
        wait_for(lambda: len(recorder.commits()) == 1)
        terminate_walsender(db, "app")
        wait_for(lambda: consumer.stats.reconnects == 1, what="a reconnect")
        db.execute("INSERT INTO a VALUES (2, 'after')")
        wait_for(lambda: 2 in recorder.inserted_ids(), what="the row after the reconnect")
    assert recorder.inserted_ids() == [1, 2]
    assert any("reconnecting" in r.getMessage() for r in caplog.records if r.name == "replicant")
    assert confirmed_flush(db, "app") == recorder.commits()[-1].lsn


def test_no_reconnect_when_switched_off(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    consumer = consumer_for(db, Recorder(), reconnect=False).start()
    terminate_walsender(db, "app")
    with pytest.raises(replicant.ConnectionLost):
        consumer.join(20)
    assert consumer.stats.reconnects == 0
    assert_no_threads_left()


def test_max_retries_gives_up(workload_db: Database) -> None:
    db = workload_db
    port = db.cluster.params_for(db.dbname)["port"]
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    consumer = Consumer(
        db.dsn.replace(f"port={port}", f"port={dead_port}"),
        slot="app",
        publication="pub_a",
        callback=print,
        max_retries=2,
        retry_first_connect=True,  # otherwise the first failure ends it at once
        backoff_initial=0.01,
        backoff_max=0.02,
    ).start()
    with pytest.raises(replicant.ConnectionLost, match="could not connect"):
        consumer.join(20)
    assert consumer.stats.reconnects == 2
    assert_no_threads_left()


def test_slot_dropped_while_disconnected_is_fatal(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    recorder = Recorder()
    consumer = consumer_for(db, recorder, backoff_initial=0.5, backoff_max=0.5).start()
    terminate_walsender(db, "app")

    def drop() -> bool:
        try:
            db.execute("SELECT pg_drop_replication_slot('app')")
            return True
        except Exception:
            return False

    wait_for(drop, what="slot dropped")
    with pytest.raises(SlotError, match="dropped"):
        consumer.join(20)
    assert_no_threads_left()


def test_stop_from_the_callback_does_not_deadlock(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    db.execute("INSERT INTO a VALUES (2, 'y')")
    holder: list[Consumer] = []
    seen: list[Event] = []

    def callback(event: Event) -> LSN:
        seen.append(event)
        if isinstance(event, Commit):
            holder[0].stop()  # the default timeout: must not wait for itself
        return event.lsn

    consumer = consumer_for(db, callback)
    holder.append(consumer)
    consumer.start()
    consumer.join(20)
    assert sum(isinstance(e, Commit) for e in seen) == 1
    assert confirmed_flush(db, "app") == seen[-1].lsn
    assert_no_threads_left()


def test_on_stop_acknowledges_before_the_final_update(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    batch: list[LSN] = []
    holder: list[Consumer] = []

    def callback(event: Event) -> None:
        batch.append(event.lsn)  # processed later, in a batch: nothing returned

    def flush() -> None:
        holder[0].acknowledge(max(batch))

    consumer = consumer_for(db, callback, on_stop=flush)
    holder.append(consumer)
    with consumer:
        wait_for(lambda: len(batch) == 4, what="one transaction")
    assert confirmed_flush(db, "app") == max(batch)


def test_on_stop_returns_the_lsn_to_acknowledge(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    batch: list[LSN] = []

    def callback(event: Event) -> None:
        batch.append(event.lsn)  # processed later, in a batch: nothing returned

    consumer = consumer_for(db, callback, on_stop=lambda: max(batch))
    with consumer:
        wait_for(lambda: len(batch) == 4, what="one transaction")
        assert consumer.progress.flushed < max(batch)
    assert confirmed_flush(db, "app") == max(batch)


def test_on_batch_end_follows_each_batch_and_acknowledges_what_it_returns(
    workload_db: Database,
) -> None:
    db = workload_db
    create_slot(db)
    seen: list[Event] = []
    ends: list[int] = []  # how many events had been delivered at each batch end

    def batch_end() -> LSN | None:
        ends.append(len(seen))
        return seen[-1].lsn if seen and isinstance(seen[-1], Commit) else None

    consumer = consumer_for(db, seen.append, on_batch_end=batch_end)
    with consumer:
        db.execute("INSERT INTO a VALUES (1, 'x')")
        wait_for(lambda: ends and ends[-1] == len(seen) == 4, what="the batch end")
        last = seen[-1]
        assert isinstance(last, Commit)
        # Acknowledged from the batch end alone (the callback returns nothing).
        wait_for(lambda: consumer.progress.flushed == last.lsn, what="the acknowledgement")
        db.execute("INSERT INTO a VALUES (2, 'y')")
        wait_for(lambda: ends[-1] == len(seen) == 7, what="the second batch end")
    assert ends == sorted(ends) and all(ends)  # never for a batch without events
    assert confirmed_flush(db, "app") == seen[-1].lsn
    with pytest.raises(ConfigurationError, match="on_batch_end"):
        consumer_for(db, seen.append, on_batch_end=42)


def test_on_batch_end_failing_ends_the_stream(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    before = confirmed_flush(db, "app")
    failure = OSError(28, "No space left on device")

    def batch_end() -> None:
        raise failure

    # The callback acknowledges nothing itself (what it returned would count).
    consumer = consumer_for(db, lambda event: None, on_batch_end=batch_end)
    consumer.start()
    with pytest.raises(OSError) as raised:
        consumer.join(20)
    assert raised.value is failure
    assert confirmed_flush(db, "app") == before
    assert_no_threads_left()


def test_on_stop_failing_comes_out_of_join(workload_db: Database) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    before = confirmed_flush(db, "app")
    seen: list[Event] = []
    failure = RuntimeError("the batch could not be written")

    def on_stop() -> LSN:
        raise failure

    consumer = consumer_for(db, seen.append, on_stop=on_stop)
    consumer.start()
    wait_for(lambda: len(seen) == 4, what="one transaction")
    consumer.stop()
    with pytest.raises(RuntimeError) as raised:
        consumer.join(20)
    assert raised.value is failure
    assert confirmed_flush(db, "app") == before  # nothing was acknowledged
    assert_no_threads_left()


def test_on_stop_failing_after_the_callback_failed_is_logged(
    workload_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    db = workload_db
    create_slot(db)
    db.execute("INSERT INTO a VALUES (1, 'x')")
    first = ValueError("the callback's failure")

    def callback(event: Event) -> None:
        raise first

    def on_stop() -> LSN:
        raise RuntimeError("the batch could not be written")

    consumer = consumer_for(db, callback, on_stop=on_stop)
    with caplog.at_level(logging.WARNING, logger="replicant"):
        consumer.start()
        with pytest.raises(ValueError) as raised:
            consumer.join(20)
    assert raised.value is first  # the first failure, as it was raised
    [record] = [r for r in caplog.records if "after a failure" in r.getMessage()]
    assert "the batch could not be written" in record.getMessage()
    assert_no_threads_left()


def test_signal_delivered_to_another_thread_still_stops_run(workload_db: Database) -> None:
    # The kernel may hand a process-directed SIGTERM to any thread; Python
    # then runs the handler only when the main thread runs bytecode. Aim the
    # signal at a helper thread on purpose: run() must still stop promptly.
    db = workload_db
    sent = threading.Event()

    def kill_from_another_thread() -> None:
        wait_for(lambda: confirmed_flush(db, "app_sig") is not None, what="slot")
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        sent.set()

    thread = threading.Thread(target=kill_from_another_thread, name="test-signaller")
    thread.start()
    started = time.monotonic()
    try:
        replicant.run(
            db.dsn, slot="app_sig", publication="pub_a", callback=print, status_interval=0.5
        )
    finally:
        thread.join()
    assert sent.is_set()
    assert time.monotonic() - started < 15
    assert_no_threads_left()


# --- the acknowledgement rules, one by one (replicant/acknowledgement.py)


def test_written_only_grows() -> None:
    progress = WalProgress(LSN("0/100"))
    progress.receive(LSN("0/300"))
    progress.receive(LSN("0/200"))  # a later transaction with lower change positions
    assert progress.position().received == LSN("0/300")


def test_reset_starts_at_the_slot_but_keeps_what_was_acknowledged() -> None:
    progress = WalProgress(LSN("0/100"))
    progress.receive(LSN("0/500"))
    progress.acknowledge(LSN("0/400"))
    progress.reset(LSN("0/200"))  # a reconnect to a slot confirming less
    assert progress.position() == (LSN("0/400"), LSN("0/400"), LSN("0/400"))
    progress.reset(LSN("0/600"))  # a slot confirming more: start there
    assert progress.position() == (LSN("0/600"), LSN("0/600"), LSN("0/600"))
    progress.acknowledge(LSN("0/500"))
    assert progress.position().flushed == LSN("0/600")


def test_idle_position_never_below_acknowledged_and_needs_new_wal_end() -> None:
    progress = WalProgress(LSN("0/100"))
    progress.keepalive(LSN("0/300"), in_transaction=False, last_delivered=0)
    assert progress.position().flushed == LSN("0/300")
    progress.keepalive(LSN("0/250"), in_transaction=False, last_delivered=0)  # not backward
    assert progress.position().flushed == LSN("0/300")
    progress.acknowledge(LSN("0/200"))  # below the idle position: flushed stays
    assert progress.position().flushed == LSN("0/300")


def test_acknowledge_from_many_threads_never_goes_backward() -> None:
    progress = WalProgress(0)
    progress.receive(100_000)
    barrier = threading.Barrier(4)

    def ack(offset: int) -> None:
        barrier.wait()
        for lsn in range(offset, 100_000, 4):
            progress.acknowledge(lsn)

    threads = [threading.Thread(target=ack, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert progress.acknowledged == 99_999


# --- one connection attempt (runtime._Attempt)


def test_attempt_keeps_the_first_failure_and_logs_the_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from replicant.runtime import _Attempt

    attempt = _Attempt()
    first = ConnectionLost("the reader's failure")

    def reader(_: _Attempt) -> None:
        raise first

    def keeper(_: _Attempt) -> None:
        raise RuntimeError("the keepalive thread's failure")

    with caplog.at_level(logging.ERROR, logger="replicant"):
        attempt.guard(reader)
        attempt.guard(keeper)
    assert attempt.failure is first
    assert attempt.first_end.is_set()
    [record] = [r for r in caplog.records if "after the first failure" in r.getMessage()]
    assert "the keepalive thread's failure" in record.getMessage()
    assert "the reader's failure" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_attempt_without_failure_records_none() -> None:
    from replicant.runtime import _Attempt

    attempt = _Attempt()
    attempt.guard(lambda _: None)
    assert attempt.failure is None and attempt.first_end.is_set()
    attempt.close()  # no connection yet: nothing to do
    attempt.close()
