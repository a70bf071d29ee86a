"""The decoders against real servers, every version found.

* Values: a row of every supported type, written by psycopg2, comes out of
  every decoder (pgoutput text and binary, wal2json 1 and 2) as the Python
  values psycopg2 wrote, including NULLs, an unchanged TOASTed value,
  arrays and non-ASCII text.
* A mixed workload decoded from pgoutput (with streaming and two-phase
  where the server has them) and from wal2json gives the same committed
  changes, with the same transaction ids and commit positions; and its order
  and content agree with what the server's own test_decoding prints.

Payloads are read with the SQL functions pg_logical_slot_peek_*_changes,
which return exactly what the walsender would put in XLogData frames.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest

from replicant.changes import (
    UNCHANGED,
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Event,
    Insert,
    Message,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from replicant.decoders import Decoder, make_decoder
from replicant.lsn import LSN

from .helpers import same

TZ = dt.timezone(dt.timedelta(hours=2))

# column name, SQL type, the value psycopg2 writes (with an explicit cast)
COLUMNS: list[tuple[str, str, Any]] = [
    ("c_int2", "int2", -12),
    ("c_int4", "int4", 2147483647),
    ("c_int8", "int8", -9223372036854775807),
    ("c_oid", "oid", 4294967295),
    ("c_float4", "float4", 1.5),
    ("c_float8", "float8", 1e308),
    ("c_numeric", "numeric", Decimal("-12345678901234567890.000100")),
    ("c_bool", "bool", True),
    ("c_text", "text", "héllo ☃ 'quoted' \"double\" \\ back"),
    ("c_varchar", "varchar(20)", "vär"),
    ("c_bpchar", "char(4)", "ab  "),
    ("c_name", "name", "a name"),
    ("c_bytea", "bytea", bytes(range(256))),
    ("c_date", "date", dt.date(2024, 2, 29)),
    ("c_time", "time", dt.time(23, 59, 59, 999999)),
    ("c_timetz", "timetz", dt.time(12, 34, 56, 500000, tzinfo=TZ)),
    ("c_timestamp", "timestamp", dt.datetime(2024, 5, 6, 7, 8, 9, 123456)),
    ("c_timestamptz", "timestamptz", dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=TZ)),
    ("c_interval", "interval", dt.timedelta(days=-3, seconds=7, microseconds=5)),
    ("c_json", "json", {"a": [1, 2.5, None, "é"]}),
    ("c_jsonb", "jsonb", {"b": {"c": True}}),
    ("c_uuid", "uuid", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("c_inet", "inet", ipaddress.ip_interface("192.168.0.1/24")),
    ("c_cidr", "cidr", ipaddress.ip_network("2001:db8::/32")),
    ("a_int4", "int4[]", [[1, None], [3, 4]]),
    ("a_int8", "int8[]", [9223372036854775807]),
    ("a_text", "text[]", ["a", "b c", None, "NULL", 'ü,{}"']),
    ("a_numeric", "numeric[]", [Decimal("1.50"), None]),
    ("a_float8", "float8[]", [1.5, float("inf")]),
    ("a_bool", "bool[]", [True, False]),
    ("a_bytea", "bytea[]", [b"\x00\xff", None]),
    ("a_date", "date[]", [dt.date(2000, 1, 1)]),
    ("a_time", "time[]", [dt.time(1, 2, 3)]),
    ("a_timestamptz", "timestamptz[]", [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)]),
    ("a_interval", "interval[]", [dt.timedelta(hours=1)]),
    ("a_uuid", "uuid[]", [uuid.UUID(int=5)]),
    ("a_inet", "inet[]", [ipaddress.ip_interface("10.0.0.1/8")]),
    ("a_jsonb", "jsonb[]", [[1, "two"]]),
    ("big", "text", "B" * 5000),  # stored out of line: unchanged by the UPDATE below
]


def _params(column: str, value: Any) -> Any:
    if column in ("c_json", "c_jsonb"):
        return json.dumps(value)
    if column == "a_jsonb":
        return [json.dumps(v) for v in value]
    if isinstance(value, list):
        return [str(v) if isinstance(v, (uuid.UUID, ipaddress.IPv4Interface)) else v for v in value]
    if isinstance(value, (uuid.UUID, ipaddress.IPv4Interface, ipaddress.IPv6Network)):
        return str(value)
    return value


def _peek(db: Any, slot: str, decoder: Decoder, binary: bool, server: int) -> list[Event]:
    options = decoder.start_options(server)
    flat = [item for pair in options.items() for item in pair]
    function = "pg_logical_slot_peek_binary_changes" if binary else "pg_logical_slot_peek_changes"
    rows = db.query(
        f"SELECT lsn::text, data FROM {function}(%s, NULL, NULL, VARIADIC %s::text[])", slot, flat
    )
    events: list[Event] = []
    for lsn, data in rows:
        payload = bytes(data) if binary else data.encode()
        position = LSN.parse(lsn)
        events.extend(decoder.decode(payload, position, position))
    return events


def _server(db: Any) -> int:
    return int(db.query("SHOW server_version_num")[0][0])


def _decoders(db: Any, server: int) -> list[tuple[str, str, Decoder, bool]]:
    """(label, slot, decoder, binary payloads) for every decoder this server can feed."""
    out: list[tuple[str, str, Decoder, bool]] = [
        ("pgoutput", "s_pgoutput", make_decoder("pgoutput", publication="pub"), True)
    ]
    if server >= 140000:
        binary = make_decoder("pgoutput", publication="pub", binary=True)
        out.append(("pgoutput binary", "s_pgoutput", binary, True))
    if db.cluster.has_plugin("wal2json"):
        for version in (1, 2):
            decoder = make_decoder("wal2json", format_version=version)
            out.append((f"wal2json {version}", "s_wal2json", decoder, False))
    return out


def test_every_type_through_every_decoder(db: Any) -> None:
    server = _server(db)
    definition = ", ".join(f"{name} {sql_type}" for name, sql_type, _ in COLUMNS)
    db.execute(f"CREATE TABLE everything (id int PRIMARY KEY, {definition})")
    db.execute("ALTER TABLE everything ALTER big SET STORAGE EXTERNAL")
    db.execute("CREATE PUBLICATION pub FOR TABLE everything")
    db.execute("SELECT pg_create_logical_replication_slot('s_pgoutput', 'pgoutput')")
    if db.cluster.has_plugin("wal2json"):
        db.execute("SELECT pg_create_logical_replication_slot('s_wal2json', 'wal2json')")
    names = ", ".join(name for name, _, _ in COLUMNS)
    casts = ", ".join(f"%s::{sql_type}" for _, sql_type, _ in COLUMNS)
    db.execute(
        f"INSERT INTO everything (id, {names}) VALUES (1, {casts})",
        *[_params(name, value) for name, _, value in COLUMNS],
    )
    db.execute("INSERT INTO everything (id) VALUES (2)")
    db.execute("UPDATE everything SET c_int2 = 13 WHERE id = 1")
    written = {"id": 1, **{name: value for name, _, value in COLUMNS}}
    nulls = {"id": 2, **{name: None for name, _, _ in COLUMNS}}
    updated = {**written, "c_int2": 13, "big": UNCHANGED}

    decoders = _decoders(db, server)
    assert len(decoders) >= 1
    # wal2json leaves an unchanged TOASTed column out of the row.
    updated_wal2json = {k: v for k, v in updated.items() if v is not UNCHANGED}
    for label, slot, decoder, binary in decoders:
        events = _peek(db, slot, decoder, binary, server)
        rows = [e for e in events if isinstance(e, (Insert, Update))]
        assert [type(e) for e in rows] == [Insert, Insert, Update], label
        last = updated_wal2json if label.startswith("wal2json") else updated
        for event, expected in zip(rows, [written, nulls, last], strict=True):
            assert event.new is not None
            got = dict(event.new)
            assert list(got) == list(expected), label
            for name, value in expected.items():
                assert same(got[name], value), (label, name, got[name], value)
        assert rows[2].old is None, label


# --- the same workload through every plugin ----------------------------------------------


def _workload(db: Any, server: int) -> None:
    db.execute("INSERT INTO items VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)")
    conn = db.connect()
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("UPDATE items SET qty = qty + 1 WHERE id = 1")
            cur.execute("UPDATE items SET id = 10 WHERE id = 2")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO full_rows VALUES (1, 'a'), (2, NULL)")
            cur.execute("UPDATE full_rows SET note = 'b' WHERE id = 1")
            cur.execute("DELETE FROM full_rows WHERE id = 2")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (99, 'never', 0)")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, 'wl', 'in a transaction')")
            cur.execute("DELETE FROM items WHERE id = 3")
            cur.execute("SELECT pg_logical_emit_message(false, 'wl', 'on its own')")
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("TRUNCATE items")
        conn.commit()
        if server >= 140000:
            with conn.cursor() as cur:
                # Past logical_decoding_work_mem: streamed by pgoutput with streaming on,
                # with a rolled-back subtransaction in it.
                cur.execute(
                    "INSERT INTO full_rows "
                    "SELECT g, repeat('s', 40) FROM generate_series(100, 1099) g"
                )
                cur.execute("SAVEPOINT sp")
                cur.execute(
                    "INSERT INTO full_rows SELECT g, 'gone' FROM generate_series(2000, 2999) g"
                )
                cur.execute("ROLLBACK TO SAVEPOINT sp")
                cur.execute("UPDATE full_rows SET note = 'streamed' WHERE id = 100")
            conn.commit()
        if server >= 150000:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO items VALUES (50, 'prepared', 5)")
                cur.execute("PREPARE TRANSACTION 'wl_gid'")
                cur.execute("COMMIT PREPARED 'wl_gid'")
                cur.execute("BEGIN")
                cur.execute("INSERT INTO items VALUES (51, 'rolled back', 5)")
                cur.execute("PREPARE TRANSACTION 'wl_gid2'")
                cur.execute("ROLLBACK PREPARED 'wl_gid2'")
    finally:
        conn.close()


Change = tuple[Any, ...]


def _change(event: Event) -> Change:
    """A plugin-neutral form of a data event (values as Python objects)."""
    if isinstance(event, Insert):
        return ("insert", event.schema, event.table, _values(event.new), None)
    if isinstance(event, Update):
        old = _values(event.old) if event.old is not None else None
        return ("update", event.schema, event.table, _values(event.new), old)
    if isinstance(event, Delete):
        # NULL columns left out: wal2json format 1 does not write them in an
        # old row, and a delete has no new row to recover them from.
        old = tuple((n, v) for n, v in _values(event.old) if v is not None)
        return ("delete", event.schema, event.table, None, old)
    if isinstance(event, Truncate):
        return ("truncate", event.tables)
    assert isinstance(event, Message)
    return ("message", event.prefix, event.content, event.transactional)


def _values(row: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((name, row[name]) for name in row)


class Transactions:
    """Committed transactions rebuilt from any decoder's events.

    Streamed blocks are gathered by transaction, subtransactions rolled back
    by Stream Abort dropped; prepared transactions count when COMMIT PREPARED
    arrives. ``committed`` is a list of (xid, end LSN, changes, change LSNs);
    ``alone`` lists the non-transactional messages.
    """

    def __init__(self, events: list[Event]) -> None:
        self.committed: list[tuple[int | None, LSN, list[Change], list[LSN]]] = []
        self.alone: list[Change] = []
        pending: dict[int | None, list[tuple[int | None, Event]]] = {}
        prepared: dict[str, tuple[int | None, list[tuple[int | None, Event]]]] = {}
        current: int | None = None
        for event in events:
            if isinstance(event, (Begin, BeginPrepare, StreamStart)):
                current = event.xid
                pending.setdefault(current, [])
            elif isinstance(event, Commit):
                self._commit(current, event.lsn, pending.pop(current, []))
            elif isinstance(event, StreamCommit):
                self._commit(event.xid, event.lsn, pending.pop(event.xid, []))
            elif isinstance(event, (Prepare, StreamPrepare)):
                prepared[event.gid] = (event.xid, pending.pop(event.xid, []))
            elif isinstance(event, CommitPrepared):
                xid, changes = prepared.pop(event.gid)
                self._commit(xid, event.lsn, changes)
            elif isinstance(event, RollbackPrepared):
                prepared.pop(event.gid)
            elif isinstance(event, StreamAbort):
                if event.subxid == event.xid:
                    pending.pop(event.xid, None)
                else:
                    kept = [(x, e) for x, e in pending.get(event.xid, []) if x != event.subxid]
                    pending[event.xid] = kept
            elif isinstance(event, Message) and not event.transactional:
                self.alone.append(_change(event))
            elif isinstance(event, (Insert, Update, Delete, Truncate, Message)):
                pending.setdefault(current, []).append((event.xid, event))
            else:
                assert isinstance(event, (StreamStop, Relation)), event

    def _commit(self, xid: int | None, end: LSN, changes: list[tuple[int | None, Event]]) -> None:
        if changes:  # pgoutput leaves out empty transactions; wal2json 1 does not
            self.committed.append(
                (xid, end, [_change(e) for _, e in changes], [e.lsn for _, e in changes])
            )


def _setup_workload(
    db: Any, server: int, *, two_phase: bool = True
) -> list[tuple[str, str, Decoder, bool]]:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
    db.execute("CREATE TABLE full_rows (id int, note text)")
    db.execute("ALTER TABLE full_rows REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION pub FOR TABLE items, full_rows")
    two_phase = two_phase and server >= 150000
    if server >= 140000:  # the two_phase argument exists from 14
        db.execute(
            "SELECT pg_create_logical_replication_slot('s_pgoutput', 'pgoutput', false, %s)",
            two_phase,
        )
    else:
        db.execute("SELECT pg_create_logical_replication_slot('s_pgoutput', 'pgoutput')")
    decoders: list[tuple[str, str, Decoder, bool]] = []
    pgoutput = make_decoder(
        "pgoutput",
        publication="pub",
        messages=server >= 140000,  # pgoutput sends logical messages from 14
        streaming=server >= 140000,
        two_phase=two_phase,
    )
    decoders.append(("pgoutput", "s_pgoutput", pgoutput, True))
    if db.cluster.has_plugin("wal2json"):
        db.execute("SELECT pg_create_logical_replication_slot('s_wal2json', 'wal2json')")
        for version in (1, 2):
            decoder = make_decoder("wal2json", format_version=version)
            decoders.append((f"wal2json {version}", "s_wal2json", decoder, False))
    if db.cluster.has_plugin("test_decoding"):
        db.execute("SELECT pg_create_logical_replication_slot('s_test', 'test_decoding')")
    return decoders


def test_the_same_workload_gives_the_same_events_from_every_plugin(db: Any) -> None:
    server = _server(db)
    decoders = _setup_workload(db, server)
    _workload(db, server)
    results = {
        label: Transactions(_peek(db, slot, decoder, binary, server))
        for label, slot, decoder, binary in decoders
    }
    reference = results["pgoutput"]
    # What the workload committed: 5 small transactions (the rolled-back one
    # is nowhere), the streamed one, and the prepared-then-committed one.
    expected_count = 5 + (server >= 140000) + (server >= 150000)
    assert len(reference.committed) == expected_count
    if server >= 140000:
        assert reference.alone == [("message", "wl", b"on its own", False)]
    else:
        assert reference.alone == []
    first = reference.committed[0][2]
    assert first[0] == ("insert", "public", "items", (("id", 1), ("name", "one"), ("qty", 1)), None)
    second = reference.committed[1][2]
    assert second == [
        ("update", "public", "items", (("id", 1), ("name", "one"), ("qty", 2)), None),
        ("update", "public", "items", (("id", 10), ("name", "two"), ("qty", 2)), (("id", 2),)),
    ]
    if server >= 140000:
        streamed = reference.committed[5][2]
        assert len(streamed) == 1001  # the rolled-back subtransaction's rows are gone
        assert streamed[-1][3] == (("id", 100), ("note", "streamed"))

    for label, result in results.items():
        if label == "pgoutput":
            continue
        mine = reference.committed
        if label == "wal2json 1":  # format 1 does not report TRUNCATE
            mine = [(x, end, [c for c in ch if c[0] != "truncate"], []) for x, end, ch, _ in mine]
            mine = [t for t in mine if t[2]]
        assert [(x, end) for x, end, _, _ in result.committed] == [
            (x, end) for x, end, _, _ in mine
        ], label
        for theirs, ours in zip(result.committed, mine, strict=True):
            assert theirs[2] == ours[2], label
        assert result.alone == reference.alone, label
        if label == "wal2json 2":
            # Format 2 reports each change's position, as pgoutput does.
            assert [t[3] for t in result.committed] == [t[3] for t in mine], label


_TD_COLUMN = re.compile(r"(\w+)\[[^\]]+\]:('(?:[^']|'')*'|\S+)")


def _td_values(text: str) -> tuple[tuple[str, str | None], ...]:
    out = []
    for name, value in _TD_COLUMN.findall(text):
        if value.startswith("'"):
            out.append((name, value[1:-1].replace("''", "'")))
        else:
            out.append((name, None if value == "null" else value))
    return tuple(out)


def _td_changes(lines: list[str]) -> list[Change]:
    """test_decoding's lines as (kind, table, new, old) with values as the server's text."""
    out: list[Change] = []
    for line in lines:
        if line.startswith(("BEGIN", "COMMIT")):
            continue
        if line.startswith("message:"):
            match = re.match(
                r"message: transactional: (\d) prefix: (.*), sz: \d+ content:(.*)", line
            )
            assert match, line
            out.append(("message", match[2], match[3].encode(), match[1] == "1"))
            continue
        match = re.match(r"table (\S+)\.(\S+): (\w+): (.*)", line)
        assert match, line
        schema, table, kind, rest = match.groups()
        if kind == "TRUNCATE":
            out.append(("truncate", schema, table))
        elif kind == "INSERT":
            out.append(("insert", schema, table, _td_values(rest), None))
        elif kind == "UPDATE":
            if rest.startswith("old-key:"):
                old, new = rest[len("old-key:") :].split("new-tuple:")
                out.append(("update", schema, table, _td_values(new), _td_values(old)))
            else:
                out.append(("update", schema, table, _td_values(rest), None))
        elif kind == "DELETE":
            out.append(("delete", schema, table, None, _td_values(rest)))
    return out


def _text(row: Any, skip_nulls: bool = False) -> Any:
    """A row's values as the server's text (test_decoding leaves NULLs out of old rows)."""
    if row is None:
        return None
    values = [(n, None if row.raw(n) is None else row.raw(n).decode()) for n in row]
    return tuple((n, v) for n, v in values if not (skip_nulls and v is None))


def test_order_and_content_agree_with_test_decoding(db: Any) -> None:
    if not db.cluster.has_plugin("test_decoding"):
        pytest.skip("no test_decoding")
    server = _server(db)
    # A plain slot, like test_decoding's: prepared transactions count at COMMIT PREPARED.
    _setup_workload(db, server, two_phase=False)
    _workload(db, server)
    # pgoutput without streaming or two-phase, values kept as the server's text.
    decoder = make_decoder("pgoutput", publication="pub", messages=True, decode_values=False)
    events = _peek(db, "s_pgoutput", decoder, True, server)
    ours: list[Change] = []
    for event in events:
        if isinstance(event, Truncate):
            ours.extend(("truncate", s, t) for s, t in event.tables)
        elif isinstance(event, (Insert, Update, Delete)):
            new = getattr(event, "new", None)
            old = getattr(event, "old", None)

            ours.append((event.kind, event.schema, event.table, _text(new), _text(old, True)))
        elif isinstance(event, Message):
            ours.append(("message", event.prefix, event.content, event.transactional))
    rows = db.query(
        "SELECT data FROM pg_logical_slot_peek_changes('s_test', NULL, NULL, "
        "'skip-empty-xacts', '1')"
    )
    theirs = _td_changes([r[0] for r in rows])
    # test_decoding prints the whole old row of a REPLICA IDENTITY FULL update
    # or delete and only the key otherwise, as pgoutput sends them; the
    # non-transactional message sits where its record is in the WAL in both;
    # the streamed transaction comes whole, without the rolled-back rows.
    assert ours == theirs
