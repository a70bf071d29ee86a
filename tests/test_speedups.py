"""The compiled fast paths (replicant._speedups) against their Python references.

Each compiled function must give exactly what its pure-Python equivalent
gives, for well-formed and malformed input alike (where the Python one
raises, the compiled one hands the input back for it to say why). A process
runs wholly compiled or wholly in Python (replicant._accel): the compiled
functions are compared here with the Python reference functions directly,
and where a whole path must run both ways (decoding, a live stream), the
pure-Python side runs in a fresh process with REPLICANT_PURE_PYTHON=1. In a
pure-Python process the comparisons are skipped.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import struct
import subprocess
import sys
import time
import weakref
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant import _accel, changes, values
from replicant.changes import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Relation,
    Row,
    RowLayout,
    Update,
    _RowCore,
)
from replicant.connection import ReplicationConnection, ReplicationStream
from replicant.decoders.pgoutput import _walk_tuple
from replicant.errors import DecodeError
from replicant.lsn import LSN
from replicant.protocol import XLogData

from .conftest import Database
from .golden_reads import READS, decoded_reprs
from .helpers import drain_slot

(
    python_new_begin,
    python_new_commit,
    python_new_insert,
    python_new_update,
    python_new_delete,
) = changes._PYTHON_CONSTRUCTORS


ROOT = Path(__file__).parent.parent
PURE_PYTHON = {**os.environ, "REPLICANT_PURE_PYTHON": "1"}

# Before any fixture: a skipped test starts no server.
compiled_only = pytest.mark.skipif(
    _accel.compiled is None, reason="this process runs the pure-Python paths"
)


@pytest.fixture
def native() -> Any:
    """The compiled module in use; the test is skipped in a pure-Python process."""
    if _accel.compiled is None:
        pytest.skip("this process runs the pure-Python paths")
    return _accel.compiled


def run_pure_python(script: str, *args: str) -> Any:
    """What ``script`` prints (JSON), run in a fresh pure-Python process."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=PURE_PYTHON,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# --- read_row


def column(kind: str, value: bytes = b"") -> bytes:
    if kind in "tb":
        return kind.encode() + struct.pack(">I", len(value)) + value
    return kind.encode()


def layouts(count: int) -> tuple[RowLayout, RowLayout]:
    """A text and a binary layout of ``count`` columns, told apart by converters."""
    text = RowLayout([f"c{i}" for i in range(count)], [0] * count, [str] * count)
    return text, RowLayout(text.names, text.type_oids, [bytes] * count)


def both(data: bytes, pos: int, count: int, native: Any) -> tuple[Any, Any]:
    """read_row's result, and _walk_tuple's (None where it raises DecodeError)."""
    text, binary = layouts(count)
    compiled = native.read_row(data, pos, count, text, binary, Row, UNCHANGED)
    try:
        python: Any = _walk_tuple(data, pos, count)
    except DecodeError:
        python = None
    return compiled, python


def assert_alike(compiled: Any, python: Any, count: int) -> None:
    """read_row made the row _walk_tuple's split calls for, or left it to Python."""
    if python is None or (python[2] and python[2] + python[3] != count):
        assert compiled is None  # malformed, or mixed text and binary: the Python code's
        return
    row, end = compiled
    text, binary = layouts(count)
    assert type(row) is Row and end == python[1] and row._raw == python[0]
    assert [v is UNCHANGED for v in row._raw] == [v is UNCHANGED for v in python[0]]
    assert row._layout.convert == (binary if python[2] else text).convert


def test_read_row_examples(native: Any) -> None:
    data = b"head" + column("t", b"42") + column("n") + column("u") + b"tail"
    (row, end), python = both(data, 4, 3, native)
    assert (row._raw, end) == ([b"42", None, UNCHANGED], len(data) - 4) == python[:2]
    assert row._raw[2] is UNCHANGED and row["c0"] == "b'42'"  # the text layout's str
    (row, end), _ = both(column("b", b"\0\1") + column("n"), 0, 2, native)
    assert row._raw == [b"\0\1", None] and row["c0"] == b"\0\1"  # the binary layout's
    mixed = column("t", b"1") + column("b", b"\0")
    compiled, python = both(mixed, 0, 2, native)
    assert compiled is None and python == ([b"1", b"\0"], len(mixed), 1, 0)
    assert both(b"", 0, 0, native)[0][0]._raw == []
    for malformed, count in [
        (column("t", b"42")[:-1], 1),  # value cut short
        (column("t", b"42")[:3], 1),  # length cut short
        (column("t", b"42"), 2),  # a column missing
        (b"x", 1),  # unknown kind
        (b"t\xff\xff\xff\xff", 1),  # length past any end
        (b"", 0),  # pos below, past the end
    ]:
        pos = 1 if malformed == b"" else 0
        assert both(malformed, pos, count, native) == (None, None), malformed


columns = st.lists(
    st.one_of(
        st.tuples(st.sampled_from("tb"), st.binary(max_size=40)),
        st.tuples(st.sampled_from("nu"), st.just(b"")),
    ),
    max_size=12,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    columns=columns,
    prefix=st.binary(max_size=6),
    suffix=st.binary(max_size=6),
    extra=st.integers(-2, 2),
    cut=st.integers(0, 400),
    flip=st.tuples(st.integers(0, 400), st.integers(0, 255)),
    mutate=st.sampled_from(["none", "cut", "flip"]),
)
def test_read_row_matches_python(
    native: Any,
    columns: list[tuple[str, bytes]],
    prefix: bytes,
    suffix: bytes,
    extra: int,
    cut: int,
    flip: tuple[int, int],
    mutate: str,
) -> None:
    data = prefix + b"".join(column(kind, value) for kind, value in columns) + suffix
    if mutate == "cut":
        data = data[: cut % (len(data) + 1)]
    elif mutate == "flip" and data:
        at = flip[0] % len(data)
        data = data[:at] + bytes([flip[1]]) + data[at + 1 :]
    count = max(0, len(columns) + extra)
    compiled, python = both(data, len(prefix), count, native)
    assert_alike(compiled, python, count)


DECODE_GOLDEN = """
import json
from replicant import _accel
from tests.golden_reads import READS, decoded_reprs
assert _accel.IMPLEMENTATION == "python", _accel.IMPLEMENTATION
print(json.dumps({read.id: decoded_reprs(*read.values) for read in READS}))
"""


@pytest.fixture(scope="module")
def pure_python_decoded() -> dict[str, list[str]]:
    """Every golden read decoded in a fresh pure-Python process, by read id."""
    decoded: dict[str, list[str]] = run_pure_python(DECODE_GOLDEN)
    return decoded


@compiled_only
@pytest.mark.parametrize("read", READS)
def test_golden_reads_decode_alike(
    read: dict[str, Any], pure_python_decoded: dict[str, list[str]], request: pytest.FixtureRequest
) -> None:
    read_id = request.node.callspec.id
    assert read_id in pure_python_decoded
    assert decoded_reprs(read) == pure_python_decoded[read_id]


# --- drain


DRAIN_SLOT = """
import json, sys
from replicant import _accel, libpq
from tests.helpers import drain_slot
assert libpq.drain is libpq._drain_python, libpq.drain
print(json.dumps(drain_slot(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


@compiled_only
def test_drain_matches_python_on_a_live_stream(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text, b bytea)")
    db.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    with ReplicationConnection.connect(db.dsn) as connection:
        for slot in ("compiled", "python"):
            connection.create_slot(slot, "pgoutput")
    # Small and large messages, more than one batch (MAX_BATCH) of them.
    db.execute("INSERT INTO t SELECT i, repeat('x', i % 7), NULL FROM generate_series(1, 3000) i")
    db.execute("INSERT INTO t VALUES (0, repeat('y', 3000000), decode(repeat('0f', 999), 'hex'))")
    db.execute("UPDATE t SET v = NULL WHERE id % 3 = 0")
    db.execute("DELETE FROM t WHERE id > 2900")
    compiled = drain_slot(db.dsn, "compiled", 4)
    python = run_pure_python(DRAIN_SLOT, db.dsn, "python", "4")
    assert len(compiled) > 2 * ReplicationStream.MAX_BATCH
    assert compiled == python


def test_drain_refuses_wrong_arguments(native: Any) -> None:
    functions = (1, 1, 1)  # never called: the arguments are checked first
    with pytest.raises(TypeError):
        native.drain(1, *functions, 10, 0, tuple, LSN, "extra")
    with pytest.raises(TypeError, match="XLogData"):
        native.drain(1, *functions, 10, 0, dict, LSN)
    with pytest.raises(TypeError, match="LSN"):
        native.drain(1, *functions, 10, 0, XLogData, str)
    with pytest.raises(ValueError, match="null"):
        native.drain(0, *functions, 10, 0, XLogData, LSN)


# --- RowCore


def core_classes(native: Any) -> list[type]:
    """The two cores, each with what Row's error reporting needs."""

    class CompiledCore(native.RowCore):  # type: ignore[misc,name-defined]
        _error = Row._error
        raw = Row.raw
        type_oid = Row.type_oid

    class PythonCore(_RowCore):
        __slots__ = ()
        _error = Row._error  # type: ignore[assignment]
        raw = Row.raw
        type_oid = Row.type_oid

    return [CompiledCore, PythonCore]


def outcome(row: Any, name: Any) -> tuple[str, Any]:
    try:
        value = row[name]
    except DecodeError as error:
        return "DecodeError", (str(error), type(error.__cause__), error.__cause__ is not None)
    except Exception as error:
        return type(error).__name__, str(error)
    return "value", value


def failing(value: Any) -> Any:
    raise ValueError(f"cannot read {value!r}")


def test_row_core_reads_like_python(native: Any) -> None:
    calls: list[Any] = []

    def counted(value: bytes) -> int:
        calls.append(value)
        return int(value)

    layout = RowLayout(
        ["a", "b", "c", "d", "e"], [23, 25, 23, 23, 1], [counted, bytes.decode, int, int, failing]
    )
    raw = [b"12", b"x", None, UNCHANGED, b"boom"]
    results = []
    for core in core_classes(native):
        calls.clear()
        row = core(layout, list(raw))
        got = [outcome(row, name) for name in ["a", "a", "b", "c", "d", "e", "e", "zz", ("a",)]]
        assert row["d"] is UNCHANGED
        assert calls == [b"12"], "converted once, then kept"
        results.append(got)
    assert results[0] == results[1]
    assert results[0][-2] == ("KeyError", "'zz'")
    assert results[0][-3][0] == "DecodeError"


def test_row_core_lets_base_exceptions_through(native: Any) -> None:
    def interrupted(value: Any) -> Any:
        raise KeyboardInterrupt

    layout = RowLayout(["a"], [23], [interrupted])
    for core in core_classes(native):
        with pytest.raises(KeyboardInterrupt):
            core(layout, [b"1"])["a"]


def test_row_core_refuses_bad_construction(native: Any) -> None:
    layout = RowLayout(["a"], [23], [int])
    with pytest.raises(TypeError):
        native.RowCore(layout, (b"1",))  # a list, as decoders make
    with pytest.raises(ValueError):
        native.RowCore(layout, [b"1", b"2"])  # one value per converter
    with pytest.raises(AttributeError):
        native.RowCore(object(), [b"1"])


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.one_of(st.none(), st.just(UNCHANGED), st.binary(max_size=6)), min_size=1, max_size=8
    ),
    reads=st.lists(st.integers(0, 9), max_size=20),
)
def test_row_core_matches_python(native: Any, values: list[Any], reads: list[int]) -> None:
    names = [f"c{i}" for i in range(len(values))]
    layout = RowLayout(names, [23] * len(values), [int] * len(values))
    rows = [core(layout, list(values)) for core in core_classes(native)]
    for i in reads:
        name = f"c{i}"
        assert outcome(rows[0], name) == outcome(rows[1], name)


def test_rows_are_collected(native: Any) -> None:
    # A row that refers to itself through a value is still freed (GC support).
    class Node:
        row: Any = None

    layout = RowLayout(["a"], [0], [lambda value: value])
    node = Node()
    row = Row(layout, [node])
    node.row = row
    assert row["a"] is node
    reference = weakref.ref(node)
    del node, row
    gc.collect()
    assert reference() is None


@compiled_only
def test_decoder_tests_pass_in_pure_python() -> None:
    # The suite runs with the compiled module; the unit tests of what it
    # replaces run again here without it (Row's Python core included), so
    # that a plain pytest run covers both. (.ci/run runs every server-free
    # test module in pure Python too.)
    env = PURE_PYTHON
    core = subprocess.run(
        [sys.executable, "-c", "from replicant.changes import Row; print(Row.__mro__[1])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "replicant.changes._RowCore" in core.stdout
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_accel.py",
            "tests/test_changes.py",
            "tests/test_pgoutput.py",
            "tests/test_wal2json.py",
            "tests/test_values.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_row_core_mapping_protocol(native: Any) -> None:
    layout = RowLayout(["a", "b"], [23, 25], [int, bytes.decode])
    seen = []
    for core in core_classes(native):
        row = core(layout, [b"1", None])
        seen.append((list(row), len(row), "a" in row, "z" in row, ["a"] in [row]))
    assert seen[0] == seen[1] == (["a", "b"], 2, True, False, False)
    assert dict(Row(layout, [b"1", None])) == {"a": 1, "b": None}


# --- maker


def test_makers_build_what_the_python_constructors_build(native: Any) -> None:
    relation = Relation(LSN(1), 5, 1, "public", "t", (Column("a", 23, -1, True),), "default")
    row = Row(RowLayout(["a"], [23], [int]), [b"1"])
    when = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
    cases = [
        (python_new_begin, Begin, "lsn xid final_lsn commit_time", (LSN(1), 5, LSN(9), when)),
        (python_new_commit, Commit, "lsn xid commit_lsn commit_time", (LSN(9), 5, LSN(8), when)),
        (python_new_insert, Insert, "lsn xid relation new", (LSN(2), 5, relation, row)),
        (python_new_update, Update, "lsn xid relation new old", (LSN(3), 6, relation, row, None)),
        (python_new_delete, Delete, "lsn xid relation old", (LSN(4), 5, relation, row)),
    ]
    for python, cls, names, fields in cases:
        make = native.maker(cls, tuple(names.split()))
        made, expected = make(*fields), python(*fields)
        assert type(made) is cls and made == expected and made == cls(*fields)
        assert repr(made) == repr(expected)
        assert gc.is_tracked(made)
        with pytest.raises(TypeError, match="positional"):
            make(*fields[:-1])
        with pytest.raises(TypeError):
            make(*fields, x=1)
    assert changes.new_insert is not python_new_insert  # the decoders use the compiled ones


def test_maker_refuses_what_is_not_a_slot(native: Any) -> None:
    with pytest.raises(TypeError, match="not a slot"):
        native.maker(Insert, ("lsn", "kind"))
    with pytest.raises(AttributeError):
        native.maker(Insert, ("nonesuch",))
    with pytest.raises(TypeError):
        native.maker(tuple, ("lsn",))
    with pytest.raises(TypeError):
        native.maker(Insert, ["lsn"])


# --- from_text


def read_outcome(reader: Any, value: Any) -> tuple[str, Any]:
    try:
        return "value", reader(value)
    except Exception as error:
        return type(error).__name__, None


def fallback(value: Any) -> Any:
    return ("fallback", value)


PARSERS = [
    (int, None),
    (Decimal, None),
    (dt.datetime.fromisoformat, fallback),
    (dt.date.fromisoformat, fallback),
    (float, fallback),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(
        st.text(max_size=30),
        st.binary(max_size=30),
        st.integers().map(str),
        st.integers().map(lambda i: str(i).encode()),
        st.decimals(allow_nan=False).map(lambda d: str(d).encode()),
        st.datetimes(timezones=st.just(dt.timezone.utc)).map(lambda d: str(d).encode()),
        st.integers(),
        st.none(),
    ),
    parser=st.sampled_from(PARSERS),
)
def test_from_text_matches_python(native: Any, value: Any, parser: tuple[Any, Any]) -> None:
    parse, otherwise = parser
    compiled = native.from_text(parse, otherwise)
    python = values._from_text_python(parse, otherwise)
    got, expected = read_outcome(compiled, value), read_outcome(python, value)
    assert got == expected
    if got[0] == "value" and got[1] == got[1]:  # not NaN
        assert type(got[1]) is type(expected[1])


def test_from_text_examples(native: Any) -> None:
    read = native.from_text(dt.datetime.fromisoformat, fallback)
    assert read(b"2024-05-06 07:08:09.5+00") == dt.datetime(
        2024, 5, 6, 7, 8, 9, 500000, tzinfo=dt.timezone.utc
    )
    assert read(b"infinity") == ("fallback", b"infinity")  # the value as it came
    with pytest.raises(UnicodeDecodeError):
        read(b"\xff")
    with pytest.raises(TypeError):
        read(5)
    with pytest.raises(TypeError):
        read(b"1", b"2")
    with pytest.raises(ValueError):
        native.from_text(int)(b"x")
    with pytest.raises(TypeError):
        native.from_text(5)
    assert "fromisoformat" in repr(read)
    assert values.text_reader(1700) is not None


def test_read_row_refuses_wrong_arguments(native: Any) -> None:
    layout = RowLayout(["a"], [23], [int])
    with pytest.raises(TypeError):
        native.read_row(bytearray(b"n"), 0, 1, layout, layout, Row, UNCHANGED)
    with pytest.raises(ValueError):
        native.read_row(b"n", -1, 1, layout, layout, Row, UNCHANGED)
    with pytest.raises(TypeError, match="RowCore"):
        native.read_row(b"n", 0, 1, layout, layout, dict, UNCHANGED)
    with pytest.raises(TypeError):
        native.read_row(b"n", 0, 1, layout, layout, Row)
    with pytest.raises(ValueError, match="converter"):
        native.read_row(b"nn", 0, 2, layout, layout, Row, UNCHANGED)
    assert native.read_row(b"t\0\0\0\x012", 0, 1, layout, layout, Row, UNCHANGED)[0]["a"] == 2


def test_int_fast_path_agrees_with_int(native: Any) -> None:
    read = native.from_text(int)
    for good in [b"0", b"-12", b"+7", b" 42 ", b"1_000", b"9" * 40]:
        assert read(good) == int(good)
    for bad in [b"", b"1.5", b"0x1f", b"1\x002", b"\xff", b"_1"]:
        assert read_outcome(read, bad) == read_outcome(values._from_text_python(int), bad)


def test_row_core_needs_an_exception_from_error(native: Any) -> None:
    class Odd(native.RowCore):  # type: ignore[misc,name-defined]
        def _error(self, name: str, exc: Exception) -> Any:
            return "not an exception"

    with pytest.raises(TypeError, match="must return an exception"):
        Odd(RowLayout(["a"], [23], [int]), [b"x"])["a"]


# Server texts of dates and timestamps past Python's range, and some that are malformed:
# the compiled reader hands them to the same Python fallback.
EDGE_TEXTS = [
    b"0044-03-15 BC",
    b"10000-01-01",
    b"5874897-12-31",
    b"4713-01-01 BC",
    b"10000-01-01 00:00:00",
    b"0001-12-31 23:59:59.25 BC",
    b"0044-03-15 12:09:21+00:09:21 BC",
    b"294276-12-31 23:59:59.999999+00",
    b"infinity",
    b"-infinity",
    b"2024-13-01",
    b"garbage",
]


def _date_like_texts() -> Any:
    year = st.integers(min_value=1, max_value=300000)
    day = st.tuples(year, st.integers(1, 12), st.integers(1, 28)).map(
        lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"
    )
    clock = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)).map(
        lambda t: f" {t[0]:02d}:{t[1]:02d}:{t[2]:02d}"
    )
    return st.tuples(
        day,
        st.one_of(st.just(""), clock),
        st.sampled_from(["", "+00", "-05:30"]),
        st.sampled_from(["", " BC"]),
    ).map(lambda t: "".join(t).encode())


def _value_readers(native: Any) -> list[tuple[Any, Any]]:
    pairs = []
    for oid, parse in (
        (values.OID.DATE, dt.date.fromisoformat),
        (values.OID.TIMESTAMP, dt.datetime.fromisoformat),
        (values.OID.TIMESTAMPTZ, dt.datetime.fromisoformat),
    ):
        otherwise = values._tolerant(oid, values._cast_with(values._TEXT_CASTERS[oid]))
        pairs.append(
            (native.from_text(parse, otherwise), values._from_text_python(parse, otherwise))
        )
    return pairs


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(_date_like_texts(), st.sampled_from(EDGE_TEXTS)))
def test_date_readers_match_python_past_pythons_range(native: Any, value: bytes) -> None:
    for compiled, python in _value_readers(native):
        got, expected = read_outcome(compiled, value), read_outcome(python, value)
        assert got == expected, value
        if got[0] == "value":
            assert type(got[1]) is type(expected[1])


def test_date_readers_golden(native: Any) -> None:
    date_compiled, date_python = _value_readers(native)[0]
    for read in (date_compiled, date_python):
        assert read(b"0044-03-15 BC") == values.PgValue(values.OID.DATE, "0044-03-15 BC")
        assert read(b"2024-02-29") == dt.date(2024, 2, 29)
        assert read(b"infinity") == dt.date.max
        with pytest.raises(ValueError):
            read(b"2024-13-01")


# --- commit times


_US_PER_DAY = 86_400_000_000
_FIRST_US = -730_119 * _US_PER_DAY  # 0001-01-01 00:00:00 UTC, in us after 2000-01-01
_LAST_US = 2_921_940 * _US_PER_DAY - 1  # 9999-12-31 23:59:59.999999 UTC


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.integers(_FIRST_US, _LAST_US), st.integers(-(2**63), 2**63 - 1)))
def test_pg_datetime_is_the_python_conversion(native: Any, value: int) -> None:
    from replicant.errors import ProtocolError
    from replicant.protocol import pg_timestamp_to_datetime

    try:
        expected: Any = pg_timestamp_to_datetime(value)
    except ProtocolError as error:
        expected = error
    if isinstance(expected, ProtocolError):
        with pytest.raises(ProtocolError) as raised:
            native.pg_datetime(value)
        assert str(raised.value) == str(expected)
    else:
        got = native.pg_datetime(value)
        assert got == expected and type(got) is dt.datetime
        assert got.tzinfo is dt.timezone.utc


def test_pg_datetime_edges(native: Any) -> None:
    from replicant.errors import ProtocolError

    utc = dt.timezone.utc
    assert native.pg_datetime(0) == dt.datetime(2000, 1, 1, tzinfo=utc)
    assert native.pg_datetime(-1) == dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=utc)
    assert native.pg_datetime(_FIRST_US) == dt.datetime.min.replace(tzinfo=utc)
    assert native.pg_datetime(_LAST_US) == dt.datetime.max.replace(tzinfo=utc)
    # 2000-02-29, 2100-03-01 (no leap day in 2100), 2400-02-29
    for day in (dt.date(2000, 2, 29), dt.date(2100, 3, 1), dt.date(2400, 2, 29)):
        us = (day - dt.date(2000, 1, 1)).days * _US_PER_DAY
        assert native.pg_datetime(us).date() == day
    for bad in (_FIRST_US - 1, _LAST_US + 1, 2**63 - 1, -(2**63), 2**64):
        with pytest.raises(ProtocolError, match="timestamp out of range"):
            native.pg_datetime(bad)
    with pytest.raises(TypeError):
        native.pg_datetime(1.5)


def test_drained_frames_and_positions_are_left_to_reference_counting(db: Database) -> None:
    # Frames hold ints and bytes only, LSNs nothing at all: no cycle can pass
    # through them, so the compiled drain keeps them out of the collector.
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION pub FOR TABLE t")
    with ReplicationConnection.connect(db.dsn) as connection:
        connection.create_slot("untracked", "pgoutput")
    db.execute("INSERT INTO t SELECT generate_series(1, 10)")
    options = {"proto_version": "1", "publication_names": '"pub"'}
    frames: list[Any] = []
    with ReplicationConnection.connect(db.dsn) as connection:
        stream = connection.start("untracked", 0, options, plugin="pgoutput")
        deadline = time.monotonic() + 60
        while not any(frame.data[:1] == b"C" for frame in frames):
            assert time.monotonic() < deadline, frames
            frames += [frame for frame in stream.read(0.5) if type(frame) is XLogData]
        stream.stop()
    for frame in frames:
        assert type(frame.wal_start) is LSN and type(frame.wal_end) is LSN
        assert frame.wal_start == LSN(int(frame.wal_start)) and frame.wal_end >= frame.wal_start
        if _accel.compiled is not None:
            assert not gc.is_tracked(frame)
            assert not gc.is_tracked(frame.wal_start) and not gc.is_tracked(frame.wal_end)
