"""Fuzzing the decoders: random and mutated payloads raise only DecodeError.

Whatever the bytes, decode() either returns events or raises DecodeError
(a ProtocolError), and so does reading every value, repr and to_dict of the
events it returned. Nothing may raise anything else or hang.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant.changes import Event, Row
from replicant.decoders import PgOutputDecoder, RawDecoder, Wal2JsonDecoder
from replicant.errors import DecodeError
from replicant.lsn import LSN

GOLDEN = Path(__file__).parent / "golden"
FUZZ = settings(
    max_examples=200,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _pgoutput_samples() -> list[tuple[dict[str, Any], list[bytes]]]:
    """Each golden read's context-free decoder options and all its messages."""
    out = []
    for path in sorted(GOLDEN.glob("pgoutput-pg*.json")):
        for read in json.loads(path.read_text(encoding="utf-8"))["reads"]:
            messages = [bytes.fromhex(m["data"]) for m in read["messages"]]
            out.append((read["options"], messages))
    return out


PGOUTPUT = _pgoutput_samples()
WAL2JSON = [
    (read["format_version"], [m["data"].encode() for m in read["messages"]])
    for path in sorted(GOLDEN.glob("wal2json-pg*.json"))
    for read in json.loads(path.read_text(encoding="utf-8"))["reads"]
]


def _touch(events: list[Event]) -> None:
    """Read everything an event offers, as a callback might."""
    for event in events:
        for value in vars_of(event):
            if isinstance(value, Row):
                for name in value:
                    with contextlib.suppress(DecodeError):
                        value[name]
        repr(event)
        with contextlib.suppress(DecodeError):
            json.dumps(event.to_dict())


def vars_of(event: Event) -> list[Any]:
    return [getattr(event, name) for name in event.__dataclass_fields__]


def _primed_pgoutput(options: dict[str, str], messages: list[bytes]) -> PgOutputDecoder:
    streaming = {"on": True, "off": False}.get(options.get("streaming", "off"), "parallel")
    decoder = PgOutputDecoder("p", streaming=streaming)
    for message in messages:  # every relation and type, in its stream context
        decoder.decode(message, 1, 1)
    return decoder


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value in edits:
        if not buf:
            buf.append(value)
            continue
        at = where % len(buf)
        if kind == 0:
            buf[at] = value
        elif kind == 1:
            buf.insert(at, value)
        elif kind == 2:
            del buf[at]
        else:
            del buf[at:]
    return bytes(buf)


# Every type with a reader, and one without.
TYPE_OIDS = [
    *(16, 17, 20, 21, 23, 25, 26, 114, 650, 700, 701, 869, 1000, 1007, 1082),
    *(1083, 1114, 1184, 1186, 1231, 1266, 1700, 2950, 3802, 3807, 99999),
]

EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(data=st.data(), edits=EDITS)
def test_pgoutput_mutated_golden_messages(data: st.DataObject, edits: Any) -> None:
    options, messages = data.draw(st.sampled_from(PGOUTPUT))
    message = data.draw(st.sampled_from(messages))
    decoder = _primed_pgoutput(options, messages)
    payload = _mutate(message, edits)
    try:
        events = decoder.decode(payload, 100, 100)
    except DecodeError:
        return
    _touch(events)


@FUZZ
@given(
    first=st.sampled_from(b"BCORYIUDTMSEcAbPKrpZ"),
    body=st.binary(max_size=200),
    in_stream=st.booleans(),
)
def test_pgoutput_random_payloads(first: int, body: bytes, in_stream: bool) -> None:
    options, messages = PGOUTPUT[0]
    decoder = _primed_pgoutput(options, messages)
    if in_stream:
        decoder.decode(b"S" + struct.pack(">IB", 77, 1), 1, 1)
    try:
        events = decoder.decode(bytes([first]) + body, 5, 5)
    except DecodeError:
        return
    _touch(events)


@FUZZ
@given(
    oid=st.sampled_from(TYPE_OIDS),
    value=st.binary(max_size=64),
    binary=st.booleans(),
)
def test_pgoutput_random_column_values(oid: int, value: bytes, binary: bool) -> None:
    decoder = PgOutputDecoder("p", binary=binary)
    relation = (
        b"R"
        + struct.pack(">I", 1)
        + b"s\x00t\x00d"
        + struct.pack(">H", 1)
        + b"\x01c\x00"
        + struct.pack(">Ii", oid, -1)
    )
    decoder.decode(relation, 1, 1)
    kind = b"b" if binary else b"t"
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + kind
    payload += struct.pack(">I", len(value)) + value
    _touch(decoder.decode(payload, 2, 2))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    action=st.sampled_from(["B", "C", "I", "U", "D", "T", "M", "X", None]),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "xid",
                "lsn",
                "nextlsn",
                "schema",
                "table",
                "columns",
                "identity",
                "pk",
                "prefix",
                "content",
                "transactional",
                "timestamp",
                "change",
                "kind",
            ]
        ),
        JSON_VALUES,
    ),
    version=st.sampled_from([1, 2]),
)
def test_wal2json_random_documents(action: Any, fields: dict[str, Any], version: int) -> None:
    if action is not None:
        fields["action"] = action
    decoder = Wal2JsonDecoder(format_version=version)
    try:
        events = decoder.decode(json.dumps(fields).encode(), 3, 3)
    except DecodeError:
        return
    _touch(events)


@FUZZ
@given(data=st.data(), edits=EDITS)
def test_wal2json_mutated_golden_documents(data: st.DataObject, edits: Any) -> None:
    if not WAL2JSON:
        return
    version, messages = data.draw(st.sampled_from(WAL2JSON))
    decoder = Wal2JsonDecoder(format_version=version)
    for message in messages[:3]:
        decoder.decode(message, 1, 1)
    payload = _mutate(data.draw(st.sampled_from(messages)), edits)
    try:
        events = decoder.decode(payload, 100, 100)
    except DecodeError:
        return
    _touch(events)


@settings(max_examples=50, deadline=1000)
@given(payload=st.binary(max_size=100), start=st.integers(0, 2**64 - 1))
def test_raw_never_fails(payload: bytes, start: int) -> None:
    (event,) = RawDecoder("x").decode(payload, start, start)
    assert event.lsn == LSN(start)
    _touch([event])
