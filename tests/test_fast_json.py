"""The fast JSON Lines path writes exactly what the reference encoder writes.

:func:`replicant.formatting.json_line` (what the sinks and ``replicant
stream`` write) must give, byte for byte, ``format_json(event) + "\\n"`` in
UTF-8: with msgspec and with the standard library's encoder, on every value
type a server sends (text and binary pgoutput, wal2json) and on random
events. The compiled float4 reader must give what its Python twin gives.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant import Consumer, _accel, envelopes, formatting, values
from replicant.changes import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Event,
    Insert,
    Message,
    Relation,
    Row,
    RowLayout,
    Truncate,
    Update,
)
from replicant.decoders import make_decoder
from replicant.errors import DecodeError, ReplicantError
from replicant.formatting import format_json, json_line
from replicant.lsn import LSN
from replicant.sinks import JsonLinesSink
from replicant.values import BinaryValue, PgArray, PgValue

from .conftest import Database
from .helpers import Recorder
from .type_samples import all_samples, create_all_types, insert_all_types

Line = Callable[[Event], bytes]


def _encoders() -> list[tuple[str, Line]]:
    found = [("json", formatting._json_line_for(None)), ("default", json_line)]
    if formatting._msgspec_module is not None:
        found.append(("msgspec", formatting._json_line_for(formatting._msgspec_module)))
    return found


ENCODERS = _encoders()


def reference(event: Event) -> bytes:
    return (format_json(event) + "\n").encode("utf-8")


def assert_same(event: Event) -> None:
    """Every encoder writes the reference's bytes, or fails as the reference does."""
    try:
        expected: bytes | type[BaseException] = reference(event)
    except Exception as exc:
        expected = type(exc)
    for name, line in ENCODERS:
        if isinstance(expected, bytes):
            assert line(event) == expected, (name, event)
        else:
            with pytest.raises(expected):
                line(event)


def test_msgspec_is_used_when_installed_and_compiled() -> None:
    # The test extra installs msgspec: CI tests that path, and the standard
    # library's in the pure-Python rerun.
    if _accel.compiled is None:
        assert formatting.JSON_ENCODER == "json"
    elif formatting._msgspec_module is not None:
        assert formatting.JSON_ENCODER == "msgspec"


# --- every type a server sends ----------------------------------------------------------


def _all_types(db: Database) -> list[tuple[str, str]]:
    samples = all_samples(db)
    create_all_types(db, samples)
    return samples


def _write_all_types(db: Database, samples: list[tuple[str, str]]) -> None:
    insert_all_types(db, samples)  # rows 1 (every value) and 2 (every column NULL)
    db.execute("UPDATE everything SET id = id + 10")  # old and new rows
    db.execute("DELETE FROM everything")
    db.execute("INSERT INTO everything (id, c0) VALUES (3, 1)")
    db.execute("TRUNCATE everything")


def _stream(db: Database, slot: str, decoder: Any) -> list[Event]:
    """Every event of ``slot`` up to the current WAL position."""
    ((end,),) = db.query("SELECT pg_current_wal_lsn()::text")
    recorder = Recorder()
    Consumer(db.dsn, slot=slot, decoder=decoder, callback=recorder, end_lsn=LSN(end)).run()
    return recorder.events


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_pgoutput_every_type_as_the_reference_writes_it(db: Database, binary: bool) -> None:
    if binary and int(db.query("SHOW server_version_num")[0][0]) < 140000:
        pytest.skip("binary pgoutput needs PostgreSQL 14")
    samples = _all_types(db)
    db.execute("SELECT pg_create_logical_replication_slot('fast', 'pgoutput')")
    _write_all_types(db, samples)
    events = _stream(db, "fast", make_decoder("pgoutput", publication="pub", binary=binary))
    kinds = {type(event) for event in events}
    assert {Begin, Commit, Insert, Update, Delete, Truncate, Relation} <= kinds
    for event in events:
        assert_same(event)
    assert_written_by_the_writer(events)
    assert_envelopes_as_before(events)


@pytest.mark.parametrize("version", [1, 2])
def test_wal2json_every_type_as_the_reference_writes_it(
    wal2json_db: Database, version: int
) -> None:
    db = wal2json_db
    samples = _all_types(db)
    db.execute("SELECT pg_create_logical_replication_slot('fast_w2j', 'wal2json')")
    _write_all_types(db, samples)
    db.execute("SELECT pg_logical_emit_message(true, 'p', 'héllo')")
    events = _stream(db, "fast_w2j", make_decoder("wal2json", format_version=version))
    kinds = {type(event) for event in events}
    assert {Begin, Commit, Insert, Update, Delete, Message} <= kinds
    for event in events:
        assert_same(event)
    assert_written_by_the_writer(events)
    assert_envelopes_as_before(events)


# The types the compiled writer writes itself; of these only dates and
# timestamps out of datetime's range (BC, year 10000) go to the Python code.
_WRITER_TYPES: Final = {16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1700}
_WRITER_TYPES_OUT_OF_RANGE: Final = {1082, 1114, 1184}
_WRITER_TYPES_ALL: Final = _WRITER_TYPES | {2950, 3802} | _WRITER_TYPES_OUT_OF_RANGE


def _unavailable(row: Row) -> dict[str, Any]:
    # envelopes._unavailable, as it was before the compiled writer.
    data = row.to_dict()
    for name, value in data.items():
        if type(value) is dict and value.get("$unchanged") is True:
            data[name] = "__debezium_unavailable_value"
    return data


def _debezium_as_before(envelope: Any, event: Event) -> bytes:
    """DebeziumEnvelope.value of a row event as it was written before the compiled writer."""
    encode = formatting._stdlib_encode
    assert isinstance(event, (Insert, Update, Delete))
    rel = event.relation
    if isinstance(event, Insert):
        before, after, op = "null", encode(event.new.to_dict()), "c"
    elif isinstance(event, Update):
        old = event.old
        before = "null" if old is None else encode(_unavailable(old))
        after, op = encode(_unavailable(event.new)), "u"
    else:
        before, after, op = encode(_unavailable(event.old)), "null", "d"
    source = envelope._source(event.lsn, envelope._txid(event), rel.schema, rel.table)
    record: bytes = envelope._record(before, after, source, op)
    return record


def _read_as_before(envelope: Any, event: Insert) -> bytes:
    encode = formatting._stdlib_encode
    saved = envelope._tx_part
    envelope._tx_part = envelope._transaction_part("true")
    try:
        rel = event.relation
        source = envelope._source(event.lsn, event.xid, rel.schema, rel.table)
    finally:
        envelope._tx_part = saved
    record: bytes = envelope._record("null", encode(event.new.to_dict()), source, "r")
    return record


class _FixedTime:
    @staticmethod
    def time() -> float:
        return 1_700_000_000.125


def _check_row_records(debezium: Any, replicant: Any, event: Insert | Update | Delete) -> None:
    expected = _outcome(lambda: _debezium_as_before(debezium, event))
    assert _outcome(lambda: debezium.value(event)) == expected, event
    expected = _outcome(lambda: format_json(event).encode())
    assert _outcome(lambda: replicant.value(event)) == expected, event
    if isinstance(event, Insert):
        expected = _outcome(lambda: _read_as_before(debezium, event))
        rel, row, lsn, xid = event.relation, event.new, event.lsn, event.xid
        assert _outcome(lambda: debezium.encode_read(rel, row, lsn, xid)) == expected, event


def assert_envelopes_as_before(events: list[Event]) -> None:
    """Both envelopes write what they wrote before the compiled writer, or raise the same."""
    saved = envelopes.time
    envelopes.time = _FixedTime  # type: ignore[assignment]
    try:
        debezium = envelopes.DebeziumEnvelope(name='s "é"', database="app")
        replicant = envelopes.ReplicantEnvelope()
        for event in events:
            if isinstance(event, (Insert, Update, Delete)):
                _check_row_records(debezium, replicant, event)
            else:
                with contextlib.suppress(ReplicantError):
                    debezium.value(event)
                    replicant.value(event)
    finally:
        envelopes.time = saved  # type: ignore[assignment]


def assert_written_by_the_writer(events: list[Event]) -> None:
    """The compiled writer asks the Python code for no column of a type it handles."""
    if _accel.compiled is None:
        return
    writer, asked = _spy_writer()
    for event in events:
        try:
            writer(event)
        except Exception:  # assert_same compared it already
            continue
    assert set(asked) & _WRITER_TYPES_ALL <= _WRITER_TYPES_OUT_OF_RANGE, sorted(set(asked))


# --- random events ------------------------------------------------------------------------

_texts = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", '"', "\\", "\x00\x1f\x7f", "\u2028\u2029", "é☃\U0001f600", "\ud800"]
)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [1e-5, 9.999e-5, 1e-4, 1e16, 9999999999999998.0, 1e21, 5e-324, -0.0, 1e308]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    _floats,
    _texts,
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(timezones=st.none() | st.just(dt.timezone(dt.timedelta(hours=-3, seconds=7)))),
    st.timedeltas(),
    st.binary(max_size=8),
    st.uuids(),
    st.builds(PgValue, st.integers(0, 5000), _texts),
    st.builds(BinaryValue, st.integers(0, 5000), st.binary(max_size=6)),
    st.just(UNCHANGED),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.builds(lambda items: PgArray(items, [0]), st.lists(inner, min_size=1, max_size=3))
        | st.dictionaries(_texts, inner, max_size=3)
    ),
    max_leaves=6,
)


def _row(items: list[Any]) -> Row:
    names = [f"c{i}" for i in range(len(items))]
    return Row(RowLayout(names, [0] * len(items), [lambda v: v] * len(items)), items)


_RELATION = Relation(LSN(1), 5, 1, "public", "t é", (Column("c0", 23, -1, True),), "default")
_lsns = st.integers(min_value=0, max_value=2**64 - 1).map(LSN)
_xids = st.none() | st.integers(min_value=0, max_value=2**32 - 1)
_times = st.none() | st.datetimes(timezones=st.just(dt.timezone.utc))
_rows = st.lists(_values, max_size=5).map(_row)
_events = st.one_of(
    st.builds(Insert, _lsns, _xids, st.just(_RELATION), _rows),
    st.builds(Update, _lsns, _xids, st.just(_RELATION), _rows, st.none() | _rows),
    st.builds(Delete, _lsns, _xids, st.just(_RELATION), _rows),
    st.builds(Begin, _lsns, _xids, st.none() | _lsns, _times),
    st.builds(Commit, _lsns, _xids, st.none() | _lsns, _times),
    st.builds(Message, _lsns, _xids, _texts, st.binary(max_size=8), st.booleans()),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_events)
def test_random_events_as_the_reference_writes_them(event: Event) -> None:
    assert_same(event)


def test_forms_from_the_raw_value_and_unreadable_columns() -> None:
    # Text-mode numeric, timestamps (infinite or not) and json keep the
    # server's text; a value that cannot be read raises DecodeError, as in
    # the reference.
    oids = [values.OID.NUMERIC, values.OID.TIMESTAMPTZ, values.OID.TIMESTAMP, values.OID.JSONB]
    layout = RowLayout(
        ["n", "tz", "ts", "j"],
        oids,
        [values.text_converter(oid) for oid in oids],
        [values.text_json(oid) for oid in oids],
    )
    for raw in (
        [b"1.50", b"2024-01-01 12:00:00+03", b"infinity", b'{"a": null}'],
        [b"NaN", b"-infinity", b"2024-01-01 00:00:00.5", b"null"],
        [None, UNCHANGED, None, UNCHANGED],
        [b"not a number", b"2024-01-01", b"x", b"{"],
    ):
        assert_same(Insert(LSN(2**40 + 5), 9, _RELATION, Row(layout, list(raw))))
    with pytest.raises(DecodeError):
        json_line(Insert(LSN(1), 9, _RELATION, Row(layout, [b"x", None, None, None])))


# --- the sink -------------------------------------------------------------------------------


def test_sink_writes_the_reference_lines_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path, fsync=False)
    relation = Relation(LSN(1), 5, 1, "public", "t", (Column("b", 25, -1, False),), "default")
    layout = RowLayout(["b"], [25], [values.text_converter(25)])
    big = "x" * 1000
    written: list[Event] = [Begin(LSN(10), 5, LSN(99), None)]
    written += [
        Insert(LSN(11 + i), 5, relation, Row(layout, [f"{i} {big}".encode()])) for i in range(3000)
    ]
    for event in written:
        sink.write(event)
    # More than the 1 MiB kept in memory: some lines reached the file mid-transaction.
    assert path.stat().st_size > 0
    commit = Commit(LSN(5000), 5, LSN(99), None)
    sink.write(commit)
    written.append(commit)
    # The batch's end hands every line to the operating system, before any flush.
    sink.batch_end()
    assert path.read_bytes() == b"".join(reference(event) for event in written)
    assert sink.flush() == LSN(5000)
    tail = Insert(LSN(6000), 6, relation, Row(layout, [b"last"]))
    sink.write(tail)
    sink.close()  # what was not flushed yet still reaches the file
    assert path.read_bytes().endswith(reference(tail))


def test_sink_with_another_formatter_encodes_its_text(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    sink = JsonLinesSink(path, fsync=False, formatter=formatting.format_text)
    event = Commit(LSN(7), 1, LSN(6), None)
    sink.write(event)
    sink.close()
    assert path.read_text() == formatting.format_text(event) + "\n"


# --- float4 ----------------------------------------------------------------------------------


def _shortest_by_counting(data: bytes) -> float:
    """The definition: the fewest significant digits that read back as the same float32."""
    (value,) = struct.unpack(">f", data)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == data:
                return candidate
        except OverflowError:
            continue
    raise AssertionError("9 digits always read back")


def _float4_cases() -> list[bytes]:
    cases = []
    # Powers of two and their neighbours (where the float32 spacing changes,
    # so the rounding interval is lopsided), the extremes, subnormals.
    for exponent in range(0, 255):
        for mantissa in (0, 1, 0x7FFFFF, 0x400000):
            for sign in (0, 1):
                cases.append(struct.pack(">I", sign << 31 | exponent << 23 | mantissa))
    return cases


@pytest.mark.skipif(_accel.compiled is None, reason="the compiled module is not in use")
@settings(max_examples=3000)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_compiled_float4_is_its_python_twin(bits: int) -> None:
    assert _accel.compiled is not None
    data = struct.pack(">I", bits)
    python = values._float4_bin_python(data)
    compiled = _accel.compiled.float4_bin(data)
    assert type(compiled) is float
    if math.isnan(python):
        assert math.isnan(compiled)
    else:
        assert struct.pack(">d", compiled) == struct.pack(">d", python)


def test_float4_is_the_shortest_where_the_spacing_changes() -> None:
    read = values.binary_converter(values.OID.FLOAT4)
    for data in _float4_cases():
        (value,) = struct.unpack(">f", data)
        got = read(data)
        if math.isnan(value):
            assert math.isnan(got)
        elif math.isinf(value):
            assert got == value
        else:
            assert struct.pack(">d", got) == struct.pack(">d", _shortest_by_counting(data))
        assert struct.pack(">d", got) == struct.pack(">d", values._float4_bin_python(data)) or (
            math.isnan(got)
        )


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00", b"\x00" * 5], ids=["0", "3", "5"])
def test_float4_of_another_size_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError, match=f"has {len(data)} bytes, expected 4"):
        values.binary_converter(values.OID.FLOAT4)(data)
    with pytest.raises(DecodeError, match=f"has {len(data)} bytes, expected 4"):
        values.binary_reader(values.OID.FLOAT4)(data)


def test_odd_values_keep_their_reference_form() -> None:
    # Python's own text for floats msgspec writes otherwise, ints past 64 bits,
    # and what only json refuses (a surrogate cannot be UTF-8).
    odd = [1e-7, 1.5e-5, 1e16, 1.5e300, 2**64 + 1, -(2**70), Decimal("-0.00"), uuid.UUID(int=7)]
    assert_same(Insert(LSN(3), None, _RELATION, _row(odd)))
    assert_same(Insert(LSN(3), None, _RELATION, _row([[math.nan, [math.inf, 1e-9]]])))
    with pytest.raises(UnicodeEncodeError):
        json_line(Insert(LSN(3), None, _RELATION, _row(["\udc80"])))


# --- wal2json parsed with msgspec ---------------------------------------------------------

_W2J_DOCUMENTS = [
    b'{"action":"B","xid":7,"lsn":"0/16B0000","timestamp":"2024-01-01 00:00:01+00"}',
    b'{"action":"I","xid":7,"lsn":"0/16B0010","schema":"public","table":"t","columns":['
    b'{"name":"i","type":"bigint","typeoid":20,"value":-9223372036854775808},'
    b'{"name":"n","type":"numeric","typeoid":1700,"value":123456789012345678901234567890.10},'
    b'{"name":"e","type":"numeric","typeoid":1700,"value":1E+5},'
    b'{"name":"z","type":"double precision","typeoid":701,"value":-0.0},'
    b'{"name":"f","type":"real","typeoid":700,"value":1004.3},'
    b'{"name":"b","type":"boolean","typeoid":16,"value":true},'
    b'{"name":"s","type":"text","typeoid":25,"value":"a-0x \\"b\\" \\u00e9"},'
    b'{"name":"u","type":"text","typeoid":25,"value":null}],'
    b'"pk":[{"name":"i","type":"bigint","typeoid":20}]}',
    b'{"action":"U","xid":7,"lsn":"0/16B0020","schema":"public","table":"t","columns":['
    b'{"name":"i","type":"bigint","typeoid":20,"value":5},'
    b'{"name":"z","type":"double precision","typeoid":701,"value":0}],'
    b'"identity":[{"name":"i","type":"bigint","typeoid":20,"value":4}],'
    b'"pk":[{"name":"i","type":"bigint","typeoid":20}]}',
    b'{"action":"C","xid":7,"lsn":"0/16B0030","nextlsn":"0/16B0040",'
    b'"timestamp":"2024-01-01 00:00:01+00"}',
]
_W2J_V1 = (
    b'{"xid":8,"nextlsn":"0/16C0000","timestamp":"2024-01-01 00:00:01+00","change":[{"kind":'
    b'"insert","schema":"public","table":"t","columnnames":["i","z","n"],"columntypes":'
    b'["bigint","double precision","numeric"],"columntypeoids":[20,701,1700],'
    b'"columnvalues":[1,-0,2.50],"pk":{"pknames":["i"],"pktypes":["bigint"]}}]}'
)


def _w2j_events(fast: bool, documents: list[bytes], version: int) -> list[Any]:
    from replicant.decoders import wal2json

    saved, saved_fields = wal2json._FAST_PARSE, wal2json._record_fields
    if not fast:
        wal2json._FAST_PARSE = None
    # The compiled reader would take the format 2 records on both sides: this
    # compares the two parses of the JSON (tests/test_wal2json_fast.py holds
    # the compiled reader to the reference).
    wal2json._record_fields = None
    try:
        decoder = make_decoder("wal2json", format_version=version)
        out = []
        for i, document in enumerate(documents):
            for event in decoder.decode(document, 1000 + i, 1000 + i):
                rows = [getattr(event, side, None) for side in ("new", "old")]
                raw = [[row.raw(n) for n in row] if row is not None else None for row in rows]
                read = [dict(row) if row is not None else None for row in rows]
                out.append((type(event), event.lsn, event.xid, raw, read, reference(event)))
        return out
    finally:
        wal2json._FAST_PARSE, wal2json._record_fields = saved, saved_fields


def test_wal2json_parsed_by_msgspec_gives_the_same_events() -> None:
    from replicant.decoders import wal2json

    if wal2json._FAST_PARSE is None:
        pytest.skip("msgspec is not in use")
    # Through msgspec, but for the format 1 document: its -0 goes the standard
    # library's way (msgspec would read it as the integer 0).
    assert all(not wal2json._NEGATIVE_ZERO.search(d) for d in _W2J_DOCUMENTS)
    assert wal2json._NEGATIVE_ZERO.search(_W2J_V1)
    for documents, version in ((_W2J_DOCUMENTS, 2), ([_W2J_V1], 1)):
        fast = _w2j_events(True, documents, version)
        slow = _w2j_events(False, documents, version)
        assert repr(fast) == repr(slow)  # repr: -0.0 and 0.0 differ, NaN equals itself
    (_, _, _, raw, read, _) = _w2j_events(True, _W2J_DOCUMENTS, 2)[1]
    (_, _, _, raw1, read1, _) = _w2j_events(True, [_W2J_V1], 1)[1]
    assert raw1[0] == ["1", "-0", "2.50"] and math.copysign(1.0, read1[0]["z"]) == -1.0
    big = "123456789012345678901234567890.10"
    assert raw[0][:4] == ["-9223372036854775808", big, "1E+5", "-0.0"]
    assert math.copysign(1.0, read[0]["z"]) == -1.0
    assert read[0]["n"] == Decimal("123456789012345678901234567890.10")
    for bad in (b'{"action":"I"', b'{"action":"B"} x', b'["\xff"]', b'{"action":"X"}'):
        with pytest.raises(DecodeError) as fast_error:
            make_decoder("wal2json").decode(bad, 1, 1)
        assert "wal2json" in str(fast_error.value)


# --- datetimes --------------------------------------------------------------------------------


class _DayLong(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(days=1)  # out of range: isoformat() raises ValueError


class _NoOffset(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> None:
        return None


_zones = (
    st.none()
    | st.timezones()
    | st.builds(
        dt.timezone,
        st.timedeltas(
            min_value=dt.timedelta(hours=-23, minutes=-59),
            max_value=dt.timedelta(hours=23, minutes=59),
        ),
    )
)


@pytest.mark.skipif(_accel.compiled is None, reason="the compiled module is not in use")
@settings(max_examples=1500, deadline=None)
@given(st.datetimes(timezones=_zones))
def test_compiled_isoformat_is_the_method(value: dt.datetime) -> None:
    assert _accel.compiled is not None
    assert _accel.compiled.isoformat(value) == value.isoformat()


@pytest.mark.skipif(_accel.compiled is None, reason="the compiled module is not in use")
def test_compiled_isoformat_of_odd_zones_is_the_methods() -> None:
    assert _accel.compiled is not None
    iso = _accel.compiled.isoformat
    assert iso(dt.datetime(2020, 1, 1, tzinfo=_NoOffset())) == "2020-01-01T00:00:00"
    with pytest.raises(ValueError):
        iso(dt.datetime(2020, 1, 1, tzinfo=_DayLong()))

    class Later(dt.datetime):
        def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
            return "later"

    assert iso(Later(2020, 1, 1)) == "later"
    assert iso(dt.datetime(1, 1, 1, 0, 0, 0, 1)) == "0001-01-01T00:00:00.000001"


# --- the compiled row encoder: every type it writes, on generated raw values ----------------
#
# formatting.json_line and formatting.row_json write a row from its values as
# received (compiled: _speedups.JsonWriter). For each type and representation
# the writer handles, random raw values (what a server sends, and what it
# could not: malformed texts, wrong sizes, out-of-range dates) must give the
# reference's bytes, or its exception with the same message.

compiled_only = pytest.mark.skipif(
    _accel.compiled is None, reason="the compiled module is not in use"
)
OID = values.OID
_stdlib = formatting._stdlib_encode


def _outcome(call: Callable[[], bytes]) -> bytes | tuple[type[BaseException], str]:
    try:
        return call()
    except Exception as exc:
        return type(exc), str(exc)


def _debezium_reference(row: Row) -> bytes:
    # envelopes._unavailable before the compiled writer: to_dict, placeholder, json.
    data = row.to_dict()
    for name, value in data.items():
        if type(value) is dict and value.get("$unchanged") is True:
            data[name] = "__debezium_unavailable_value"
    return _stdlib(data).encode()


def assert_row_same(layout: RowLayout, raw: list[Any]) -> None:
    """json_line, row_json (plain and Debezium's) of a row of ``raw`` are the reference's."""

    def event() -> Insert:
        return Insert(LSN(2**33 + 7), 5, _RELATION, Row(layout, list(raw)))

    expected = _outcome(lambda: reference(event()))
    assert _outcome(lambda: json_line(event())) == expected, raw
    for name, line in ENCODERS:
        if isinstance(expected, bytes):
            assert line(event()) == expected, (name, raw)
        else:
            with pytest.raises(expected[0]):
                line(event())
    plain = _outcome(lambda: _stdlib(Row(layout, list(raw)).to_dict()).encode())
    assert _outcome(lambda: formatting.row_json(Row(layout, list(raw)))) == plain, raw
    debezium = _outcome(lambda: _debezium_reference(Row(layout, list(raw))))
    assert _outcome(lambda: formatting.row_json(Row(layout, list(raw)), True)) == debezium, raw
    old_row = Row(layout, list(raw))
    update = Update(LSN(2**33 + 8), 5, _RELATION, Row(layout, list(raw)), old_row)
    assert_envelopes_as_before([event(), update, Delete(LSN(9), None, _RELATION, old_row)])


def _text_layout(oids: list[int], names: list[str] | None = None) -> RowLayout:
    names = names or [f"c{i}" for i in range(len(oids))]
    return RowLayout(
        names, oids, [values.text_reader(o) for o in oids], [values.text_json(o) for o in oids]
    )


def _binary_layout(oids: list[int]) -> RowLayout:
    return RowLayout(
        [f"c{i}" for i in range(len(oids))],
        oids,
        [values.binary_reader(o) for o in oids],
        [values.binary_json(o) for o in oids],
    )


def _wal2json_layout(oids: list[int]) -> RowLayout:
    from replicant.decoders import wal2json

    return RowLayout(
        [f"c{i}" for i in range(len(oids))],
        oids,
        [wal2json._converter(o) for o in oids],
        [wal2json._json_form(o) for o in oids],
    )


def _server_text(value: dt.datetime) -> str:
    """A datetime as the server writes it (DateStyle ISO): fraction trimmed, short offsets."""
    text = value.replace(tzinfo=None).isoformat(sep=" ")
    if "." in text:
        text = text.rstrip("0")
    offset = value.utcoffset()
    if offset is not None:
        seconds = int(offset.total_seconds())
        sign = "-" if seconds < 0 else "+"
        h, rest = divmod(abs(seconds), 3600)
        m, s = divmod(rest, 60)
        text += f"{sign}{h:02d}" + (f":{m:02d}" if m or s else "") + (f":{s:02d}" if s else "")
    return text


_offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=dt.timedelta(hours=-15), max_value=dt.timedelta(hours=15)).map(
        lambda d: dt.timedelta(seconds=int(d.total_seconds()))
    ),
)


def _edited(texts: st.SearchStrategy[str], alphabet: str) -> st.SearchStrategy[str]:
    """``texts`` with one character replaced, inserted or deleted: text just off a valid form."""

    def edit(text: str, where: int, how: int, char: str) -> str:
        at = where % (len(text) + 1)
        if how == 0:
            return text[:at] + char + text[at + 1 :]
        if how == 1:
            return text[:at] + char + text[at:]
        return text[:at] + text[at + 1 :]

    return st.builds(edit, texts, st.integers(0, 60), st.integers(0, 2), st.sampled_from(alphabet))


_NUMBERISH = "0123456789.eE+-_ naNIfity"
_int_texts = (
    st.integers(-(2**70), 2**70).map(str)
    | st.text("0123456789-+_ x", max_size=22)
    | st.sampled_from(["-0", "007", "", "+1", " 1", "1" * 4000, "1" * 4001, "1" * 5000, "١٢"])
)
_int_texts = _int_texts | _edited(_int_texts, "0123456789-+ _.")
_float_texts = (
    st.floats().map(repr)
    | st.floats(width=32).map(str)
    | st.text(_NUMBERISH, max_size=12)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "inf", " 1.5", "1_0", "-0"])
)
_float_texts = _float_texts | _edited(_float_texts, _NUMBERISH)
_numeric_texts = (
    st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,12})?", fullmatch=True)
    | st.text(_NUMBERISH, max_size=12)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "sNaN", "1e999999999", "1e9999999999999999"])
)
_numeric_texts = _numeric_texts | _edited(_numeric_texts, _NUMBERISH)
_INFINITIES = st.sampled_from(["infinity", "-infinity", "Infinity", "", "epoch"])


# A date or timestamp in the server's form with at most one field off: out of
# its range, or (for years) of datetime's.
_FIELDS: list[tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = [
    (st.integers(1, 9999), st.sampled_from([0, 10000, 99999])),  # year
    (st.integers(1, 12), st.sampled_from([0, 13])),  # month
    (st.integers(1, 28), st.integers(29, 32)),  # day (29 to 31 valid in some months)
    (st.integers(0, 23), st.sampled_from([24, 25, 99])),  # hour
    (st.integers(0, 59), st.sampled_from([60, 99])),  # minute
    (st.integers(0, 59), st.sampled_from([60, 61])),  # second
    (st.from_regex(r"(\.[0-9]{1,6})?", fullmatch=True), st.sampled_from([".", ".1234567", ",5"])),
    (
        st.tuples(
            st.sampled_from("+-"),
            st.integers(0, 15),
            st.none() | st.integers(0, 59),
            st.none() | st.integers(0, 59),
        ),
        st.sampled_from(
            [("+", 24, None, None), ("-", 5, 60, None), ("+", 1, 2, 60), ("Z", 0, 0, 0)]
        ),
    ),
    (st.just(""), st.sampled_from([" BC", " AD", "BC"])),  # era
]


def _stamp_texts(kind: int) -> st.SearchStrategy[str]:
    """Dates (kind 0), timestamps (1), timestamps with a zone (2)."""

    def text(fields: list[Any]) -> str:
        y, mo, d, h, mi, sec, fraction, zone, era = fields
        out = f"{y:04d}-{mo:02d}-{d:02d}"
        if kind:
            out += f" {h:02d}:{mi:02d}:{sec:02d}{fraction}"
        if kind == 2:
            sign, zh, zm, zs = zone
            out += f"{sign}{zh:02d}" + ("" if zm is None else f":{zm:02d}")
            out += "" if zm is None or zs is None else f":{zs:02d}"
        return out + era

    @st.composite
    def draw(data: st.DrawFn) -> str:
        odd = data(st.sampled_from([None, None, *range(len(_FIELDS))]))
        fields = [data(bad if i == odd else good) for i, (good, bad) in enumerate(_FIELDS)]
        return text(fields)

    return draw()


_date_texts = st.dates().map(str) | _stamp_texts(0) | _stamp_texts(0) | _INFINITIES
_date_texts = _date_texts | _edited(_date_texts, "0123456789- BC")
_timestamp_texts = (
    st.datetimes().map(_server_text) | _stamp_texts(1) | _stamp_texts(1) | _INFINITIES
)
_timestamp_texts = _timestamp_texts | _edited(_timestamp_texts, "0123456789-: .")
_timestamptz_texts = (
    st.datetimes(timezones=_offsets | st.just(dt.timezone.utc)).map(_server_text)
    | _stamp_texts(2)
    | _stamp_texts(2)
    | _INFINITIES
)
_timestamptz_texts = _timestamptz_texts | _edited(_timestamptz_texts, "0123456789-: .+Z")
_uuid_texts = (
    st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.uuids().map(lambda u: u.hex)
    | st.uuids().map(lambda u: "{" + str(u) + "}")
    | st.text("0123456789abcdefABCDEF-g", min_size=34, max_size=38)
)
_uuid_texts = _uuid_texts | _edited(_uuid_texts, "0123456789abcdefABCDEF-g{}")
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _texts
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)
_json_texts = (
    st.builds(
        lambda v, ascii, sep: __import__("json").dumps(v, ensure_ascii=ascii, separators=sep),
        _json_values,
        st.booleans(),
        st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", "\t:\r")]),
    )
    | st.text('{}[]",:0123456789.eE+-truefalsnNIiy \\u\t\n/', max_size=30)
    | st.sampled_from(
        [
            "NaN",
            "[Infinity]",
            "-Infinity",
            "\ufeff{}",
            '"\\ud800"',
            "1" * 4001,
            "1" * 5000 + ".5",
            "[" * 300 + "]" * 300,
            "[" * 150 + "]" * 150,
            '"\x01"',
            '"\x7f"',
            " null ",
            "01",
            "1.",
            "1e",
            '{"a" 1}',
            "[1,]",
            '"\\x"',
        ]
    )
)
_json_texts = _json_texts | _edited(_json_texts, '{}[]",:0123456789.eE+-tfnNI \\u\t\x01/')
_bytea_texts = (
    st.binary(max_size=12).map(lambda b: "\\x" + b.hex())
    | st.binary(max_size=12).map(lambda b: "\\x" + b.hex().upper())
    | st.text("\\x0123456789abcdefABCDEFg ", max_size=14)
    | st.just("\\000")
)
_any_text = st.text(max_size=12) | st.sampled_from(["", "é", 'a"b\\c\n\x00\x1f\x7f', "\u2028"])
_raw_bytes = st.binary(max_size=14)
# (type OID, its texts): every text-mode type the compiled writer handles.
_TEXT_CASES: list[tuple[int, st.SearchStrategy[str]]] = [
    (OID.INT2, _int_texts),
    (OID.INT4, _int_texts),
    (OID.INT8, _int_texts),
    (OID.OID, _int_texts),
    (OID.TEXT, _any_text),
    (OID.VARCHAR, _any_text),
    (OID.BPCHAR, _any_text),
    (OID.NAME, _any_text),
    (OID.CHAR, _any_text),
    (OID.BOOL, st.sampled_from(["t", "f", "true", "T", "", "tt"])),
    (OID.FLOAT4, _float_texts),
    (OID.FLOAT8, _float_texts),
    (OID.NUMERIC, _numeric_texts),
    (OID.DATE, _date_texts),
    (OID.TIMESTAMP, _timestamp_texts),
    (OID.TIMESTAMPTZ, _timestamptz_texts),
    (OID.UUID, _uuid_texts),
    (OID.JSON, _json_texts),
    (OID.JSONB, _json_texts),
    (OID.BYTEA, _bytea_texts),
    (99999, _any_text),  # a type replicant has no reader for: its text
]


def _encoded(texts: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    # As UTF-8, or (now and then) bytes no strict UTF-8 decoder reads.
    # (A lone surrogate in a text becomes bytes strict UTF-8 refuses.)
    encode = str.encode

    def utf8(text: str) -> bytes:
        return encode(text, "utf-8", "surrogatepass")

    plain = texts.map(utf8)
    return st.one_of(
        plain, plain, plain, texts.map(lambda t: utf8(t) + b"\xed\xa0\x80"), _raw_bytes
    )


@pytest.mark.parametrize(("oid", "texts"), _TEXT_CASES, ids=[str(o) for o, _ in _TEXT_CASES])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_text_values_as_the_reference_writes_them(
    oid: int, texts: st.SearchStrategy[str], data: st.DataObject
) -> None:
    for value in data.draw(st.lists(_encoded(texts), min_size=1, max_size=6)):
        assert_row_same(_text_layout([oid, OID.INT4]), [value, b"1"])


@pytest.mark.parametrize(("oid", "texts"), _TEXT_CASES, ids=[str(o) for o, _ in _TEXT_CASES])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_wal2json_values_as_the_reference_writes_them(
    oid: int, texts: st.SearchStrategy[str], data: st.DataObject
) -> None:
    # wal2json gives str (numbers as their text), JSON booleans for bool.
    text = data.draw(texts | st.just("\ud800"))
    if oid == OID.BYTEA:
        text = text.removeprefix("\\x")
    value: Any = (
        data.draw(st.sampled_from([True, False])) if oid == OID.BOOL and text == "" else text
    )
    assert_row_same(_wal2json_layout([oid]), [value])


def _numeric_binary(
    digits: list[int], weight: int, sign: int, dscale: int, ndigits: int | None
) -> bytes:
    count = len(digits) if ndigits is None else ndigits
    head = struct.pack(">HhHH", count, weight, sign, dscale)
    return head + b"".join(struct.pack(">H", d) for d in digits)


_numeric_binaries = st.builds(
    _numeric_binary,
    st.lists(st.integers(0, 9999) | st.integers(0, 65535), max_size=6),
    st.integers(-8, 8) | st.integers(-32768, 32767),
    st.sampled_from([0, 0x4000, 0xC000, 0xD000, 0xF000, 0x1234]),
    st.integers(0, 12) | st.sampled_from([0x3FFF, 0x4000, 0xFFFF]),
    st.none() | st.integers(0, 8),
) | st.binary(max_size=12)
_MICROS_RANGE = (-63_000_000_000_000_000, 252_500_000_000_000_000)  # about years 4 BC to 10000
_timestamp_binaries = (
    st.integers(*_MICROS_RANGE).map(lambda n: struct.pack(">q", n))
    | st.integers(-(2**63), 2**63 - 1).map(lambda n: struct.pack(">q", n))
    | st.sampled_from([struct.pack(">q", 2**63 - 1), struct.pack(">q", -(2**63))])
    | st.binary(max_size=9)
)
_date_binaries = (
    st.integers(-800_000, 3_000_000).map(lambda n: struct.pack(">i", n))
    | st.integers(-(2**31), 2**31 - 1).map(lambda n: struct.pack(">i", n))
    | st.sampled_from([struct.pack(">i", 2**31 - 1), struct.pack(">i", -(2**31))])
    | st.binary(max_size=5)
)


def _packed(fmt: str, numbers: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return numbers.map(lambda n: struct.pack(fmt, n)) | st.binary(max_size=9)


_json_binaries = _encoded(_json_texts)
_BINARY_CASES: list[tuple[int, st.SearchStrategy[bytes]]] = [
    (OID.INT2, _packed(">h", st.integers(-(2**15), 2**15 - 1))),
    (OID.INT4, _packed(">i", st.integers(-(2**31), 2**31 - 1))),
    (OID.INT8, _packed(">q", st.integers(-(2**63), 2**63 - 1))),
    (OID.OID, _packed(">I", st.integers(0, 2**32 - 1))),
    (OID.TEXT, _encoded(_any_text)),
    (OID.VARCHAR, _encoded(_any_text)),
    (OID.BOOL, st.binary(max_size=2)),
    (OID.FLOAT4, _packed(">f", st.floats(width=32))),
    (OID.FLOAT8, _packed(">d", st.floats())),
    (OID.NUMERIC, _numeric_binaries),
    (OID.DATE, _date_binaries),
    (OID.TIMESTAMP, _timestamp_binaries),
    (OID.TIMESTAMPTZ, _timestamp_binaries),
    (OID.UUID, st.binary(min_size=15, max_size=17)),
    (OID.JSON, _json_binaries),
    (
        OID.JSONB,
        st.sampled_from([b"\x01", b"\x02", b""]).flatmap(
            lambda head: _json_binaries.map(lambda body: head + body)
        ),
    ),
    (OID.BYTEA, st.binary(max_size=20)),
]


@pytest.mark.parametrize(("oid", "raws"), _BINARY_CASES, ids=[str(o) for o, _ in _BINARY_CASES])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_binary_values_as_the_reference_writes_them(
    oid: int, raws: st.SearchStrategy[bytes], data: st.DataObject
) -> None:
    for value in data.draw(st.lists(raws, min_size=1, max_size=6)):
        assert_row_same(_binary_layout([oid, OID.INT8]), [value, struct.pack(">q", -1)])


# What a server sends for each type the writer handles, as it sends it: the
# writer writes these itself (the Python code is not asked).
_SERVER_TEXT: list[tuple[int, bytes]] = [
    (OID.INT8, b"-9223372036854775808"),
    (OID.INT4, b"42"),
    (OID.INT2, b"0"),
    (OID.OID, b"4294967295"),
    (OID.TEXT, 'héllo "q" \\ ☃\n\x01'.encode()),
    (OID.VARCHAR, b""),
    (OID.BPCHAR, b"ab  "),
    (OID.NAME, b"a name"),
    (OID.BOOL, b"t"),
    (OID.BOOL, b"f"),
    (OID.FLOAT4, b"1004.3"),
    (OID.FLOAT8, b"-1.5e-300"),
    (OID.FLOAT8, b"NaN"),
    (OID.FLOAT8, b"-Infinity"),
    (OID.NUMERIC, b"12.50"),
    (OID.NUMERIC, b"-0.0000000500"),
    (OID.NUMERIC, b"NaN"),
    (OID.DATE, b"2024-02-29"),
    (OID.DATE, b"infinity"),
    (OID.TIMESTAMP, b"2024-01-01 00:00:00.000001"),
    (OID.TIMESTAMP, b"-infinity"),
    (OID.TIMESTAMPTZ, b"2024-05-06 07:08:09.123+00"),
    (OID.TIMESTAMPTZ, b"2024-01-01 12:00:00-05:30"),
    (OID.TIMESTAMPTZ, b"1900-01-01 00:00:00+01:23:45"),
    (OID.UUID, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (OID.JSON, b'{"a": 1, "a": [2, null, "\\u00e9"]}'),
    (OID.JSONB, b"null"),
    (OID.BYTEA, b"\\x00ff10"),
]
_SERVER_BINARY: list[tuple[int, bytes]] = [
    (OID.INT8, struct.pack(">q", -(2**63))),
    (OID.INT4, struct.pack(">i", 42)),
    (OID.INT2, struct.pack(">h", -1)),
    (OID.OID, struct.pack(">I", 2**32 - 1)),
    (OID.TEXT, 'é"'.encode()),
    (OID.BOOL, b"\x01"),
    (OID.FLOAT4, struct.pack(">f", 1004.3)),
    (OID.FLOAT8, struct.pack(">d", 0.1)),
    (OID.NUMERIC, _numeric_binary([12, 5000], 0, 0, 2, None)),
    (OID.NUMERIC, _numeric_binary([5, 0], -3, 0x4000, 10, None)),
    (OID.DATE, struct.pack(">i", 8825)),
    (OID.TIMESTAMP, struct.pack(">q", 1)),
    (OID.TIMESTAMPTZ, struct.pack(">q", 768_000_000_123_000)),
    (OID.TIMESTAMPTZ, struct.pack(">q", 2**63 - 1)),
    (OID.UUID, uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").bytes),
    (OID.JSON, b'{"a": 1}'),
    (OID.JSONB, b'\x01{"n": 1.0}'),
    (OID.BYTEA, b"\x00\xff\x10"),
]


def _spy_writer() -> tuple[Any, list[int]]:
    """A JsonWriter like formatting's that records the columns it asks the Python code for."""
    assert _accel.compiled is not None
    asked: list[int] = []

    def column(row: Row, i: int, debezium: bool) -> str:
        asked.append(row._layout.type_oids[i])
        return formatting._column_json(row, i, debezium)

    writer = _accel.compiled.JsonWriter(
        formatting._json_plan,
        column,
        formatting._row_bytes,
        formatting._json_line_for(None),
        formatting._python_json_line,
        Row,
        LSN,
        Insert,
        Update,
        Delete,
        UNCHANGED,
        Begin,
        Commit,
        dt.datetime,
        dt.datetime.isoformat,
    )
    return writer, asked


@compiled_only
def test_what_servers_send_is_written_without_the_python_code() -> None:
    writer, asked = _spy_writer()
    for layout_of, cases in ((_text_layout, _SERVER_TEXT), (_binary_layout, _SERVER_BINARY)):
        oids = [oid for oid, _ in cases]
        raw = [value for _, value in cases]
        for row_raw in (raw, [None] * len(raw), [UNCHANGED] * len(raw)):
            event = Update(LSN(9), 3, _RELATION, Row(layout_of(oids), list(row_raw)), None)
            assert writer(event) == reference(event)
            row = Row(layout_of(oids), list(row_raw))
            assert writer.row(row, True) == _debezium_reference(row)
            assert_row_same(layout_of(oids), list(row_raw))
    w2j = [(oid, value.decode()) for oid, value in _SERVER_TEXT if oid != OID.BYTEA]
    w2j += [(OID.BOOL, True), (OID.BOOL, False), (OID.BYTEA, "00ff")]  # type: ignore[list-item]
    layout = _wal2json_layout([oid for oid, _ in w2j])
    event = Delete(LSN(9), None, _RELATION, Row(layout, [value for _, value in w2j]))
    assert writer(event) == reference(event)
    assert asked == []


@compiled_only
def test_a_value_the_writer_is_not_sure_of_goes_to_the_python_code() -> None:
    writer, asked = _spy_writer()
    oids = [OID.INT4, OID.DATE, OID.TIMESTAMPTZ, OID.INTERVAL, OID.INT4]
    layout = _text_layout(oids)
    raw = [b"007", b"0044-03-15 BC", b"10000-01-01 00:00:00+00", b"1 mon", b"1"]
    event = Insert(LSN(9), 3, _RELATION, Row(layout, raw))
    assert writer(event) == reference(event)
    assert asked == oids[:4]  # the last column is the writer's own
    asked.clear()
    bad = Insert(LSN(9), 3, _RELATION, Row(layout, [b"1", b"2024-13-01", None, None, b"x"]))
    with pytest.raises(DecodeError) as error:
        writer(bad)
    with pytest.raises(DecodeError) as expected:
        reference(bad)
    assert str(error.value) == str(expected.value)
    assert asked == [OID.DATE]  # the first column it cannot write raises, as in the reference


@compiled_only
def test_json_line_is_the_compiled_writer() -> None:
    assert isinstance(json_line, _accel.compiled.JsonWriter)  # type: ignore[union-attr]


def test_unchanged_null_and_names_that_need_escapes() -> None:
    names = ['a"b', "back\\slash", "new\nline", "é☃\U0001f600", "\x00\x1f", "", "\u2028"]
    oids = [OID.INT4, OID.TEXT, OID.NUMERIC, OID.TIMESTAMPTZ, OID.JSONB, OID.BOOL, OID.BYTEA]
    layout = _text_layout(oids, names)
    raw = [b"1", b"x", b"1.5", b"2024-01-01 00:00:00+00", b"[]", b"t", b"\\x00"]
    assert_row_same(layout, raw)
    assert_row_same(layout, [None, UNCHANGED] * 3 + [None])
    assert_row_same(layout, [UNCHANGED, None] * 3 + [UNCHANGED])
    # A name no UTF-8 can hold, and repeated names (to_dict keeps the last value).
    assert_row_same(_text_layout([OID.INT4, OID.TEXT], ["\ud800", "b"]), [b"1", b"x"])
    assert_row_same(_text_layout([OID.INT4, OID.TEXT], ["a", "a"]), [b"1", b"x"])
    assert_row_same(_text_layout([], []), [])
    # A str with a lone surrogate (a JSON plugin can give one): UnicodeEncodeError,
    # unless a later column raises DecodeError first, as in the reference.
    w2j = _wal2json_layout([OID.TEXT, OID.INT4])
    assert_row_same(w2j, ["\udc80", "1"])
    assert_row_same(w2j, ["\udc80", "x"])
    with pytest.raises(UnicodeEncodeError):
        json_line(Insert(LSN(3), None, _RELATION, Row(w2j, ["\udc80", "1"])))


def test_strict_values_and_raw_values_layouts() -> None:
    # strict_values readers, and a decoder that keeps the raw values (decode_values=False).
    oids = [OID.INT4, OID.TEXT, OID.TIMESTAMPTZ, OID.DATE]
    strict = RowLayout(
        ["a", "b", "c", "d"],
        oids,
        [values.text_reader(o, strict=True) for o in oids],
        [values.text_json(o) for o in oids],
    )
    assert_row_same(strict, [b"1", b"x", b"2024-01-01 00:00:00+00", b"0044-03-15 BC"])
    kept = RowLayout(["a", "b"], [OID.INT4, OID.TEXT], [lambda v: v, lambda v: v])
    assert_row_same(kept, [b"1", b"x"])


# --- Begin and Commit -------------------------------------------------------------------------

_frame_times = (
    st.none()
    | st.datetimes(timezones=_zones)
    | st.builds(
        lambda zone: dt.datetime(2020, 1, 1, tzinfo=zone),
        st.sampled_from([_NoOffset(), _DayLong()]),
    )
)
_frame_lsns = _lsns | st.none() | st.integers(0, 2**70) | st.sampled_from([True, "0/1", 1.5])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([Begin, Commit]),
    _frame_lsns,
    _xids | st.sampled_from([2**70, True, "7"]),
    _frame_lsns,
    _frame_times,
)
def test_begin_and_commit_as_the_reference_writes_them(
    kind: type[Begin] | type[Commit], lsn: Any, xid: Any, other: Any, when: Any
) -> None:
    event = kind(lsn, xid, other, when)
    expected = _outcome(lambda: reference(event))
    assert _outcome(lambda: json_line(event)) == expected
    assert_same(event)


def test_a_reader_of_the_users_own_is_never_bypassed() -> None:
    # A converter replicant did not make (register_type, a layout of one's
    # own): the value is the converter's, so the Python code writes it.
    oids = [OID.INT4, OID.TEXT, OID.TIMESTAMPTZ, OID.BOOL]
    layout = RowLayout(
        ["a", "b", "c", "d"],
        oids,
        [lambda v: int(v) * 2, lambda v: v.decode().upper(), lambda v: "when", lambda v: 7],
        [None, None, None, None],
    )
    raw = [b"21", b"x", b"2024-01-01 00:00:00+00", b"t"]
    assert_row_same(layout, raw)
    assert formatting.row_json(Row(layout, list(raw))) == b'{"a":42,"b":"X","c":"when","d":7}'
    assert formatting._make_plan(layout)[0] == bytes(4)


@compiled_only
def test_the_plan_is_made_once_per_layout() -> None:
    layout = _text_layout([OID.INT8, OID.TEXT, OID.NUMERIC])
    assert layout._json_plan is None
    json_line(Insert(LSN(1), 1, _RELATION, Row(layout, [b"1", b"x", b"1.5"])))
    plan = layout._json_plan
    assert plan is not None and plan[0] == bytes([1, 2, 7])
    assert plan[1] == (b'{"c0":', b',"c1":', b',"c2":')
    json_line(Insert(LSN(1), 1, _RELATION, Row(layout, [b"2", b"y", b"2.5"])))
    assert layout._json_plan is plan
    assert layout.subset([1])._json_plan is None  # a layout of its own, planned on first use


@pytest.mark.skipif(_accel.compiled is None, reason="the compiled writer is not in use")
def test_the_writer_reads_slots_as_the_type_has_them_now() -> None:
    # The compiled writer reads an event's fields straight from their slots
    # once it knows the type; a type changed since (a field now a property,
    # say) is read the way Python reads it.
    class Frame:
        __slots__ = ("commit_time", "final_lsn", "lsn", "xid")

        def __init__(self, lsn: int) -> None:
            self.lsn, self.xid, self.final_lsn = LSN(lsn), 7, LSN(lsn + 1)
            self.commit_time = dt.datetime(2024, 5, 6, tzinfo=dt.timezone.utc)

    writer = _accel.compiled.JsonWriter(  # type: ignore[union-attr]
        formatting._json_plan, formatting._column_json, formatting._row_bytes,
        formatting._json_line_for(None), formatting._python_json_line, Row, LSN,
        Insert, Update, Delete, UNCHANGED, Frame, Commit, dt.datetime,
        formatting._isoformat,
    )  # fmt: skip
    later = [Frame(0x30), Frame(0x40)]
    first = writer(Frame(0x10))
    assert first.startswith(b'{"kind":"begin","lsn":"0/10","xid":7,"final_lsn":"0/11"')
    assert writer(Frame(0x20)).startswith(b'{"kind":"begin","lsn":"0/20","xid":7')
    Frame.xid = property(lambda self: 99)  # type: ignore[assignment,method-assign]
    assert writer(later[0]).startswith(b'{"kind":"begin","lsn":"0/30","xid":99,')
    del Frame.xid
    with pytest.raises(AttributeError):
        writer(later[1])
