"""The compiled fast paths (replicant._speedups) against their Python references.

Each compiled function must give exactly what its pure-Python equivalent
gives, for well-formed and malformed input alike (where the Python one
raises, the compiled one hands the input back for it to say why).
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant import _accel, libpq
from replicant.changes import UNCHANGED
from replicant.connection import ReplicationConnection, ReplicationStream
from replicant.decoders.pgoutput import _walk_tuple
from replicant.errors import DecodeError
from replicant.lsn import LSN
from replicant.protocol import XLogData

from .conftest import Database, require_compiled
from .test_pgoutput import READS, _decoder, _messages


@pytest.fixture
def native() -> Any:
    require_compiled()
    return _accel.available


def test_ci_builds_the_compiled_module() -> None:
    if os.environ.get("REPLICANT_REQUIRE_SPEEDUPS"):
        assert _accel.available is not None
    else:
        pytest.skip("REPLICANT_REQUIRE_SPEEDUPS is not set")


def test_pure_python_switch() -> None:
    saved = _accel.compiled
    try:
        _accel.use_compiled(False)
        assert _accel.compiled is None
        assert libpq.drain_function() is libpq._drain_python
        _accel.use_compiled(True)
        assert _accel.compiled is _accel.available
    finally:
        _accel.compiled = saved


# --- tuple_data


def column(kind: str, value: bytes = b"") -> bytes:
    if kind in "tb":
        return kind.encode() + struct.pack(">I", len(value)) + value
    return kind.encode()


def both(data: bytes, pos: int, count: int, native: Any) -> tuple[Any, Any]:
    compiled = native.tuple_data(data, pos, count, UNCHANGED)
    try:
        python: Any = _walk_tuple(data, pos, count)
    except DecodeError:
        python = None
    return compiled, python


def test_tuple_data_examples(native: Any) -> None:
    data = b"head" + column("t", b"42") + column("n") + column("u") + column("b", b"\0\1") + b"tail"
    compiled, python = both(data, 4, 4, native)
    assert compiled == python == ([b"42", None, UNCHANGED, b"\0\1"], len(data) - 4, 1, 2)
    assert compiled[0][2] is UNCHANGED
    assert both(b"", 0, 0, native) == (([], 0, 0, 0), ([], 0, 0, 0))
    for malformed, count in [
        (column("t", b"42")[:-1], 1),  # value cut short
        (column("t", b"42")[:3], 1),  # length cut short
        (column("t", b"42"), 2),  # a column missing
        (b"x", 1),  # unknown kind
        (b"t\xff\xff\xff\xff", 1),  # length past any end
    ]:
        assert both(malformed, 0, count, native) == (None, None), malformed


def test_tuple_data_refuses_wrong_arguments(native: Any) -> None:
    with pytest.raises(TypeError):
        native.tuple_data(bytearray(b"n"), 0, 1, UNCHANGED)
    with pytest.raises(ValueError):
        native.tuple_data(b"n", -1, 1, UNCHANGED)
    with pytest.raises(TypeError):
        native.tuple_data(b"n", 0)


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
def test_tuple_data_matches_python(
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
    assert compiled == python
    if compiled is not None:
        assert [v is UNCHANGED for v in compiled[0]] == [v is UNCHANGED for v in python[0]]


@pytest.mark.parametrize("read", READS)
def test_golden_reads_decode_alike(read: dict[str, Any]) -> None:
    require_compiled()
    decoded: dict[bool, list[str]] = {}
    saved = _accel.compiled
    try:
        for enabled in (True, False):
            _accel.use_compiled(enabled)
            decoder = _decoder(read)
            decoded[enabled] = [
                repr(event.to_dict())
                for data, lsn, _ in _messages(read)
                for event in decoder.decode(data, lsn, lsn)
            ]
    finally:
        _accel.compiled = saved
    assert decoded[True] == decoded[False]


# --- drain


def drain_slot(db: Database, slot: str, commits: int, enabled: bool) -> list[tuple[Any, ...]]:
    """Every XLogData of ``slot`` up to its ``commits``-th Commit, read with one implementation."""
    saved = _accel.compiled
    _accel.use_compiled(enabled)
    try:
        frames: list[tuple[Any, ...]] = []
        seen = 0
        options = {"proto_version": "1", "publication_names": '"pub"'}
        with ReplicationConnection.connect(db.dsn) as connection:
            stream = connection.start(slot, 0, options, plugin="pgoutput")
            deadline = time.monotonic() + 60
            while seen < commits:
                assert time.monotonic() < deadline, f"{len(frames)} frames, {seen} commits"
                for frame in stream.read(0.5):
                    if type(frame) is XLogData:
                        assert type(frame.wal_start) is LSN and type(frame.wal_end) is LSN
                        frames.append((frame.data, frame.wal_start, frame.send_time > 0))
                        seen += frame.data[:1] == b"C"
            stream.stop()
        return frames
    finally:
        _accel.compiled = saved


def test_drain_matches_python_on_a_live_stream(db: Database) -> None:
    require_compiled()
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
    compiled = drain_slot(db, "compiled", 4, True)
    python = drain_slot(db, "python", 4, False)
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
