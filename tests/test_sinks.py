"""Sinks: the SinkWriter's watermark rules, JsonLinesSink, and a sink behind a real consumer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicant import LSN, ConfigurationError
from replicant.changes import Begin, Column, Commit, Event, Message, Relation, SnapshotEnd
from replicant.formatting import format_text
from replicant.sinks import JsonLinesSink, Sink, SinkWriter, is_boundary

from .conftest import Database
from .helpers import confirmed_flush, running, wait_for

# --- events without a server


def begin(lsn: int, xid: int = 1) -> Begin:
    return Begin(LSN(lsn), xid, LSN(lsn + 100), None)


def change(lsn: int, xid: int = 1) -> Message:
    """An event inside a transaction (a transactional message stands in for a row)."""
    return Message(LSN(lsn), xid, "test", b"change", True)


def commit(lsn: int, xid: int = 1) -> Commit:
    return Commit(LSN(lsn), xid, LSN(lsn), None)


def transaction(first: int, xid: int = 1) -> list[Event]:
    return [begin(first, xid), change(first + 1, xid), commit(first + 2, xid)]


def relation(lsn: int) -> Relation:
    return Relation(LSN(lsn), 1, 16384, "public", "t", (Column("id", 23, -1, True),), "default")


class Recording:
    """A sink that records what it is given; ``flush`` vouches for a chosen LSN."""

    def __init__(self) -> None:
        self.written: list[Event] = []
        self.flushes = 0
        self.closed = False
        self.vouch: Callable[[Recording], LSN | None] = lambda sink: (
            sink.written[-1].lsn if sink.written else None
        )
        self.fail_write: BaseException | None = None
        self.fail_flush: BaseException | None = None
        self.calls: list[str] = []
        self._busy = threading.Lock()

    def _enter(self, name: str) -> None:
        # The writer must never call two methods at once.
        assert self._busy.acquire(blocking=False), f"{name} called while another call runs"
        assert not self.closed, f"{name} after close()"
        self.calls.append(name)

    def write(self, event: Event) -> None:
        self._enter("write")
        try:
            if self.fail_write is not None:
                raise self.fail_write
            self.written.append(event)
        finally:
            self._busy.release()

    def flush(self) -> LSN | None:
        self._enter("flush")
        try:
            self.flushes += 1
            if self.fail_flush is not None:
                raise self.fail_flush
            return self.vouch(self)
        finally:
            self._busy.release()

    def close(self) -> None:
        self._enter("close")
        self.closed = True
        self._busy.release()


class FakeConsumer:
    """What the writer uses of a Consumer: acknowledge, running, stop, slot."""

    slot = "fake"

    def __init__(self) -> None:
        self.acknowledged: list[LSN] = []
        self.running = True
        self.stops = 0

    def acknowledge(self, lsn: LSN) -> LSN:
        self.acknowledged.append(LSN(lsn))
        return LSN(lsn)

    def stop(self, timeout: float | None = None) -> None:
        assert timeout == 0, "the writer's timer must not wait for the consumer"
        self.stops += 1


def feed(writer: SinkWriter, events: list[Event]) -> list[LSN | None]:
    return [writer(event) for event in events]


def flush_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("replicant-flush")]


def test_sink_protocol_and_boundaries() -> None:
    assert isinstance(Recording(), Sink)
    with pytest.raises(ConfigurationError, match="not a sink"):
        SinkWriter(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="flush_interval"):
        SinkWriter(Recording(), flush_interval=-1)
    assert [is_boundary(e) for e in transaction(10)] == [False, False, True]
    assert is_boundary(Message(LSN(5), None, "p", b"", False))  # stands alone
    assert not is_boundary(relation(5))


# --- the watermark rules


def test_nothing_is_acknowledged_before_a_flush_vouches_for_it() -> None:
    sink = Recording()
    writer = SinkWriter(sink, flush_interval=3600)  # the timer never fires here
    consumer = FakeConsumer()
    writer.attach(consumer)  # type: ignore[arg-type]
    try:
        assert feed(writer, transaction(10)) == [None, None, None]
        assert (writer.delivered, writer.written, writer.durable) == (LSN(12), LSN(12), LSN(0))
        assert consumer.acknowledged == []

        # The sink vouches only for the first transaction's begin: that is all.
        sink.vouch = lambda s: LSN(10)
        assert writer.flush() == LSN(10)
        assert consumer.acknowledged == [LSN(10)]
        # The callback reports the durable LSN once, when it moved.
        assert writer(begin(20)) == LSN(10)
        assert writer(change(21)) is None

        # A flush never goes backward, and never beyond what was written.
        sink.vouch = lambda s: LSN(5)
        assert writer.flush() == LSN(10)
        sink.vouch = lambda s: LSN(10_000)
        assert writer.flush() == LSN(21)
        sink.vouch = lambda s: None  # nothing more durable
        assert writer.flush() == LSN(21)
        assert writer.durable == LSN(21)
    finally:
        writer.close()
    assert sink.closed


def test_write_through_flushes_at_every_transaction_end() -> None:
    sink = Recording()
    writer = SinkWriter(sink, flush_interval=0)
    returned = feed(writer, transaction(10) + transaction(20))
    # Flushed (and acknowledged by the callback's return) at each commit only.
    assert returned == [None, None, LSN(12), None, None, LSN(22)]
    assert sink.flushes == 2
    assert flush_threads() == []  # no timer in this mode
    assert writer.on_stop() == LSN(22)
    assert sink.flushes == 2  # nothing new was written: no flush at the stop
    writer.close()
    assert sink.calls[-1] == "close" and sink.calls.count("flush") == 2


class BatchedConsumer(FakeConsumer):
    """A consumer that calls the writer's batch_end, as Consumer(on_batch_end=...) does."""

    def __init__(self, writer: SinkWriter) -> None:
        super().__init__()
        self._on_batch_end = writer.batch_end


class Pushed(Recording):
    """A sink with batch_end(), recording when it is called."""

    def batch_end(self) -> None:
        self._enter("batch_end")
        self._busy.release()


def test_write_through_flushes_at_every_transaction_end_even_with_batches() -> None:
    sink = Pushed()
    writer = SinkWriter(sink, flush_interval=0)
    writer.attach(BatchedConsumer(writer))  # type: ignore[arg-type]
    # Each transaction is durable on its own: a later one that fails cannot undo it.
    returned = feed(writer, transaction(10) + transaction(20))
    assert returned == [None, None, LSN(12), None, None, LSN(22)]
    assert sink.flushes == 2
    assert writer.batch_end() is None and sink.flushes == 2
    assert "batch_end" not in sink.calls  # a flush does its job here
    writer.close()


def test_timed_writer_pushes_at_each_batch_end_or_without_batches_at_each_commit() -> None:
    sink = Pushed()
    writer = SinkWriter(sink, flush_interval=3600)
    writer.attach(BatchedConsumer(writer))  # type: ignore[arg-type]
    try:
        feed(writer, [*transaction(10), begin(20), change(21)])
        assert "batch_end" not in sink.calls  # not at the commit: the batch goes on
        assert writer.batch_end() is None  # pushed, not durable
        assert sink.calls.count("batch_end") == 1 and sink.flushes == 0
    finally:
        writer.close()

    # A consumer made without on_batch_end: the writer pushes at every transaction end.
    plain = Pushed()
    writer = SinkWriter(plain, flush_interval=3600)
    writer.attach(FakeConsumer())  # type: ignore[arg-type]
    try:
        feed(writer, transaction(10) + transaction(20))
        assert plain.calls.count("batch_end") == 2 and plain.flushes == 0
        # A snapshot's rows come outside any transaction: pushed at its table's end.
        writer(SnapshotEnd(LSN(30), None, "public", "t", 0, False))
        assert plain.calls.count("batch_end") == 3 and plain.flushes == 0
    finally:
        writer.close()


def test_a_batch_holds_the_writer_until_it_ends_and_a_failure_lets_go() -> None:
    sink = Pushed()
    writer = SinkWriter(sink, flush_interval=3600)
    writer.attach(BatchedConsumer(writer))  # type: ignore[arg-type]
    feed(writer, [begin(10), change(11)])  # a batch under way
    flushed: list[LSN] = []
    other = threading.Thread(target=lambda: flushed.append(writer.flush()))
    other.start()
    other.join(0.3)
    assert other.is_alive() and flushed == []  # waits for the batch, never inside it
    writer.batch_end()
    other.join(10)
    assert flushed == [LSN(11)]
    # A write that fails lets go of the writer at once.
    sink.fail_write = RuntimeError("target gone")
    with pytest.raises(RuntimeError):
        writer(commit(12))
    done = threading.Thread(target=writer.close)
    done.start()
    done.join(10)
    assert not done.is_alive() and sink.closed


def test_a_failing_batch_end_propagates_and_stops_acknowledging() -> None:
    class Failing(Pushed):
        def batch_end(self) -> None:
            raise OSError(28, "No space left on device")

    sink = Failing()
    writer = SinkWriter(sink, flush_interval=3600)
    writer.attach(BatchedConsumer(writer))  # type: ignore[arg-type]
    feed(writer, transaction(10))
    with pytest.raises(OSError, match="No space"):
        writer.batch_end()
    with pytest.raises(OSError, match="No space"):
        writer(begin(20))
    assert writer.durable == LSN(0)
    writer.close()
    assert sink.closed and sink.flushes == 0  # not flushed after the failure


def test_timer_flushes_and_acknowledges_while_idle() -> None:
    sink = Recording()
    consumer = FakeConsumer()
    writer = SinkWriter(sink, flush_interval=0.05)
    writer.attach(consumer)  # type: ignore[arg-type]
    try:
        feed(writer, transaction(10))
        # No further event arrives; the timer alone makes it durable and acknowledges it.
        wait_for(lambda: consumer.acknowledged == [LSN(12)], what="a timed flush")
        flushes = sink.flushes
        time.sleep(0.3)
        assert sink.flushes == flushes, "flushed again with nothing new written"
        assert [t.name for t in flush_threads()] == ["replicant-flush[fake]"]
        feed(writer, transaction(20))
        wait_for(lambda: consumer.acknowledged[-1] == LSN(22), what="the second flush")
        assert writer.on_stop() == LSN(22)
        wait_for(lambda: not flush_threads(), what="the timer to end at the stop")
    finally:
        writer.close()
    assert sink.closed


def test_timer_ends_with_its_consumer() -> None:
    writer = SinkWriter(Recording(), flush_interval=0.05)
    consumer = FakeConsumer()
    writer.attach(consumer)  # type: ignore[arg-type]
    feed(writer, transaction(10))
    assert flush_threads()
    consumer.running = False  # ended without on_stop (a lost connection, say)
    wait_for(lambda: not flush_threads(), what="the timer to notice")
    writer.close()


def test_a_failing_write_propagates_and_stops_acknowledging() -> None:
    sink = Recording()
    consumer = FakeConsumer()
    writer = SinkWriter(sink, flush_interval=0)
    writer.attach(consumer)  # type: ignore[arg-type]
    feed(writer, transaction(10))
    assert writer.durable == LSN(12)
    failure = OSError(28, "No space left on device")
    sink.fail_write = failure
    with pytest.raises(OSError) as raised:
        writer(begin(20))
    assert raised.value is failure  # the sink's own exception, unchanged
    assert writer.failure is failure
    assert (writer.delivered, writer.written) == (LSN(20), LSN(12))
    sink.fail_write = None
    calls = len(sink.calls)
    # The consumer had the failure from the callback: on_stop does not raise it
    # again, and gives what was durable before it.
    assert writer.on_stop() == LSN(12)
    with pytest.raises(OSError) as again:
        writer(change(21))  # a later event: the same failure, the sink untouched
    assert again.value is failure
    with pytest.raises(OSError):
        writer.flush()
    assert len(sink.calls) == calls
    writer.close()
    assert sink.calls[calls:] == ["close"]  # closed without a flush
    assert writer.durable == LSN(12)


def test_a_failing_timed_flush_stops_the_consumer_and_comes_out_of_on_stop() -> None:
    sink = Recording()
    consumer = FakeConsumer()
    writer = SinkWriter(sink, flush_interval=0.05)
    writer.attach(consumer)  # type: ignore[arg-type]
    feed(writer, transaction(10))
    wait_for(lambda: consumer.acknowledged == [LSN(12)], what="a timed flush")
    failure = OSError(5, "Input/output error")
    sink.fail_flush = failure
    feed(writer, transaction(20))
    wait_for(lambda: consumer.stops == 1, what="the consumer to be stopped")
    assert writer.failure is failure and writer.durable == LSN(12)
    with pytest.raises(OSError) as raised:
        writer.on_stop()  # so join() raises it
    assert raised.value is failure
    assert writer.on_stop() == LSN(12)  # raised once; after that, what was durable
    assert consumer.acknowledged == [LSN(12)]  # nothing past the failure
    writer.close()
    assert sink.closed and sink.flushes == 2


def test_a_failing_final_flush_comes_out_of_on_stop() -> None:
    sink = Recording()
    writer = SinkWriter(sink, flush_interval=3600)
    feed(writer, transaction(10))
    failure = RuntimeError("the target went away")
    sink.fail_flush = failure
    with pytest.raises(RuntimeError) as raised:
        writer.on_stop()
    assert raised.value is failure and writer.durable == LSN(0)
    writer.close()
    assert sink.closed


def test_a_flush_returning_nonsense_is_a_failure() -> None:
    sink = Recording()
    sink.vouch = lambda s: "0/10"  # type: ignore[assignment,return-value]
    writer = SinkWriter(sink, flush_interval=0)
    with pytest.raises(ConfigurationError, match=r"flush\(\) returned '0/10'"):
        feed(writer, transaction(10))
    assert writer.durable == LSN(0)
    writer.close()


def test_close_flushes_what_is_left_and_then_refuses_events() -> None:
    sink = Recording()
    writer = SinkWriter(sink, flush_interval=3600)
    feed(writer, transaction(10))
    writer.close()
    assert sink.calls[-2:] == ["flush", "close"] and writer.durable == LSN(12)
    writer.close()  # twice: nothing
    assert sink.calls.count("close") == 1
    with pytest.raises(Exception, match="closed"):
        writer(begin(20))


def test_the_sink_is_never_called_concurrently() -> None:
    # A timer flushing every millisecond against a reader writing as fast as
    # it can: Recording asserts that no two calls overlap.
    sink = Recording()
    consumer = FakeConsumer()
    writer = SinkWriter(sink, flush_interval=0.001)
    writer.attach(consumer)  # type: ignore[arg-type]
    deadline = time.monotonic() + 1.0
    lsn = 10
    while time.monotonic() < deadline:
        feed(writer, transaction(lsn))
        lsn += 3
    assert writer.on_stop() == LSN(lsn - 1)
    writer.close()
    assert sink.flushes > 1
    assert consumer.acknowledged == sorted(consumer.acknowledged)


# --- JsonLinesSink


def test_json_lines_sink_writes_pushes_and_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr("replicant.sinks.jsonlines.os.fsync", lambda fd: synced.append(fd))
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    assert sink.fsync
    sink.write(relation(9))  # left out by default
    sink.write(begin(10))
    sink.write(change(11))
    sink.write(commit(12))
    assert path.read_text() == ""  # buffered until the batch ends
    sink.batch_end()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["begin", "message", "commit"]
    assert synced == []  # handed to the system at the batch end, fsynced only on flush
    assert sink.flush() == LSN(12)
    assert len(synced) == 1
    sink.close()

    text = JsonLinesSink(path, fsync=False, formatter=format_text, relations=True)
    text.write(relation(20))
    assert text.flush() == LSN(20) and len(synced) == 1
    text.close()
    assert "RELATION public.t  (id*)" in path.read_text().splitlines()[-1]


def test_json_lines_sink_reopens_at_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path, fsync=True)
    for event in transaction(10):
        sink.write(event)
    rotated = tmp_path / "out.jsonl.1"
    path.rename(rotated)
    sink.reopen()
    sink.write(begin(20))  # still the old file: the reopen waits for the flush
    assert sink.flush() == LSN(20)
    assert path.exists() and path.read_text() == ""
    for event in [change(21), commit(22)]:
        sink.write(event)
    sink.close()
    assert [json.loads(line)["lsn"] for line in rotated.read_text().splitlines()] == [
        "0/A",
        "0/B",
        "0/C",
        "0/14",
    ]
    assert [json.loads(line)["lsn"] for line in path.read_text().splitlines()] == ["0/15", "0/16"]


def test_json_lines_sink_keeps_the_old_file_when_reopening_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "out.jsonl"
    sink = JsonLinesSink(path, fsync=False)
    path.unlink()
    directory.rmdir()  # the path cannot be created again
    sink.reopen()
    with caplog.at_level("ERROR", logger="replicant"):
        assert sink.flush() is None
    assert "cannot reopen" in caplog.text and "still writing the old file" in caplog.text
    for event in transaction(10):
        sink.write(event)  # into the old (unlinked) file, without an error
    assert sink.flush() == LSN(12)
    sink.close()


def test_json_lines_sink_on_stdout_is_never_fsynced_nor_closed(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    sink = JsonLinesSink(fsync=True)
    assert not sink.fsync and sink.path is None
    for event in transaction(10):
        sink.write(event)
    assert sink.flush() == LSN(12)
    sink.close()
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert [json.loads(line)["kind"] for line in out] == ["begin", "message", "commit"]


def test_json_lines_sink_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        JsonLinesSink(tmp_path / "missing" / "out.jsonl")


# --- behind a real consumer


class Table:
    """A sink that keeps committed inserts in memory, as a target table would."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.rows: list[Any] = []
        self.last_commit: LSN | None = None
        self.fail_flush: BaseException | None = None

    def write(self, event: Event) -> None:
        if event.kind == "insert":
            self.pending.append(dict(event.new))  # type: ignore[attr-defined]
        elif isinstance(event, Commit):
            self.rows += self.pending
            self.pending = []
            self.last_commit = event.lsn

    def flush(self) -> LSN | None:
        if self.fail_flush is not None:
            raise self.fail_flush
        return self.last_commit  # only whole transactions count

    def close(self) -> None:
        pass


@pytest.fixture
def items_db(db: Database) -> Database:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    db.execute("CREATE PUBLICATION items_pub FOR TABLE items")
    db.query("SELECT pg_create_logical_replication_slot('sink', 'pgoutput')")
    return db


def test_a_sink_behind_a_consumer_acknowledges_what_it_committed(items_db: Database) -> None:
    db = items_db
    table = Table()
    with SinkWriter(table, flush_interval=0.2) as writer:
        # idle_advance off (here and below): the shared server's other databases
        # move its WAL end, which would otherwise (rightly) carry the slot past
        # what the sink made durable.
        consumer = writer.consumer(
            db.dsn, slot="sink", publication="items_pub", status_interval=0.5, idle_advance=False
        )
        with running(consumer):
            for i in range(1, 6):
                db.execute("INSERT INTO items VALUES (%s, 'x')", i)
            wait_for(lambda: len(table.rows) == 5, what="five rows")
            committed = table.last_commit
            assert committed is not None
            # Idle now: the timed flush alone brings the slot to the last commit.
            wait_for(lambda: confirmed_flush(db, "sink") == committed, what="the slot to follow")
    assert [row["id"] for row in table.rows] == [1, 2, 3, 4, 5]
    assert confirmed_flush(db, "sink") == committed
    assert not flush_threads()


def test_a_failing_sink_flush_ends_the_consumer_with_its_exception(items_db: Database) -> None:
    db = items_db
    table = Table()
    writer = SinkWriter(table, flush_interval=0.2)
    consumer = writer.consumer(
        db.dsn, slot="sink", publication="items_pub", status_interval=0.5, idle_advance=False
    )
    consumer.start()
    try:
        db.execute("INSERT INTO items VALUES (1, 'durable')")
        wait_for(lambda: writer.durable > 0, what="the first flush")
        durable = writer.durable
        wait_for(lambda: confirmed_flush(db, "sink") == durable, what="the slot to follow")
        failure = OSError(5, "Input/output error")
        table.fail_flush = failure
        db.execute("INSERT INTO items VALUES (2, 'lost')")
        with pytest.raises(OSError) as raised:
            consumer.join(20)
        assert raised.value is failure
    finally:
        consumer.stop()
        writer.close()
    # Nothing after the failure was confirmed: the second insert comes again.
    assert confirmed_flush(db, "sink") == durable
    assert table.last_commit is not None and table.last_commit > durable
