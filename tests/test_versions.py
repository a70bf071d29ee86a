"""What each PostgreSQL version adds or changes, tested on the versions that have it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from replicant import ConfigurationError, ServerError, SlotError
from replicant.changes import Event, Insert
from replicant.cluster import Installation, LocalCluster
from replicant.connection import ReplicationConnection, SlotState
from replicant.lsn import LSN
from replicant.runtime import Consumer, check_slot_state

from .conftest import Database
from .helpers import running, wait_for


def slot_state(**changes: Any) -> SlotState:
    base: dict[str, Any] = {
        "name": "s",
        "slot_type": "logical",
        "plugin": "pgoutput",
        "database": "app",
        "temporary": False,
        "active": False,
        "active_pid": None,
        "restart_lsn": LSN("0/100"),
        "confirmed_flush_lsn": LSN("0/200"),
        "wal_status": "reserved",
        "safe_wal_size": None,
        "two_phase": False,
    }
    base.update(changes)
    return SlotState(**base)


# --- the slot check, without a server


def test_check_slot_state_accepts_a_usable_slot() -> None:
    check_slot_state(slot_state(), plugin="pgoutput")
    check_slot_state(slot_state(wal_status="unreserved", conflicting=False), plugin="pgoutput")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"wal_status": "lost"}, "wal_status lost"),
        ({"conflicting": True}, "conflicting"),
        ({"invalidation_reason": "wal_removed", "wal_status": "lost"}, "wal_removed"),
        ({"invalidation_reason": "rows_removed", "conflicting": True}, "rows_removed"),
        ({"invalidation_reason": "wal_level_insufficient"}, "wal_level_insufficient"),
        ({"invalidation_reason": "idle_timeout"}, "idle_timeout"),
        ({"invalidation_reason": "some_future_reason"}, "some_future_reason"),
    ],
)
def test_check_slot_state_refuses_an_invalidated_slot(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(SlotError, match=f"invalidated: {reason}.*drop it, create it anew") as info:
        check_slot_state(slot_state(**changes), plugin="pgoutput")
    assert info.value.sqlstate == "55000"


def test_check_slot_state_refuses_other_plugin_and_physical() -> None:
    with pytest.raises(SlotError, match="uses plugin 'wal2json', not 'pgoutput'"):
        check_slot_state(slot_state(plugin="wal2json"), plugin="pgoutput")
    with pytest.raises(SlotError, match="physical slot, not logical"):
        check_slot_state(slot_state(slot_type="physical", plugin=None), plugin="pgoutput")


# --- slot state and creation, per version


def test_read_slot_reports_what_the_version_has(db: Database) -> None:
    with ReplicationConnection.connect(db.dsn) as conn:
        conn.create_slot("state", "pgoutput")
        state = conn.read_slot("state")
    assert state is not None and state.invalidated is None
    version = db.cluster.version
    assert (state.wal_status is not None) is (version >= 13)
    assert (state.two_phase is not None) is (version >= 14)
    assert (state.conflicting is not None) is (version >= 16)
    assert (state.failover is not None) is (version >= 17)
    assert (state.synced is not None) is (version >= 17)
    assert (state.inactive_since is not None) is (version >= 17)
    assert state.invalidation_reason is None
    if version >= 17:
        assert state.failover is False and state.synced is False


def test_two_phase_slot_per_version(db: Database) -> None:
    version = db.cluster.version
    with ReplicationConnection.connect(db.dsn) as conn:
        if version < 14:
            with pytest.raises(ConfigurationError, match="14 or later"):
                conn.create_slot("tp", "pgoutput", two_phase=True)
            return
        if version < 15:
            # 14's CREATE_REPLICATION_SLOT has no TWO_PHASE: the SQL function
            # makes the slot, and cannot give a snapshot with it.
            with pytest.raises(ConfigurationError, match="PostgreSQL 15 or later"):
                conn.create_slot("tp", "pgoutput", two_phase=True, snapshot="export")
        created = conn.create_slot("tp", "pgoutput", two_phase=True)
        assert created.name == "tp" and created.consistent_point > 0
        state = conn.read_slot("tp")
    assert state is not None and state.two_phase is True
    if version >= 18:
        assert state.two_phase_at is not None


def test_failover_slots_from_17(db: Database) -> None:
    with ReplicationConnection.connect(db.dsn) as conn:
        if db.cluster.version < 17:
            with pytest.raises(ConfigurationError, match="17 or later"):
                conn.create_slot("fo", "pgoutput", failover=True)
            conn.create_slot("fo", "pgoutput")
            with pytest.raises(ConfigurationError, match="17 or later"):
                conn.alter_slot("fo", failover=True)
            return
        conn.create_slot("fo", "pgoutput", failover=True)
        state = conn.read_slot("fo")
        assert state is not None and state.failover is True and state.synced is False
        conn.alter_slot("fo", failover=False)
        state = conn.read_slot("fo")
        assert state is not None and state.failover is False
        with pytest.raises(ConfigurationError, match="failover= or two_phase="):
            conn.alter_slot("fo")
        with pytest.raises(SlotError):
            conn.alter_slot("no_such_slot", failover=True)
        if db.cluster.version >= 18:
            conn.alter_slot("fo", two_phase=True)
            state = conn.read_slot("fo")
            assert state is not None and state.two_phase is True
        else:
            with pytest.raises(ConfigurationError, match="18 or later"):
                conn.alter_slot("fo", two_phase=True)


def test_publications_and_their_tables(db: Database) -> None:
    db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    db.execute("CREATE TABLE b (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION pa FOR TABLE a, b")
    db.execute("CREATE PUBLICATION pe")
    with ReplicationConnection.connect(db.dsn) as conn:
        found = conn.publications(["pa", "pe", "nope"])
        assert conn.missing_publications(["nope", "pa", "other"]) == ["nope", "other"]
    assert found["nope"] is None
    pa, pe = found["pa"], found["pe"]
    assert pa is not None and pa.tables == ("public.a", "public.b") and not pa.all_tables
    assert pe is not None and pe.tables == ()


# --- the consumer at start


def run_briefly(db: Database, **kwargs: Any) -> BaseException | None:
    events: list[Event] = []

    def callback(event: Event) -> LSN:
        events.append(event)
        return event.lsn

    consumer = Consumer(db.dsn, callback=callback, plugin="pgoutput", **kwargs)
    consumer.start()
    consumer.join(30)
    assert not consumer.running
    try:
        consumer.join(0)
    except BaseException as error:
        return error
    return None


def test_missing_publication_fails_at_start_and_leaves_no_slot(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION here FOR TABLE t")
    consumer = Consumer(
        db.dsn,
        slot="nopub",
        publication=["here", "not_here"],
        callback=lambda e: e.lsn,
        create_slot=True,
    )
    started = time.monotonic()
    with pytest.raises(ServerError, match='publication "not_here" does not exist') as info:
        consumer.run()
    assert info.value.sqlstate == "42704"
    assert time.monotonic() - started < 20
    assert db.query("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'nopub'") == [(0,)]


def test_invalidated_slot_ends_the_consumer(
    installation: Installation, make_cluster: Callable[..., LocalCluster]
) -> None:
    cluster = make_cluster(settings={"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB"})
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    cluster.execute("CREATE PUBLICATION p FOR TABLE t")
    with ReplicationConnection.connect(cluster.dsn) as conn:
        conn.create_slot("lost", "pgoutput")
    for i in range(6):
        cluster.execute(
            "INSERT INTO t SELECT g, repeat('x', 500) "
            f"FROM generate_series({i * 2000}, {i * 2000 + 1999}) g"
        )
        cluster.execute("SELECT pg_switch_wal()")
        cluster.execute("CHECKPOINT")
    deadline = time.monotonic() + 30
    while cluster.execute("SELECT wal_status FROM pg_replication_slots")[0][0] != "lost":
        assert time.monotonic() < deadline, "the slot was not invalidated"
        cluster.execute("SELECT pg_switch_wal()")
        cluster.execute("CHECKPOINT")
    consumer = Consumer(cluster.dsn, slot="lost", publication="p", callback=lambda e: e.lsn)
    expected = "wal_removed" if installation.version >= 17 else "wal_status lost"
    with pytest.raises(SlotError, match=f"invalidated: {expected}"):
        consumer.run()


# --- 16+: logical decoding on a standby


def test_consumer_on_a_standby_from_16(
    installation: Installation, make_cluster: Callable[..., LocalCluster]
) -> None:
    if installation.version < 16:
        pytest.skip("logical decoding on a standby needs PostgreSQL 16")
    primary = make_cluster()
    primary.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    primary.execute("CREATE PUBLICATION p FOR TABLE t")
    standby = primary.create_standby()
    try:
        standby.wait_for_replay()
        got: list[Event] = []
        done = threading.Event()

        def callback(event: Event) -> LSN:
            got.append(event)
            if isinstance(event, Insert) and event.new["id"] == 2:
                done.set()
            return event.lsn

        consumer = Consumer(
            standby.dsn, slot="on_standby", publication="p", callback=callback, create_slot=True
        )
        consumer.start()
        # Slot creation on a standby waits for the primary's next running-xacts
        # record; this writes one now instead of within 15 s. The slot is
        # listed as soon as creation begins, but decodes only what commits
        # after its consistent point, when confirmed_flush_lsn gets set:
        # writing before that would lose the rows.
        deadline = time.monotonic() + 30
        while not standby.execute(
            "SELECT count(*) FROM pg_replication_slots"
            " WHERE slot_name = 'on_standby' AND confirmed_flush_lsn IS NOT NULL"
        )[0][0]:
            assert time.monotonic() < deadline, f"no slot; standby log:\n{standby.log_tail()}"
            primary.execute("SELECT pg_log_standby_snapshot()")
            time.sleep(0.2)
        primary.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        assert done.wait(30), f"got only {got}; standby log:\n{standby.log_tail()}"
        consumer.stop()
        consumer.join(30)
        inserts = [e.new["note"] for e in got if isinstance(e, Insert)]
        assert inserts == ["one", "two"]
    finally:
        standby.stop("immediate")


# --- 18: generated columns published


def test_generated_columns_published_on_18(db: Database) -> None:
    if db.cluster.version < 18:
        pytest.skip("publish_generated_columns needs PostgreSQL 18")
    db.execute(
        "CREATE TABLE g (id int PRIMARY KEY, n int, twice int GENERATED ALWAYS AS (n * 2) STORED)"
    )
    db.execute("CREATE PUBLICATION pg FOR TABLE g WITH (publish_generated_columns = stored)")
    got: list[Event] = []
    done = threading.Event()

    def callback(event: Event) -> LSN:
        got.append(event)
        if isinstance(event, Insert):
            done.set()
        return event.lsn

    consumer = Consumer(db.dsn, slot="gen", publication="pg", callback=callback, create_slot=True)
    with running(consumer):
        wait_for(
            lambda: bool(db.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'gen'")),
            30,
            "the slot",
        )
        db.execute("INSERT INTO g (id, n) VALUES (1, 21)")
        assert done.wait(30)
    (insert,) = [e for e in got if isinstance(e, Insert)]
    assert insert.new["twice"] == 42 and insert.new["n"] == 21
