"""Column values: text and binary representations to Python objects.

The server-backed tests ask PostgreSQL for each sample value's text output
and its binary send() output, and check that both readers give the same,
expected Python value.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import math
import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg2.extras import DateRange, DateTimeRange, DateTimeTZRange, NumericRange

from replicant import values
from replicant.changes import Row, RowLayout
from replicant.errors import DecodeError
from replicant.values import OID, BinaryValue, PgArray, PgValue

from .helpers import same

UTC = dt.timezone.utc


# (type, SQL literal, expected Python value)
SAMPLES: list[tuple[str, str, Any]] = [
    ("int2", "-32768", -32768),
    ("int4", "2147483647", 2147483647),
    ("int8", "-9223372036854775808", -9223372036854775808),
    ("oid", "4294967295", 4294967295),
    ("float4", "1.5", 1.5),
    ("float4", "'-Infinity'", -math.inf),
    ("float8", "1e308", 1e308),
    ("float8", "'NaN'", math.nan),
    ("float8", "0.1", 0.1),
    ("numeric", "12.50", Decimal("12.50")),
    ("numeric", "0", Decimal("0")),
    ("numeric", "0.00", Decimal("0.00")),
    ("numeric", "-0.0000000500", Decimal("-0.0000000500")),
    (
        "numeric",
        "123456789012345678901234567890.123",
        Decimal("123456789012345678901234567890.123"),
    ),
    ("numeric", "1e100", Decimal("1" + "0" * 100)),
    ("numeric", "'NaN'", Decimal("NaN")),
    ("bool", "true", True),
    ("bool", "false", False),
    ("text", "'héllo ☃ \"q\" \\'", 'héllo ☃ "q" \\'),
    ("text", "''", ""),
    ("varchar(10)", "'ab'", "ab"),
    ("bpchar(4)", "'ab'", "ab  "),
    ("name", "'a name'", "a name"),
    ('"char"', "'x'", "x"),
    ("bytea", "'\\x00ff10'", b"\x00\xff\x10"),
    ("bytea", "''", b""),
    ("date", "'2024-02-29'", dt.date(2024, 2, 29)),
    ("date", "'infinity'", dt.date.max),
    ("date", "'-infinity'", dt.date.min),
    ("time", "'23:59:59.999999'", dt.time(23, 59, 59, 999999)),
    ("time", "'24:00:00'", PgValue(OID.TIME, "24:00:00")),
    ("timetz", "'24:00:00+05:30'", PgValue(OID.TIMETZ, "24:00:00+05:30")),
    ("date", "'0044-03-15 BC'", PgValue(OID.DATE, "0044-03-15 BC")),
    ("date", "'10000-01-01'", PgValue(OID.DATE, "10000-01-01")),
    ("date", "'4713-01-01 BC'", PgValue(OID.DATE, "4713-01-01 BC")),
    ("date", "'5874897-12-31'", PgValue(OID.DATE, "5874897-12-31")),
    ("timestamp", "'10000-01-01 00:00:00'", PgValue(OID.TIMESTAMP, "10000-01-01 00:00:00")),
    (
        "timestamp",
        "'0001-12-31 23:59:59.25 BC'",
        PgValue(OID.TIMESTAMP, "0001-12-31 23:59:59.25 BC"),
    ),
    (
        "timestamptz",
        "'0044-03-15 12:00:00+00 BC'",
        PgValue(OID.TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC"),
    ),
    (
        "timestamptz",
        "'294276-12-31 23:59:59.999999+00'",
        PgValue(OID.TIMESTAMPTZ, "294276-12-31 23:59:59.999999+00"),
    ),
    ("interval", "'178000000 years'", PgValue(OID.INTERVAL, "178000000 years")),
    (
        "interval",
        "'-178000000 years -3 mons +5 days -01:02:03.5'",
        PgValue(OID.INTERVAL, "-178000000 years -3 mons +5 days -01:02:03.5"),
    ),
    ("float4", "1004.3", 1004.3),
    ("float4", "3.4028235e38", 3.4028235e38),
    ("float4", "1.4e-45", 1e-45),
    ("numeric", "9e1000 + 1", Decimal("9" + "0" * 999 + "1")),
    (
        "int4[]",
        "'[0:2][0:2]={{1,2,3},{4,5,6},{7,8,9}}'",
        PgArray([[1, 2, 3], [4, 5, 6], [7, 8, 9]], (0, 0)),
    ),
    ("int4[]", "'[0:4]={1,2,3,4,5}'", PgArray([1, 2, 3, 4, 5], (0,))),
    ("text[]", "'[-2:-1]={\"a b\",NULL}'", PgArray(["a b", None], (-2,))),
    (
        "date[]",
        "'{2024-01-02,\"0044-03-15 BC\"}'",
        [dt.date(2024, 1, 2), PgValue(OID.DATE, "0044-03-15 BC")],
    ),
    ("int4range", "'[1,10)'", NumericRange(1, 10, "[)")),
    ("int4range", "'empty'", NumericRange(empty=True)),
    ("int8range", "'(,5]'", NumericRange(None, 6, "()")),
    ("numrange", "'(1.50,2.5]'", NumericRange(Decimal("1.50"), Decimal("2.5"), "(]")),
    ("daterange", "'[2024-01-01,infinity)'", DateRange(dt.date(2024, 1, 1), dt.date.max, "[)")),
    (
        "tsrange",
        "'[2024-01-01 00:00,2024-01-02 12:00:00.5)'",
        DateTimeRange(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2, 12, 0, 0, 500000), "[)"),
    ),
    (
        "tstzrange",
        "'(2024-01-01 00:00+00,)'",
        DateTimeTZRange(dt.datetime(2024, 1, 1, tzinfo=UTC), None, "()"),
    ),
    ("int4range[]", "ARRAY['[1,2)'::int4range, NULL]", [NumericRange(1, 2, "[)"), None]),
    (
        "timetz",
        "'12:34:56.5+05:30'",
        dt.time(12, 34, 56, 500000, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    ),
    ("timestamp", "'2024-01-01 00:00:00.000001'", dt.datetime(2024, 1, 1, 0, 0, 0, 1)),
    ("timestamp", "'infinity'", dt.datetime.max),
    ("timestamptz", "'2024-01-01 12:00+03'", dt.datetime(2024, 1, 1, 9, 0, tzinfo=UTC)),
    ("timestamptz", "'1900-01-01 00:00:00+00'", dt.datetime(1900, 1, 1, tzinfo=UTC)),
    ("timestamptz", "'-infinity'", dt.datetime.min.replace(tzinfo=UTC)),
    (
        "interval",
        "'1 year 2 mons -3 days 04:05:06.5'",
        dt.timedelta(days=422, hours=4, minutes=5, seconds=6, microseconds=500000),
    ),
    ("interval", "'-1 years -2 mons'", dt.timedelta(days=-425)),
    ("interval", "'-00:00:01'", dt.timedelta(seconds=-1)),
    ("json", '\'{"a": [1, 2.5, null, "é"]}\'', {"a": [1, 2.5, None, "é"]}),
    ("jsonb", "'{\"a\": [1, 2.5, null]}'", {"a": [1, 2.5, None]}),
    (
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ),
    ("inet", "'192.168.0.1'", ipaddress.ip_interface("192.168.0.1/32")),
    ("inet", "'10.1.2.3/8'", ipaddress.ip_interface("10.1.2.3/8")),
    ("inet", "'::1'", ipaddress.ip_interface("::1/128")),
    ("cidr", "'10.0.0.0/8'", ipaddress.ip_network("10.0.0.0/8")),
    ("cidr", "'2001:db8::/32'", ipaddress.ip_network("2001:db8::/32")),
    ("int4[]", "'{1,NULL,3}'", [1, None, 3]),
    ("int4[]", "'{{1,2},{3,4}}'", [[1, 2], [3, 4]]),
    ("int4[]", "'{}'", []),
    ("int2[]", "'{1,2}'", [1, 2]),
    ("int8[]", "'{9223372036854775807}'", [9223372036854775807]),
    ("oid[]", "'{1,2}'", [1, 2]),
    ("float4[]", "'{1.5}'", [1.5]),
    ("float8[]", "'{NaN,1.5}'", [math.nan, 1.5]),
    ("numeric[]", "'{1.50,NULL,NaN}'", [Decimal("1.50"), None, Decimal("NaN")]),
    ("text[]", '\'{a,"b c",NULL,"NULL","é"}\'', ["a", "b c", None, "NULL", "é"]),
    ("varchar[]", "'{a}'", ["a"]),
    ("bpchar(2)[]", "'{a}'", ["a "]),
    ("name[]", "'{a}'", ["a"]),
    ('"char"[]', "'{x}'", ["x"]),
    ("bool[]", "'{t,f,NULL}'", [True, False, None]),
    ("bytea[]", "'{\"\\\\x00ff\",NULL}'", [b"\x00\xff", None]),
    ("date[]", "'{2024-01-02}'", [dt.date(2024, 1, 2)]),
    ("time[]", "'{12:00:00}'", [dt.time(12)]),
    ("timetz[]", "'{12:00:00+01}'", [dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=1)))]),
    ("timestamp[]", "'{\"2024-01-02 03:04:05\"}'", [dt.datetime(2024, 1, 2, 3, 4, 5)]),
    (
        "timestamptz[]",
        "'{\"2024-01-02 03:04:05+00\"}'",
        [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)],
    ),
    ("interval[]", "'{\"1 day\"}'", [dt.timedelta(days=1)]),
    ("json[]", "ARRAY['{\"a\": 1}'::json]", [{"a": 1}]),
    ("jsonb[]", "ARRAY['[1, 2]'::jsonb]", [[1, 2]]),
    (
        "uuid[]",
        "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
        [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")],
    ),
    ("inet[]", "'{192.168.0.1/24}'", [ipaddress.ip_interface("192.168.0.1/24")]),
    ("cidr[]", "'{10.0.0.0/8}'", [ipaddress.ip_network("10.0.0.0/8")]),
]


@pytest.fixture
def samples(db: Any) -> list[tuple[str, int, str, bytes, Any]]:
    """(type, OID, text output, binary send output, expected) for every sample, from the server."""
    db.execute("SET TIME ZONE 'Europe/Paris'")  # text output in a zone that is not UTC
    out = []
    for type_name, literal, expected in SAMPLES:
        ((oid, output, send),) = db.query(
            "SELECT oid::int, typoutput::text, typsend::text FROM pg_type WHERE oid = %s::regtype",
            type_name,
        )
        # The type's output and send functions: what pgoutput sends in text and binary.
        value = f"({literal})::{type_name}"
        ((text, binary),) = db.query(f"SELECT {output}({value})::text, {send}({value})")
        out.append((type_name, oid, text, bytes(binary), expected))
    return out


def test_text_and_binary_representations_give_the_same_value(
    samples: list[tuple[str, int, str, bytes, Any]], db: Any
) -> None:
    for type_name, oid, text, binary, expected in samples:
        from_text = values.text_converter(oid)(text.encode())
        from_str = values.text_reader(oid, from_str=True)(text)
        from_binary = values.binary_converter(oid)(binary)
        if isinstance(expected, PgValue) and oid == OID.TIMESTAMPTZ:
            # The text is in the session's zone, the binary rendering in UTC:
            # the server must read both as the same instant.
            for got in (from_text, from_str, from_binary):
                assert isinstance(got, PgValue), (text, got)
                ((equal,),) = db.query(
                    "SELECT %s::timestamptz = %s::timestamptz", got.text, expected.text
                )
                assert equal, (text, got)
            continue
        assert same(from_text, expected), (type_name, text, from_text)
        assert same(from_str, expected), (type_name, text, from_str)
        assert same(from_binary, expected), (type_name, binary, from_binary)


def test_every_reader_runs_safely_in_a_fresh_process(
    samples: list[tuple[str, int, str, bytes, Any]],
) -> None:
    # psycopg2's casters crash the process when misused (no cursor); run all
    # of them, from a clean interpreter, where a crash cannot take pytest down.
    cases = [(oid, text, binary.hex()) for _, oid, text, binary, _ in samples]
    script = textwrap.dedent(
        f"""
        from replicant import values
        for oid, text, binary in {cases!r}:
            values.text_reader(oid)(text.encode())
            values.text_reader(oid, from_str=True)(text)
            values.binary_reader(oid)(bytes.fromhex(binary))
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (OID.DATE, "2024-13-02"),
        (OID.TIMESTAMP, "2024-01-01 25:00:00"),
        # What a lenient caster would read as a wrong value: digits and junk
        # after the fraction, bytes that are not UTF-8, a time in a date.
        (OID.TIMESTAMP, "2024-01-01 00:00:00.10xyz"),
        (OID.TIMESTAMPTZ, "2024-01-01 00:00:00.10xyz+00"),
        (OID.TIMESTAMP, b"0001-01-01 00:00:00.10\xed\xa0\x80"),
        (OID.DATE, "2024-01-01 00:00:00"),
        (OID.INTERVAL, "3 fortnights"),
        (OID.INT4_ARRAY, "[0:1={1,2}"),
        (OID.INT4RANGE, "[1,2"),
        (OID.INT4, "twelve"),
        (OID.NUMERIC, "1.2.3"),
        (OID.BOOL, "maybe"),
        (OID.JSON, "{"),
        (OID.UUID, "not-a-uuid"),
        (OID.INET, "300.1.1.1"),
        (OID.BYTEA, "\\xZZ"),
        (OID.TEXT, b"\xff\xfe"),
        (OID.INT4_ARRAY, "{1,x}"),
    ],
)
def test_malformed_text_raises_decode_error(oid: int, text: str | bytes) -> None:
    raw = text if isinstance(text, bytes) else text.encode()
    with pytest.raises(DecodeError):
        values.text_converter(oid)(raw)
    row = Row(RowLayout(["c"], [oid], [values.text_reader(oid)]), [raw])
    with pytest.raises(DecodeError, match="column 'c'"):
        row["c"]
    assert row.raw("c") == raw


@pytest.mark.parametrize(
    ("oid", "data"),
    [
        (OID.INT4, b"\x00\x01"),
        (OID.INT8, b"\x00" * 9),
        (OID.BOOL, b""),
        (OID.NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00"),
        (OID.NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10"),  # digit 10000
        (OID.TIME, b"\x7f" + b"\x00" * 7),
        (OID.TIMETZ, b"\x00" * 8 + b"\x7f\xff\xff\xff"),
        (OID.JSONB, b"\x02{}"),
        (OID.UUID, b"\x00" * 15),
        (OID.INET, b"\x02\x21\x00\x04\x01\x02\x03\x04"),  # /33
        (OID.INT4_ARRAY, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x17"),
        (OID.INT4_ARRAY, b"\x00\x00\x00\x07" + b"\x00" * 8),
    ],
)
def test_malformed_binary_raises_decode_error(oid: int, data: bytes) -> None:
    with pytest.raises(DecodeError):
        values.binary_converter(oid)(data)


def test_unknown_types_give_text_or_a_binary_value() -> None:
    assert values.decode_text(99999, b"some text") == "some text"
    assert values.decode_text(99999, None) is None
    assert values.decode_binary(99999, b"\x01\x02") == BinaryValue(99999, b"\x01\x02")
    assert values.decode_binary(OID.INT4, None) is None


def test_register_type_for_a_custom_type() -> None:
    oid = 987654
    values.register_type(oid, text=lambda s: s.upper(), binary=lambda b: len(b))
    try:
        assert values.decode_text(oid, b"abc") == "ABC"
        assert values.decode_binary(oid, b"abc") == 3
        with pytest.raises(DecodeError):
            values.decode_text(oid, b"\xff")
    finally:
        values._TEXT.pop(oid)
        values._BINARY.pop(oid)


def test_readers_accept_str_and_bytes_alike() -> None:
    for oid, text, expected in [
        (OID.INT8, "5", 5),
        (OID.NUMERIC, "1.50", Decimal("1.50")),
        (OID.TIMESTAMPTZ, "2024-01-01 00:00:00+00", dt.datetime(2024, 1, 1, tzinfo=UTC)),
        (OID.BYTEA, "\\x01", b"\x01"),
        (OID.BOOL, "t", True),
    ]:
        assert values.text_reader(oid)(text.encode()) == expected
        assert values.text_reader(oid, from_str=True)(text) == expected


def test_readers_from_many_threads_at_once() -> None:
    # The readers share one psycopg2 cursor; array casts of Python element
    # casts (jsonb[]) can switch threads in the middle of a cast.
    import threading

    stamps = values.text_reader(OID.TIMESTAMPTZ_ARRAY)
    documents = values.text_reader(OID.JSONB_ARRAY)
    wrong: list[Any] = []

    def work() -> None:
        for _ in range(3000):
            a = stamps(b'{"2024-01-02 03:04:05+00"}')
            b = documents(b'{"[1, 2]","{\\"k\\": null}"}')
            if a != [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)] or b != [[1, 2], {"k": None}]:
                wrong.append((a, b))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


# --- fidelity details ----------------------------------------------------------------


def test_binary_numeric_digit_count_is_unsigned(db: Any) -> None:
    # 9e131071 + 1 has 131072 digits: 32769 base-10000 digits, above int16's range.
    ((text, binary),) = db.query("SELECT (9e131071 + 1)::text, numeric_send(9e131071 + 1)")
    value = values.binary_converter(OID.NUMERIC)(bytes(binary))
    assert value == Decimal(text) and str(value) == text
    assert values.binary_json(OID.NUMERIC) is not None
    assert values.binary_json(OID.NUMERIC)(bytes(binary), value) == text  # type: ignore[misc]


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_binary_float4_is_the_shortest_decimal_that_round_trips(bits: int) -> None:
    import struct

    data = struct.pack(">I", bits)
    (exact,) = struct.unpack(">f", data)
    got = values.binary_converter(OID.FLOAT4)(data)
    if math.isnan(exact):
        assert math.isnan(got)
        return
    assert struct.pack(">f", got) == data  # the same float32
    if math.isfinite(exact) and exact != 0:
        digits = len(f"{got:e}".split("e")[0].replace(".", "").replace("-", "").rstrip("0"))
        if digits > 1:  # no shorter decimal reads back as the same float32
            shorter = float(f"{exact:.{digits - 1}g}")
            with contextlib.suppress(OverflowError):  # rounded past float32's range
                assert struct.pack(">f", shorter) != data


def test_json_forms_keep_what_python_values_lose() -> None:
    def form(oid: int, text: str) -> Any:
        layout = RowLayout(["c"], [oid], [values.text_reader(oid)], [values.text_json(oid)])
        return Row(layout, [text.encode()]).to_dict()["c"]

    assert form(OID.JSONB, "null") == {"$json": "null"}
    assert Row(
        RowLayout(["c"], [OID.JSONB], [values.text_reader(OID.JSONB)]), [None]
    ).to_dict() == {"c": None}
    assert form(OID.JSON, '{"a": 1, "a": 2}') == {"$json": '{"a": 1, "a": 2}'}
    assert form(OID.TIMESTAMPTZ, "infinity") == "infinity"
    assert form(OID.TIMESTAMP, "-infinity") == "-infinity"
    assert form(OID.DATE, "infinity") == "infinity"
    assert form(OID.DATE, "0044-03-15 BC") == "0044-03-15 BC"
    assert form(OID.TIMESTAMPTZ, "2024-01-01 00:00:00+00") == "2024-01-01T00:00:00+00:00"
    assert form(OID.INTERVAL, "1 mon") == "P1M"
    assert form(OID.INTERVAL, "1 year 2 mons 3 days 04:05:06.5") == "P1Y2M3DT4H5M6.5S"
    assert form(OID.INTERVAL, "-1 years -2 mons +3 days -04:05:06") == "P-1Y-2M3DT-4H-5M-6S"
    assert form(OID.INTERVAL, "00:00:00") == "PT0S"
    assert form(OID.NUMERIC, "0.0000001") == "0.0000001"
    assert form(OID.NUMERIC, "NaN") == "NaN"
    assert form(OID.FLOAT8, "NaN") == "NaN"
    assert form(OID.FLOAT8, "-Infinity") == "-Infinity"
    assert form(OID.INT4_ARRAY, "[0:1]={1,2}") == {"$array": [1, 2], "lower_bounds": [0]}
    assert form(OID.JSONB_ARRAY, '{"null",NULL,"{\\"a\\": 1}"}') == [
        {"$json": "null"},
        None,
        {"$json": '{"a": 1}'},
    ]
    assert form(OID.INT4RANGE, "[1,10)") == "[1,10)"
    assert form(OID.TIMESTAMPTZ_ARRAY, '{infinity,"2024-01-01 00:00:00+00"}') == [
        "infinity",
        "2024-01-01T00:00:00+00:00",
    ]


def test_binary_renderings_match_the_server(db: Any) -> None:
    db.execute("SET TimeZone = 'UTC'")
    for sql_type, literal in [
        ("date", "'0044-03-15 BC'"),
        ("date", "'4714-11-24 BC'"),
        ("date", "'5874897-12-31'"),
        ("timestamp", "'0001-01-01 00:00:00 BC'"),
        ("timestamp", "'294276-12-31 23:59:59.999999'"),
        ("timestamptz", "'4713-01-01 00:00:00.5+00 BC'"),
        ("interval", "'178000000 years 1 mon -2 days 03:00:00.25'"),
        ("interval", "'-178000000 years'"),
        ("interval", "'-1 years 2 mons -3 days +04:05:06'"),
        ("time", "'24:00:00'"),
        ("timetz", "'24:00:00-03:30'"),
        ("int4range", "'[1,10)'"),
        ("tsrange", "'[2024-01-01 00:00,)'"),
        ("numrange", "'(,1.50]'"),
    ]:
        ((oid, send),) = db.query(
            "SELECT oid::int, typsend::text FROM pg_type WHERE oid = %s::regtype", sql_type
        )
        ((text, binary),) = db.query(
            f"SELECT ({literal})::{sql_type}::text, {send}(({literal})::{sql_type})"
        )
        value = values.binary_converter(oid)(bytes(binary))
        if isinstance(value, PgValue):
            rendered = value.text
        elif oid == OID.INTERVAL:
            rendered = values._interval_postgres(*values._interval_parts(bytes(binary)))
        else:
            form = values.binary_json(oid)
            assert form is not None
            rendered = form(bytes(binary), value)

        assert rendered == text, (sql_type, literal, rendered, text)


def test_strict_readers_raise_for_values_python_cannot_hold() -> None:
    for oid, text in [
        (OID.DATE, b"0044-03-15 BC"),
        (OID.TIMESTAMP, b"10000-01-01 00:00:00"),
        (OID.INTERVAL, b"178000000 years"),
        (OID.DATE_ARRAY, b'{"0044-03-15 BC"}'),
    ]:
        assert values.text_reader(oid)(text) is not None
        with pytest.raises(DecodeError, match="out of Python's range"):
            values.text_reader(oid, strict=True)(text)
    with pytest.raises(DecodeError):
        values.binary_reader(OID.DATE, strict=True)(b"\x7f\xff\xff\xfe")
    assert values.binary_reader(OID.DATE)(b"\x7f\xff\xff\xfe") == PgValue(OID.DATE, "5881610-07-10")


def test_infinite_intervals_of_newer_servers() -> None:
    # PostgreSQL 17 has interval 'infinity': all three fields at their extremes.
    import struct

    assert values.decode_text(OID.INTERVAL, b"infinity") == PgValue(OID.INTERVAL, "infinity")
    top = struct.pack(">qii", 2**63 - 1, 2**31 - 1, 2**31 - 1)
    bottom = struct.pack(">qii", -(2**63), -(2**31), -(2**31))
    assert values.decode_binary(OID.INTERVAL, top) == PgValue(OID.INTERVAL, "infinity")
    assert values.decode_binary(OID.INTERVAL, bottom) == PgValue(OID.INTERVAL, "-infinity")
    form = values.binary_json(OID.INTERVAL)
    assert form is not None and form(bottom, None) == "-infinity"
    text_form = values.text_json(OID.INTERVAL)
    assert text_form is not None and text_form(b"infinity", None) == "infinity"


def test_arrays_never_take_psycopg2s_silent_readings() -> None:
    assert values.decode_text(OID.INTERVAL_ARRAY, b'{infinity,"1 day"}') == [
        PgValue(OID.INTERVAL, "infinity"),
        dt.timedelta(days=1),
    ]
    assert values.decode_text(OID.TIME_ARRAY, b"{24:00:00,12:00:00}") == [
        PgValue(OID.TIME, "24:00:00"),
        dt.time(12),
    ]
    assert values.text_reader(OID.TIMETZ_ARRAY, from_str=True)("{24:00:00+02}") == [
        PgValue(OID.TIMETZ, "24:00:00+02")
    ]
