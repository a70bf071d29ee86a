"""The consumer recovers from lost connections by itself and loses nothing.

Each fault is tried while a workload of many small and some large
transactions runs (tests/workload.py). The callback is a mirror that applies
every transaction to in-memory tables; at the end the mirror must hold
exactly what the server's tables hold, every committed transaction must have
been delivered with all of its changes, and no transaction may have been
delivered in part as if whole. The faults: a TCP reset, a cut inside a
CopyData message in the middle of a large transaction, a stall in both
directions (the receive watchdog must notice), a short stall and added
latency (which must not cause a reconnect), refused connections, server
restarts (fast and immediate) and ``pg_terminate_backend`` of the walsender.
How long each recovery took goes into the fault report
(tests/workload.py: :func:`record_result`), printed at the end of the module.

Then the errors that a retry cannot fix: the callback's exception, a missing
publication, a slot dropped, recreated or invalidated behind the consumer's
back. They end the consumer with a clear error instead of a retry loop.

The heavy matrix runs against one server version, the newest found: the
recovery logic is the client's, and the second version adds nothing but
time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from replicant import ConnectionLost, ServerError, SlotError
from replicant.changes import Event
from replicant.cluster import LocalCluster
from replicant.connection import ReplicationConnection
from replicant.lsn import LSN
from replicant.runtime import Consumer

from .conftest import ClusterFactory, Database, DatabaseFactory
from .faultproxy import BackendParser, FaultProxy
from .helpers import assert_no_threads_left, running, wait_until
from .workload import (
    PUBLICATION,
    FaultResult,
    Mirror,
    Verdict,
    Workload,
    format_report,
    record_result,
    setup_schema,
    wait_converged,
)

SLOT = "faults"
# The server drops a walsender that hears nothing for this long; the stall
# faults leave one behind, and the reconnect waits for it ("slot is active").
WAL_SENDER_TIMEOUT = "4s"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_cluster(make_module_cluster: ClusterFactory) -> Iterator[LocalCluster]:
    """A private server, newest version, with a short wal_sender_timeout; restarted by tests."""
    yield make_module_cluster(
        settings={"wal_sender_timeout": WAL_SENDER_TIMEOUT, "log_min_messages": "warning"},
    )
    print("\n" + format_report())


@pytest.fixture
def fdb(fault_cluster: LocalCluster, make_db: DatabaseFactory) -> Database:
    """A fresh database in the fault cluster with the workload's tables and a slot."""
    database = make_db(fault_cluster, prefix="f")
    setup_schema(database.execute)
    database.query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", SLOT)
    return database


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="replicant")
    return caplog


def fault_consumer(
    fdb: Database, callback: Callable[[Event], Any], *, via: FaultProxy | None = None, **kwargs: Any
) -> Consumer:
    """A consumer of the fixture's slot and publication, through the proxy ``via`` if given."""
    dsn = fdb.dsn if via is None else fdb.dsn_with(port=via.port)
    return Consumer(
        dsn, slot=SLOT, publication=PUBLICATION, callback=callback, create_slot=False, **kwargs
    )


def reconnect_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "replicant" and r.levelno == logging.WARNING
    ]


def slot_state(db: Database, slot: str = SLOT) -> tuple[bool, int | None, str | None] | None:
    rows = db.query(
        "SELECT active, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        slot,
    )
    return rows[0] if rows else None


# --- one run: consumer + workload + mirror --------------------------------------------------


class FaultRun:
    """A consumer mirroring the workload's tables, optionally through a fault proxy."""

    def __init__(
        self,
        db: Database,
        *,
        proxy: bool = True,
        seed: int = 1,
        **consumer_kwargs: Any,
    ) -> None:
        self.db = db
        cluster = db.cluster
        self.proxy = FaultProxy(cluster.host, cluster.port) if proxy else None
        dsn = db.dsn_with(port=self.proxy.port) if self.proxy else db.dsn
        consumer_kwargs.setdefault("status_interval", 0.3)
        consumer_kwargs.setdefault("backoff_initial", 0.1)
        consumer_kwargs.setdefault("backoff_max", 1.0)
        consumer_kwargs.setdefault("receive_timeout", 5.0)
        consumer_kwargs.setdefault("create_slot", False)
        consumer_kwargs.setdefault("connect_timeout", 5)
        self.mirror = Mirror(generation=lambda: self.consumer.stats.reconnects)
        self.consumer = Consumer(
            dsn,
            slot=SLOT,
            publication=PUBLICATION,
            callback=self.mirror,
            **consumer_kwargs,
        )
        self.workload = Workload(
            self.connect, seed=seed, large_every=30, large_rows=1500, pause=0.002
        )
        self.injected: float | None = None
        self.cleared: float | None = None
        self.before = 0

    def connect(self) -> psycopg2.extensions.connection:
        return self.db.connect(connect_timeout=3)

    def start(self, warm_up: int = 120) -> FaultRun:
        self.consumer.start()
        self.workload.start()
        self.workload.wait_committed(warm_up)
        assert wait_until(lambda: self.mirror.events > 0, 20), "no events before the fault"
        return self

    def inject(self) -> None:
        """Mark the moment of the fault (call right before causing it)."""
        self.before = self.consumer.stats.reconnects
        self.injected = time.monotonic()

    def clear(self) -> None:
        """Mark the moment the fault's cause went away (for lasting faults)."""
        self.cleared = time.monotonic()

    def wait_recovered(self, timeout: float = 60.0) -> float:
        """Wait for the first event on a new connection; return the seconds since the fault."""
        assert self.injected is not None
        ok = wait_until(lambda: self.mirror.recovered_at(self.before) is not None, timeout)
        failure = self._failure()
        assert ok, f"no event after a reconnect within {timeout} s (failure: {failure!r})"
        recovered = self.mirror.recovered_at(self.before)
        assert recovered is not None
        return recovered - self.injected

    def _failure(self) -> BaseException | None:
        if self.consumer.running:
            return None
        try:
            self.consumer.join(0)
        except BaseException as error:
            return error
        return None

    def more(self, count: int = 100) -> None:
        """Let the workload commit ``count`` more transactions."""
        self.workload.wait_committed(self.workload.committed + count)

    def finish(self, fault: str, note: str = "", expect_reconnect: bool = True) -> Verdict:
        """Stop writing, wait for the mirror to converge, stop, verify, record."""
        self.workload.stop()
        verdict = wait_converged(self.mirror, self.workload, self.connect, timeout=60)
        stats = self.consumer.stats
        self.consumer.stop(timeout=15)
        self.consumer.join(timeout=15)  # a failure would come out here
        if self.proxy is not None:
            self.proxy.close()
        recovered = self.mirror.recovered_at(self.before) if expect_reconnect else None
        outage = None if recovered is None or self.injected is None else recovered - self.injected
        since = self.cleared if self.cleared is not None else self.injected
        recovery = None if recovered is None or since is None else recovered - since
        record_result(
            FaultResult(
                fault=fault,
                server=f"pg{self.db.cluster.version}",
                recovery_s=recovery,
                outage_s=outage,
                reconnects=stats.reconnects,
                lost_changes=verdict.lost_changes,
                transactions=self.workload.committed,
                repeated=verdict.repeated_transactions,
                restarted=self.mirror.restarted,
                note=note,
            )
        )
        assert_no_threads_left(10)
        return verdict

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.workload.stop(5)
        self.consumer.stop(timeout=5)
        if self.proxy is not None:
            self.proxy.close()


@pytest.fixture
def make_run(fdb: Database) -> Iterator[Callable[..., FaultRun]]:
    runs: list[FaultRun] = []

    def make(**kwargs: Any) -> FaultRun:
        run = FaultRun(fdb, **kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def assert_clean(verdict: Verdict) -> None:
    assert verdict.ok, f"{verdict}"
    assert verdict.lost_changes == 0


# --- faults the consumer must recover from --------------------------------------------------


def test_connection_reset(make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture) -> None:
    run = make_run().start()
    assert run.proxy is not None
    run.inject()
    assert run.proxy.cut() == 1, "the consumer's connection goes through the proxy"
    run.wait_recovered(20)
    run.more()
    verdict = run.finish("TCP reset (RST)")
    assert_clean(verdict)
    assert run.consumer.stats.reconnects >= 1
    assert len(reconnect_warnings(log)) == run.consumer.stats.reconnects
    assert run.proxy.connections >= 2


def test_cut_inside_copydata_of_a_large_transaction(
    make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run().start()
    assert run.proxy is not None
    # Inside the 200th change of a transaction: only the large ones have that many.
    run.proxy.cut_mid_copydata(nth_in_transaction=200)
    assert run.proxy.wait_mid_copydata_cut(30), "no large transaction went by"
    run.injected = run.proxy.mid_copydata_cuts[0]
    run.wait_recovered(20)
    run.more()
    verdict = run.finish("cut mid-CopyData, large transaction")
    assert_clean(verdict)
    # The cut transaction was begun, cut, and delivered again from its Begin;
    # the mirror threw the half away and applied the whole.
    assert run.mirror.restarted >= 1
    assert verdict.half_transactions == 0


def test_stall_trips_the_receive_watchdog(
    make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run(receive_timeout=1.5).start()
    assert run.proxy is not None
    run.inject()
    run.proxy.stall()  # silence both ways, no error: only the watchdog can tell
    elapsed = run.wait_recovered(60)
    run.proxy.resume()
    run.more()
    verdict = run.finish(
        "stall both ways (receive_timeout 1.5 s)",
        note=f"walsender left behind until wal_sender_timeout {WAL_SENDER_TIMEOUT}",
    )
    assert_clean(verdict)
    warnings = reconnect_warnings(log)
    assert "receive_timeout" in warnings[0], warnings
    # receive_timeout, then the old walsender's wal_sender_timeout ("slot is
    # active" in between is retried), then a back-off: seconds, not minutes.
    assert 1.5 <= elapsed < 10, f"recovery took {elapsed:.1f} s"
    # The server had not yet noticed the old connection was gone: the slot
    # was still active for its walsender, and that was retried.
    assert any("active for PID" in w for w in warnings[1:]), warnings


def test_short_stall_needs_no_reconnect(
    make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run(receive_timeout=5.0).start()
    assert run.proxy is not None
    run.inject()
    run.proxy.stall(1.0)
    time.sleep(1.2)
    run.more()
    verdict = run.finish("stall 1 s (< receive_timeout)", expect_reconnect=False)
    assert_clean(verdict)
    assert run.consumer.stats.reconnects == 0, reconnect_warnings(log)


def test_latency_needs_no_reconnect(
    make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run().start()
    assert run.proxy is not None
    run.inject()
    run.proxy.delay(0.05)
    run.more(150)
    run.proxy.delay(0)
    verdict = run.finish("50 ms delay per chunk both ways", expect_reconnect=False)
    assert_clean(verdict)
    assert run.consumer.stats.reconnects == 0, reconnect_warnings(log)


def test_refused_connections_are_retried(
    make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run(backoff_initial=0.1, backoff_max=0.5).start()
    assert run.proxy is not None
    run.inject()
    run.proxy.refuse(True)
    run.proxy.cut()
    assert wait_until(lambda: run.proxy is not None and run.proxy.refused >= 3, 15)
    run.proxy.refuse(False)
    run.clear()
    run.wait_recovered(20)
    run.more()
    verdict = run.finish("connections refused for a while, then allowed")
    assert_clean(verdict)
    assert run.consumer.stats.reconnects >= 4  # the cut, then three refusals at least
    assert len(reconnect_warnings(log)) == run.consumer.stats.reconnects


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart(
    mode: str, make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run(proxy=False).start()
    cluster = run.db.cluster
    run.inject()
    cluster.restart(mode)  # type: ignore[arg-type]
    run.clear()
    run.wait_recovered(60)
    run.more()
    verdict = run.finish(f"server restart -m {mode}", note="direct connection")
    assert_clean(verdict)
    assert run.consumer.stats.reconnects >= 1


def test_walsender_terminated(
    make_run: Callable[..., FaultRun], log: pytest.LogCaptureFixture
) -> None:
    run = make_run(proxy=False).start()
    state = slot_state(run.db)
    assert state is not None and state[0], "the slot is streaming"
    run.inject()
    assert run.db.query("SELECT pg_terminate_backend(%s)", state[1]) == [(True,)]
    run.wait_recovered(20)
    run.more()
    verdict = run.finish("pg_terminate_backend(walsender)", note="direct connection")
    assert_clean(verdict)
    warnings = reconnect_warnings(log)
    assert warnings, "the reconnect is logged"


# --- what reconnect=False and max_retries change -------------------------------------------


def test_reconnect_false_keeps_the_old_behaviour(fdb: Database) -> None:
    with FaultProxy(fdb.cluster.host, fdb.cluster.port) as proxy:
        mirror = Mirror()
        consumer = fault_consumer(
            fdb, mirror, via=proxy, status_interval=0.3, reconnect=False
        ).start()
        assert wait_until(lambda: proxy.active == 1, 10)
        fdb.execute("INSERT INTO w_small VALUES (1, 'one', 0)")
        assert wait_until(lambda: mirror.events > 0, 10)
        proxy.cut()
        with pytest.raises(ConnectionLost):
            consumer.join(timeout=15)
        assert proxy.connections == 1
        assert consumer.stats.reconnects == 0
    assert_no_threads_left(10)


def test_max_retries_gives_up(fdb: Database, log: pytest.LogCaptureFixture) -> None:
    with FaultProxy(fdb.cluster.host, fdb.cluster.port) as proxy:
        consumer = fault_consumer(
            fdb,
            Mirror(),
            via=proxy,
            status_interval=0.3,
            max_retries=3,
            backoff_initial=0.05,
            backoff_max=0.2,
        ).start()
        # Retries apply once a stream has run (a first connection's failure is final).
        assert wait_until(lambda: proxy.active == 1 and consumer.stats.streams == 1, 10)
        proxy.refuse(True)
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            consumer.join(timeout=30)
        assert time.monotonic() - started < 10
        assert proxy.refused == 3  # three retries, then it gives up
        assert len(reconnect_warnings(log)) == 3
    assert_no_threads_left(10)


# --- "replication slot is active for PID": retried ------------------------------------------


class SlotHolder:
    """Another connection streaming from the slot, so that it is active.

    It answers with status updates, so the server keeps it as long as the
    test wants.
    """

    def __init__(self, db: Database) -> None:
        self.connection = ReplicationConnection.connect(db.dsn)
        self.stream = self.connection.start(
            SLOT, None, {"proto_version": "1", "publication_names": f'"{PUBLICATION}"'}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-slot-holder", daemon=True)
        self._thread.start()
        assert wait_until(lambda: (slot_state(db) or (False,))[0], 10)

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            while not self._stop.is_set():
                self.stream.read(0.2)
                self.stream.send_status(0, 0, 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.connection.close()


def test_slot_active_elsewhere_is_retried(fdb: Database, log: pytest.LogCaptureFixture) -> None:
    holder = SlotHolder(fdb)
    mirror = Mirror()
    consumer = fault_consumer(
        fdb, mirror, status_interval=0.3, backoff_initial=0.1, backoff_max=0.3
    )
    # Leaving: the holder is closed (again), then the consumer stopped.
    with running(consumer, timeout=10), contextlib.closing(holder):
        assert wait_until(lambda: consumer.stats.reconnects >= 2, 15), "no retries"
        assert consumer.running
        holder.close()
        fdb.execute("INSERT INTO w_small VALUES (1, 'after', 0)")
        assert wait_until(lambda: len(mirror.commits) == 1, 20), "never got going"
    warnings = reconnect_warnings(log)
    assert warnings and all("active for PID" in w for w in warnings), warnings
    assert_no_threads_left(10)


def test_slot_active_without_reconnect_is_a_slot_error(fdb: Database) -> None:
    holder = SlotHolder(fdb)
    try:
        consumer = fault_consumer(fdb, Mirror(), reconnect=False).start()
        with pytest.raises(SlotError, match="active"):
            consumer.join(timeout=15)
    finally:
        holder.close()
    assert_no_threads_left(10)


# --- errors a retry cannot fix ----------------------------------------------------------------


def test_callback_exception_is_not_retried(fdb: Database) -> None:
    failure = RuntimeError("the application broke")

    def callback(event: Event) -> LSN:
        if getattr(event, "kind", "") == "insert":
            raise failure
        return event.lsn

    with FaultProxy(fdb.cluster.host, fdb.cluster.port) as proxy:
        consumer = fault_consumer(fdb, callback, via=proxy, backoff_initial=0.05).start()
        fdb.execute("INSERT INTO w_small VALUES (1, 'x', 0)")
        with pytest.raises(RuntimeError) as info:
            consumer.join(timeout=20)
        assert info.value is failure
        assert proxy.connections == 1
        assert consumer.stats.reconnects == 0
    assert_no_threads_left(10)


def test_missing_publication_is_not_retried(fdb: Database, log: pytest.LogCaptureFixture) -> None:
    with FaultProxy(fdb.cluster.host, fdb.cluster.port) as proxy:
        consumer = Consumer(
            fdb.dsn_with(port=proxy.port),
            slot=SLOT,
            publication="no_such_publication",
            callback=Mirror(),
            create_slot=False,
            backoff_initial=0.05,
        ).start()
        fdb.execute("INSERT INTO w_small VALUES (1, 'x', 0)")
        started = time.monotonic()
        # Checked before streaming on every version (18 would only warn).
        with pytest.raises(ServerError) as info:
            consumer.join(timeout=20)
        assert not isinstance(info.value, SlotError)
        assert '"no_such_publication" does not exist' in str(info.value)
        assert info.value.sqlstate == "42704"
        assert "CREATE PUBLICATION" in str(info.value)
        assert time.monotonic() - started < 10
        assert proxy.connections == 1, "a missing publication must not be retried"
        assert not reconnect_warnings(log)
    assert_no_threads_left(10)


def drop_slot_under(db: Database, slot: str = SLOT, timeout: float = 20) -> None:
    """Drop a slot that a reconnecting consumer keeps taking: terminate, drop, repeat."""
    deadline = time.monotonic() + timeout
    while True:
        state = slot_state(db, slot)
        if state is None:
            return
        if state[1] is not None:
            db.query("SELECT pg_terminate_backend(%s)", state[1])
        try:
            db.query("SELECT pg_drop_replication_slot(%s)", slot)
            return
        except psycopg2.errors.ObjectInUse:
            assert time.monotonic() < deadline, "could not drop the slot"
            time.sleep(0.02)


def test_dropped_slot_is_not_recreated(fdb: Database, log: pytest.LogCaptureFixture) -> None:
    mirror = Mirror()
    consumer = Consumer(
        fdb.dsn,
        slot=SLOT,
        publication=PUBLICATION,
        callback=mirror,
        create_slot=True,  # even so: recreating it would skip changes silently
        status_interval=0.3,
        backoff_initial=0.2,
    ).start()
    try:
        fdb.execute("INSERT INTO w_small VALUES (1, 'x', 0)")
        assert wait_until(lambda: len(mirror.commits) == 1, 20)
        drop_slot_under(fdb)
        fdb.execute("INSERT INTO w_small VALUES (2, 'lost to the consumer', 0)")
        with pytest.raises(SlotError) as info:
            consumer.join(timeout=20)
    finally:
        consumer.stop(timeout=5)
    assert "dropped" in str(info.value)
    assert slot_state(fdb) is None, "the slot must not have been recreated"
    assert_no_threads_left(10)


def test_recreated_slot_is_detected(fdb: Database, log: pytest.LogCaptureFixture) -> None:
    with FaultProxy(fdb.cluster.host, fdb.cluster.port) as proxy:
        mirror = Mirror()
        consumer = fault_consumer(
            fdb, mirror, via=proxy, status_interval=0.2, backoff_initial=0.1, backoff_max=0.3
        ).start()
        try:
            fdb.execute("INSERT INTO w_small VALUES (1, 'x', 0)")
            assert wait_until(lambda: len(mirror.commits) == 1, 20)
            time.sleep(0.5)  # a status update reports the commit
            # Keep the consumer out while the slot is replaced behind its back.
            proxy.refuse(True)
            proxy.cut()
            drop_slot_under(fdb)
            fdb.execute("INSERT INTO w_small VALUES (2, 'skipped', 0)")
            fdb.query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", SLOT)
            proxy.refuse(False)
            with pytest.raises(SlotError) as info:
                consumer.join(timeout=20)
        finally:
            consumer.stop(timeout=5)
    message = str(info.value)
    assert "skipped" in message or "recreated" in message, message
    assert [xid for xid, _, _ in mirror.commits].__len__() == 1
    assert_no_threads_left(10)


def test_invalidated_slot_is_not_retried(
    make_cluster: Callable[..., LocalCluster], log: pytest.LogCaptureFixture
) -> None:
    cluster = make_cluster(
        settings={
            "max_slot_wal_keep_size": "1MB",
            "wal_sender_timeout": WAL_SENDER_TIMEOUT,
            "min_wal_size": "32MB",
            "max_wal_size": "64MB",
        }
    )
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY)")
    cluster.execute("CREATE PUBLICATION p FOR TABLE t")
    cluster.execute("SELECT pg_create_logical_replication_slot('inv', 'pgoutput')")
    release = threading.Event()
    seen: list[Event] = []

    def stuck(event: Event) -> LSN:
        seen.append(event)
        release.wait(30)  # hold the slot back while WAL moves on
        return event.lsn

    consumer = Consumer(
        cluster.dsn,
        slot="inv",
        publication="p",
        callback=stuck,
        create_slot=False,
        status_interval=0.3,
        backoff_initial=0.1,
        idle_advance=False,
    ).start()
    try:
        cluster.execute("INSERT INTO t VALUES (1)")
        assert wait_until(lambda: bool(seen), 20)
        for i in range(2, 6):
            cluster.execute(f"INSERT INTO t VALUES ({i})")
            cluster.execute("SELECT pg_switch_wal()")
        cluster.execute("CHECKPOINT")
        assert wait_until(
            lambda: (
                cluster.execute(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'inv'"
                )
                == [("lost",)]
            ),
            20,
        ), cluster.execute("SELECT wal_status, restart_lsn FROM pg_replication_slots")
        release.set()
        started = time.monotonic()
        with pytest.raises(SlotError) as info:
            consumer.join(timeout=30)
        assert time.monotonic() - started < 15
    finally:
        release.set()
        consumer.stop(timeout=5)
    message = str(info.value)
    assert "invalidated" in message or "lost" in message or "no longer" in message, message
    assert_no_threads_left(10)


# --- the proxy's message parser (no server) -------------------------------------------------


def test_backend_parser_cuts_inside_the_right_message_at_any_chunking() -> None:
    from .fakeserver import begin, commit, insert, keepalive, message, xlogdata

    stream = b"N" + message(b"R", b"\0\0\0\0") + message(b"Z", b"I")
    stream += keepalive(100)
    stream += xlogdata(begin(200, 7), 100)
    inserts = [xlogdata(insert(16385, [str(i), "v" * 40]), 100 + i) for i in range(1, 6)]
    starts = []
    for frame in inserts:
        starts.append(len(stream))
        stream += frame
    stream += xlogdata(commit(150, 200), 200)
    target_start, target_end = starts[2], starts[2] + len(inserts[2])  # the 3rd change
    for size in (1, 2, 3, 7, 31, 64, len(stream)):
        parser = BackendParser()
        parser.arm(3)
        cut_at = None
        for offset in range(0, len(stream), size):
            chunk = stream[offset : offset + size]
            cut = parser.feed(chunk)
            if cut is not None:
                cut_at = offset + cut
                break
        assert cut_at is not None, f"chunks of {size}: no cut"
        # Inside the message, past its CopyData and XLogData headers.
        assert target_start + 31 <= cut_at < target_end, (size, cut_at, target_start)
        assert not parser.armed
    # Encrypted streams are left alone.
    parser = BackendParser()
    parser.arm(1)
    assert parser.feed(b"S" + stream) is None and parser.opaque
