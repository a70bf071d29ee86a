"""The fast JSON Lines path writes exactly what the reference encoder writes.

:func:`replicant.formatting.json_line` (what the sinks and ``replicant
stream`` write) must give, byte for byte, ``format_json(event) + "\\n"`` in
UTF-8: with msgspec and with the standard library's encoder, on every value
type a server sends (text and binary pgoutput, wal2json) and on random
events. The compiled float4 reader must give what its Python twin gives.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant import Consumer, _accel, formatting, values
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
from replicant.errors import DecodeError
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
    # A transaction end hands every line to the operating system, before any flush.
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

    saved = wal2json._FAST_PARSE
    if not fast:
        wal2json._FAST_PARSE = None
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
        wal2json._FAST_PARSE = saved


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
