"""The compiled decode of pgoutput's common messages against the Python one.

With the compiled paths, a ``PgOutputDecoder``'s ``decode`` is
``_speedups.PgOutputFast``: it decodes Begin, Commit, and Insert and Update
of a new tuple only outside a streamed transaction, and hands everything
else to the Python ``decode`` (the reference). A subclass of the decoder
always decodes in Python, so the two run side by side here: on every
message of the golden reads (real servers' output), on mutations of them,
and on the cases the compiled code must refuse. They must give the same
events, or the same error, and leave the decoder in the same state.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant import _accel
from replicant.decoders import PgOutputDecoder
from replicant.lsn import LSN

from .test_decoder_fuzz import _mutate

GOLDEN = Path(__file__).parent / "golden"

pytestmark = pytest.mark.skipif(
    _accel.compiled is None, reason="this process runs the pure-Python paths"
)


class ReferenceDecoder(PgOutputDecoder):
    """Decodes with the Python methods only (the compiled one is for the class itself)."""


def _reads() -> list[tuple[dict[str, str], list[tuple[int, bytes]]]]:
    out = []
    for path in sorted(GOLDEN.glob("pgoutput-pg*.json")):
        for read in json.loads(path.read_text(encoding="utf-8"))["reads"]:
            messages = [(int(LSN(m["lsn"])), bytes.fromhex(m["data"])) for m in read["messages"]]
            out.append((read["options"], messages))
    return out


READS = _reads()


def _pair(options: dict[str, str]) -> tuple[PgOutputDecoder, PgOutputDecoder]:
    streaming = {"on": True, "off": False}.get(options.get("streaming", "off"), "parallel")
    binary = options.get("binary") == "true"
    fast = PgOutputDecoder("p", streaming=streaming, binary=binary)
    reference = ReferenceDecoder("p", streaming=streaming, binary=binary)
    return fast, reference


def _state(decoder: PgOutputDecoder) -> tuple[Any, ...]:
    return (
        decoder._xid,
        decoder._in_transaction,
        decoder._in_stream,
        decoder._stream_xid,
        int(decoder._last_end),
        type(decoder._last_end),
        sorted(decoder._tables),
    )


def _described(value: Any) -> Any:
    """An event's fields, rows as (layout identity aside) their raw values and converted ones."""
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return (type(value).__name__, [(name, _described(getattr(value, name))) for name in fields])
    if hasattr(value, "_raw"):
        converted = []
        for name in value:
            try:
                converted.append(repr(value[name]))
            except Exception as error:  # the same error from both
                converted.append(f"{type(error).__name__}: {error}")
        return ("row", list(value._raw), list(value), converted, value._layout.type_oids)
    if isinstance(value, (list, tuple)):
        return [_described(item) for item in value]
    return (type(value).__name__, value)


def outcome(decoder: PgOutputDecoder, data: bytes, wal_start: Any) -> tuple[Any, ...]:
    """What decode() gave (events, or the error) and the decoder's state after it."""
    try:
        events = decoder.decode(data, wal_start, wal_start)
    except Exception as error:
        return ("error", type(error).__name__, str(error), _state(decoder))
    return ("events", _described(events), _state(decoder))


def test_the_decoders_compared_are_the_compiled_one_and_the_python_one() -> None:
    fast, reference = _pair({})
    assert type(fast.decode).__name__ == "PgOutputFast"
    assert type(reference.decode).__name__ == "method"


@pytest.mark.parametrize("at_zero", [False, True], ids=["positions", "no-positions"])
@pytest.mark.parametrize("read", range(len(READS)))
def test_every_golden_message_decodes_alike(read: int, at_zero: bool) -> None:
    options, messages = READS[read]
    fast, reference = _pair(options)
    for lsn, data in messages:
        position = LSN(0 if at_zero else lsn)
        assert outcome(fast, data, position) == outcome(reference, data, position), data


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.integers(0, len(READS) - 1),
    st.data(),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
)
def test_mutated_messages_decode_alike(read: int, data: Any, edits: list[Any]) -> None:
    options, messages = READS[read]
    fast, reference = _pair(options)
    cut = data.draw(st.integers(0, len(messages) - 1))
    for lsn, message in messages[:cut]:  # the same context: relations, an open transaction
        position = LSN(lsn)
        assert outcome(fast, message, position) == outcome(reference, message, position)
    lsn, message = messages[cut]
    mutated = _mutate(message, edits)
    position = LSN(lsn)
    assert outcome(fast, mutated, position) == outcome(reference, mutated, position), mutated


# --- the cases the compiled decode hands over, made by hand


def _relation(relid: int, columns: list[tuple[str, int]], key: str = "id") -> bytes:
    body = struct.pack(">I", relid) + b"public\0t\0d" + struct.pack(">H", len(columns))
    for name, oid in columns:
        body += bytes([name == key]) + name.encode() + b"\0" + struct.pack(">Ii", oid, -1)
    return b"R" + body


def _tuple(*values: bytes | None, kind: bytes = b"t") -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        out += b"n" if value is None else kind + struct.pack(">I", len(value)) + value
    return out


BEGIN = b"B" + struct.pack(">QqI", 0x3000, 700_000_000_000_000, 77)
COMMIT = b"C" + struct.pack(">BQQq", 0, 0x3000, 0x3010, 700_000_000_000_000)
RELATION = _relation(5, [("id", 23), ("v", 25)])
INSERT = b"I" + struct.pack(">I", 5) + b"N" + _tuple(b"1", b"one")

CASES = {
    "begin": [BEGIN],
    "begin at position 0": [BEGIN],
    "begin short": [BEGIN[:-1]],
    "begin long": [BEGIN + b"\0"],
    "begin time out of range": [b"B" + struct.pack(">QqI", 1, 2**62, 1)],
    "commit": [BEGIN, COMMIT],
    "commit behind the last end": [BEGIN, COMMIT, BEGIN, COMMIT[:10] + struct.pack(">Qq", 1, 0)],
    "commit short": [BEGIN, COMMIT[:-3]],
    "commit long": [BEGIN, COMMIT + b"\0"],
    "commit time out of range": [BEGIN, COMMIT[:18] + struct.pack(">q", -(2**62))],
    "commit without begin": [COMMIT],
    "insert": [RELATION, BEGIN, INSERT],
    "insert null": [RELATION, BEGIN, b"I" + struct.pack(">I", 5) + b"N" + _tuple(b"2", None)],
    "insert unchanged": [RELATION, BEGIN, b"I\0\0\0\5N\0\2t\0\0\0\0011u"],
    "insert binary": [
        RELATION,
        BEGIN,
        b"I\0\0\0\5N" + _tuple(b"\0\0\0\1", b"x", kind=b"b"),
    ],
    "insert mixed": [RELATION, BEGIN, b"I\0\0\0\5N\0\2t\0\0\0\0011b\0\0\0\1x"],
    "insert unknown relation": [RELATION, BEGIN, b"I" + struct.pack(">I", 6) + INSERT[5:]],
    "insert column count": [RELATION, BEGIN, b"I\0\0\0\5N" + _tuple(b"1")],
    "insert trailing byte": [RELATION, BEGIN, INSERT + b"x"],
    "insert truncated": [RELATION, BEGIN, INSERT[:-1]],
    "insert bad kind": [RELATION, BEGIN, INSERT[:8] + b"q" + INSERT[9:]],
    "insert old tuple marker": [RELATION, BEGIN, INSERT[:5] + b"K" + INSERT[6:]],
    "insert head only": [RELATION, BEGIN, INSERT[:7]],
    "insert outside a transaction": [RELATION, INSERT],
    "update new only": [RELATION, BEGIN, b"U" + INSERT[1:]],
    "update with key": [
        RELATION,
        BEGIN,
        b"U\0\0\0\5K" + _tuple(b"1", None) + b"N" + _tuple(b"2", b"two"),
    ],
    "update with old": [
        RELATION,
        BEGIN,
        b"U\0\0\0\5O" + _tuple(b"1", b"one") + b"N" + _tuple(b"2", b"two"),
    ],
    "relation redefined": [
        RELATION,
        BEGIN,
        INSERT,
        _relation(5, [("id", 23), ("v", 25), ("w", 20)]),
        INSERT,
        b"I\0\0\0\5N" + _tuple(b"1", b"one", b"3"),
    ],
    "delete": [RELATION, BEGIN, b"D\0\0\0\5K" + _tuple(b"1", None)],
    "empty": [b""],
    "unknown type": [b"\xff"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_made_cases_decode_alike(name: str) -> None:
    fast, reference = _pair({})
    start = LSN(0) if "position 0" in name else LSN(0x2000)
    for message in CASES[name]:
        assert outcome(fast, message, start) == outcome(reference, message, start), message


def test_positions_that_are_not_lsns_decode_alike() -> None:
    fast, reference = _pair({})
    for message in (RELATION, BEGIN, INSERT, COMMIT):
        for start in (0x2000, 0):
            assert outcome(fast, message, start) == outcome(reference, message, start)


def test_a_streamed_transaction_is_left_to_python() -> None:
    fast, reference = _pair({"streaming": "on"})
    stream_start = b"S" + struct.pack(">IB", 901, 1)
    streamed_insert = b"I" + struct.pack(">I", 901) + INSERT[1:]
    for message in (RELATION, stream_start, streamed_insert, b"E"):
        start = LSN(0x2000)
        assert outcome(fast, message, start) == outcome(reference, message, start)
