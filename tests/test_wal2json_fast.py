"""The fast wal2json path gives exactly what the reference path gives.

Format 2 Begin, Commit and row records are read in one call by the
compiled ``_speedups.w2j_record`` when built; its Python twin
``_record_fields_python`` reads the same fields from the reference parse. The
rest, and anything either declines, goes the reference way (the standard
library's parse, dict by dict; what pure Python runs). Held here: the compiled reader gives the
twin's fields or declines, never other fields; a decoder on the fast path
gives the same events, the same values and the same DecodeError as one on
the reference path, on every type a real server writes, on malformed and
truncated records and on random records.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant import _accel
from replicant.changes import Event
from replicant.decoders import Wal2JsonDecoder
from replicant.decoders import wal2json as w2j
from replicant.errors import DecodeError

from .conftest import Database
from .type_samples import all_samples, create_all_types, insert_all_types

COMPILED = getattr(_accel.compiled, "w2j_record", None)


def _decoder(path: str) -> Wal2JsonDecoder:
    decoder = Wal2JsonDecoder(format_version=2)
    if path == "reference":
        decoder._fields = None
    elif path == "twin":
        decoder._fields = w2j._record_fields_python
    else:
        assert decoder._fields is COMPILED is not None
    return decoder


PATHS = ["fast", "twin"] if COMPILED is not None else ["twin"]


def _summary(event: Event) -> Any:
    rows = []
    for side in ("new", "old"):
        row = getattr(event, side, None)
        if row is not None:
            rows.append([(n, row.raw(n), row.type_oid(n)) for n in row])
    # repr: every field, the relation, and each value as read (or <undecodable ...>)
    return (repr(event), rows)


def _outcomes(decoder: Wal2JsonDecoder, payloads: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for i, payload in enumerate(payloads):
        try:
            events = decoder.decode(payload, 1000 + i, 1000 + i)
        except DecodeError as exc:
            out.append(("DecodeError", str(exc), decoder.in_transaction))
        else:
            out.append(([_summary(e) for e in events], decoder.in_transaction))
    return out


def assert_same_as_reference(payloads: list[bytes]) -> None:
    """Each fast path decodes ``payloads`` (in order) as the reference path does."""
    expected = _outcomes(_decoder("reference"), payloads)
    for path in PATHS:
        assert _outcomes(_decoder(path), payloads) == expected, path
    if COMPILED is not None:
        for payload in payloads:
            fields = COMPILED(payload)
            assert fields is None or fields == w2j._record_fields_python(payload), payload


def test_the_compiled_reader_is_used_when_built() -> None:
    if _accel.compiled is None:
        # Pure Python takes the reference path: the twin only wraps it.
        assert Wal2JsonDecoder()._fields is None
    else:
        assert Wal2JsonDecoder()._fields is _accel.compiled.w2j_record
    assert Wal2JsonDecoder(format_version=1)._fields is None


# --- what a real server writes ---------------------------------------------------------------


def _records(db: Database, slot: str) -> list[bytes]:
    options = Wal2JsonDecoder(format_version=2).start_options(150000)
    flat = [item for pair in options.items() for item in pair]
    rows = db.query(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, VARIADIC %s)", slot, flat
    )
    return [data.encode() for (data,) in rows]


def test_every_type_from_a_server(wal2json_db: Database) -> None:
    db = wal2json_db
    samples = all_samples(db)
    create_all_types(db, samples)
    db.execute("ALTER TABLE everything REPLICA IDENTITY FULL")
    db.execute("SELECT pg_create_logical_replication_slot('w2j_fast', 'wal2json')")
    insert_all_types(db, samples)  # rows 1 (every value) and 2 (every column NULL)
    db.execute("UPDATE everything SET id = id + 10")
    db.execute("DELETE FROM everything WHERE id = 11")
    db.execute("ALTER TABLE everything REPLICA IDENTITY DEFAULT")
    db.execute("UPDATE everything SET id = id + 10")
    db.execute("DELETE FROM everything")
    db.execute("SELECT pg_logical_emit_message(true, 'p', 'héllo')")
    db.execute("TRUNCATE everything")
    db.execute("INSERT INTO everything (id) VALUES (3)")
    payloads = _records(db, "w2j_fast")
    actions = [json.loads(p)["action"] for p in payloads]
    assert {"B", "C", "I", "U", "D", "M", "T"} <= set(actions)
    if COMPILED is not None:
        # The compiled reader takes every record of these kinds a server writes.
        for payload, action in zip(payloads, actions, strict=True):
            taken = COMPILED(payload) is not None
            assert taken == (action in "BCIUD"), payload[:300]
    assert_same_as_reference(payloads)
    # Cut anywhere, a record is malformed the same way on every path.
    row = next(p for p, a in zip(payloads, actions, strict=True) if a == "I")
    assert_same_as_reference([row[:cut] for cut in range(0, len(row), 3)])


# --- malformed records ----------------------------------------------------------------------

_INSERT = (
    b'{"action":"I","xid":7,"timestamp":"2024-01-01 00:00:01+00","lsn":"0/16B0010",'
    b'"schema":"public","table":"t","columns":[{"name":"id","type":"bigint","typeoid":20,'
    b'"value":1},{"name":"d","type":"numeric","typeoid":1700,"value":-0.50}],'
    b'"pk":[{"name":"id","type":"bigint","typeoid":20}]}'
)

_MALFORMED = [
    b"",
    b" " + _INSERT,
    _INSERT + b" x",
    _INSERT.replace(b'"lsn":"0/16B0010"', b'"lsn":null'),
    _INSERT.replace(b'"lsn":"0/16B0010"', b'"lsn":"0/16B00100"'),
    _INSERT.replace(b'"lsn":"0/16B0010"', b'"lsn":" 0/16B0010"'),
    _INSERT.replace(b'"lsn":"0/16B0010"', b'"lsn":12'),
    _INSERT.replace(b'"xid":7', b'"xid":"7"'),
    _INSERT.replace(b'"xid":7', b'"xid":7.5'),
    _INSERT.replace(b'"xid":7', b'"xid":true'),
    _INSERT.replace(b'"xid":7', b'"xid":-0'),
    _INSERT.replace(b'"xid":7', b'"xid":123456789012345678901234567890'),
    _INSERT.replace(b'"schema":"public",', b""),
    _INSERT.replace(b'"schema":"public"', b'"schema":null'),
    _INSERT.replace(b'"table":"t",', b""),
    _INSERT.replace(b'"table":"t"', b'"table":["t"]'),
    _INSERT.replace(b'"name":"id","type"', b'"type"'),
    _INSERT.replace(b'"name":"id"', b'"name":5'),
    _INSERT.replace(b'"name":"id"', b'"name":"i\\u0064"'),
    _INSERT.replace(b'"name":"id"', b'"name":"id","name":"x"'),
    _INSERT.replace(b'"typeoid":20,"value":1', b'"typeoid":"20","value":1'),
    _INSERT.replace(b'"typeoid":20,"value":1', b'"typeoid":null,"value":1'),
    _INSERT.replace(b'"typeoid":20,"value":1', b'"value":1'),
    _INSERT.replace(b'"typeoid":20,"value":1', b'"typeoid":20'),
    _INSERT.replace(b'"value":1}', b'"value":[1,{"a":2.5}]}'),
    _INSERT.replace(b'"value":1}', b'"value":-0}'),
    _INSERT.replace(b'"value":1}', b'"value":NaN}'),
    _INSERT.replace(b'"value":1}', b'"value":01}'),
    _INSERT.replace(b'"value":1}', b'"value":1.}'),
    _INSERT.replace(b'"value":1}', b'"value":"\\ud800"}'),
    _INSERT.replace(b'"value":1}', b'"value":"\\ud83d\\ude00 \\u00e9 \\n"}'),
    _INSERT.replace(b'"value":1}', b'"value":"\xc3\xa9"}'),
    _INSERT.replace(b'"value":1}', b'"value":"\xc3"}'),
    _INSERT.replace(b'"value":1}', b'"value":"\xed\xa0\x80"}'),
    _INSERT.replace(b'"value":1}', b'"value":"\x01"}'),
    _INSERT.replace(b'"type":"bigint"', b'"type":"\xff"'),
    _INSERT.replace(b'"columns":[', b'"columns":[1,'),
    _INSERT.replace(b'"columns":[', b'"columns":{"a":[').replace(b"],", b"]},", 1),
    _INSERT.replace(b'"columns"', b'"identity"'),
    _INSERT.replace(b'"columns"', b'"columns":[],"x"'),
    _INSERT.replace(b'"action":"I"', b'"action":"D"'),
    _INSERT.replace(b'"action":"I"', b'"action":"U"'),
    _INSERT.replace(b'"action":"I"', b'"action":"U","identity":[{"name":"id","value":2}]'),
    _INSERT.replace(b'"action":"I"', b'"action":"X"'),
    _INSERT.replace(b'"action":"I"', b'"action":1'),
    _INSERT.replace(b'"action":"I",', b""),
    _INSERT.replace(b'"action":"I"', b'"\\u0061ction":"I"'),
    _INSERT.replace(b'"action":"I"', b'"action":"I","action":"D"'),
    _INSERT.replace(b'"pk":[{"name":"id"', b'"pk":[{"nom":"id"'),
    _INSERT.replace(b'"pk":[{"name":"id"', b'"pk":[{"name":null'),
    _INSERT.replace(b'"pk":[', b'"pk":{"name":"id"},"x":['),
    _INSERT.replace(b'"public"', b'"p\\"ub\\\\lic\\/"'),
    _INSERT.replace(b"{", b" { ").replace(b":", b" :\n").replace(b",", b"\t,\r"),
    _INSERT.replace(b'"schema"', b'"extra":[[[[[[[[[[[{"deep":true}]]]]]]]]]]],"schema"'),
    b'{"action":"B","xid":7,"lsn":"0/1","timestamp":"not a time"}',
    b'{"action":"B","xid":7,"lsn":"0/1","timestamp":5}',
    b'{"action":"B","xid":null,"lsn":null,"timestamp":null}',
    b'{"action":"B"}',
    b'{"action":"C","xid":7,"lsn":"0/1","nextlsn":"zz"}',
    b'{"action":"C","nextlsn":"0/5","timestamp":"2024-13-01 00:00:00+00"}',
    b'{"action":"C"}',
    b'{"action":"M","transactional":false,"prefix":"p","content":"c"}',
    b'{"action":"T","lsn":"0/1","schema":"s","table":"t"}',
    b"[]",
    b"{}",
    b'"I"',
]


@pytest.mark.parametrize("payload", _MALFORMED)
def test_malformed_and_unusual_records(payload: bytes) -> None:
    # Alone, and after a Begin and a first row (what was learned of the table).
    assert_same_as_reference([payload])
    begin = b'{"action":"B","xid":7,"lsn":"0/1","timestamp":"2024-01-01 00:00:01+00"}'
    assert_same_as_reference([begin, _INSERT, payload, _INSERT])


def test_the_compiled_reader_takes_what_wal2json_writes() -> None:
    if COMPILED is None:
        pytest.skip("the compiled module is not in use")
    assert COMPILED(_INSERT) == w2j._record_fields_python(_INSERT)
    assert COMPILED(_INSERT)[7] == (("id", "d"), (20, 1700), ["1", "-0.50"])
    unusual = _INSERT.replace(b'"value":1}', b'"value":"\\ud83d\\ude00 \\u00e9 \\n"}')
    assert COMPILED(unusual)[7][2][0] == "\U0001f600 é \n"
    # Declined, for the reference path to read or reject:
    for declined in (b" " + _INSERT, _INSERT + b"x", b'{"action":"M"}', _INSERT[:-1]):
        assert COMPILED(declined) is None
    assert COMPILED(bytearray(_INSERT)) is None  # not bytes: the reference's to read
    assert COMPILED("text") is None  # type: ignore[arg-type]


# --- random records ---------------------------------------------------------------------------

_names = st.sampled_from(["id", "a", "b", "note", "é", 'q"t', ""]) | st.text(max_size=4)
_oids = st.sampled_from([16, 17, 20, 21, 23, 25, 700, 701, 1082, 1114, 1184, 1700, 3802, 0])
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["", "t", "12.50", "2024-01-01 00:00:01+00", "00ff", "{1,2}", "NaN", "\x00", "\ud800"]
    ),
    st.text(max_size=6),
)
_values = _json_scalars | st.lists(_json_scalars, max_size=2)


@st.composite
def _column(draw: st.DrawFn) -> dict[str, Any]:
    column: dict[str, Any] = {}
    if draw(st.integers(0, 30)):
        column["name"] = draw(_names)
    else:
        column["name"] = draw(_json_scalars)
    column["type"] = "x"
    kind = draw(st.integers(0, 20))
    if kind:
        column["typeoid"] = draw(_oids)
    elif draw(st.booleans()):
        column["typeoid"] = draw(_json_scalars)
    if draw(st.integers(0, 20)):
        column["value"] = draw(_values)
    return column


_lsns = st.sampled_from(["0/16B0010", "1/0", "FFFFFFFF/FFFFFFFF", "0/1", "x/1", " 0/2", "0/"])


@st.composite
def _record(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {"action": draw(st.sampled_from("BCIUDIIUMTX"))}
    maybe = st.integers(0, 9)
    if draw(maybe):
        record["xid"] = draw(st.integers(0, 2**33) | st.sampled_from([None, "7", 1.5]))
    if draw(maybe):
        record["lsn"] = draw(_lsns | st.sampled_from([None, 5]))
    if record["action"] == "C" and draw(maybe):
        record["nextlsn"] = draw(_lsns)
    if draw(maybe):
        record["timestamp"] = draw(
            st.sampled_from(["2024-01-01 00:00:01+00", "2024-01-01 00:00:01.5+02", None, "x", 3])
        )
    if record["action"] in "IUDTM" and draw(maybe):
        record["schema"] = draw(st.sampled_from(["public", "s", ""]) | _json_scalars)
        record["table"] = draw(st.sampled_from(["t", "u"]) | _json_scalars)
    columns = st.lists(_column(), max_size=4)
    if draw(maybe) > 2:
        record["columns"] = draw(columns)
    if draw(maybe) > 5:
        record["identity"] = draw(columns)
    if draw(maybe) > 4:
        record["pk"] = [{"name": n, "type": "x"} for n in draw(st.lists(_names, max_size=2))]
    if record["action"] == "M":
        record.update(prefix="p", content=draw(st.text(max_size=3)), transactional=True)
    return record


def _text(record: dict[str, Any], spaced: bool, order: list[int]) -> bytes:
    items = list(record.items())
    items = [items[i % len(items)] for i in order] or items  # reordered, some repeated
    separators = (", ", ": ") if spaced else (",", ":")
    body = ",".join(
        json.dumps(k) + separators[1] + json.dumps(v, separators=separators) for k, v in items
    )
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.tuples(
            _record(),
            st.booleans(),
            st.lists(st.integers(0, 12), max_size=14),
            st.none() | st.integers(0, 400),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_records(records: list[tuple[dict[str, Any], bool, list[int], int | None]]) -> None:
    payloads = []
    for record, spaced, order, cut in records:
        text = _text(record, spaced, order if order and order[0] > 9 else list(range(len(record))))
        payloads.append(text if cut is None else text[:cut])
    assert_same_as_reference(payloads)


_plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


@st.composite
def _well_formed(draw: st.DrawFn) -> dict[str, Any]:
    """A record as wal2json writes one (any names, OIDs and scalar values)."""
    action = draw(st.sampled_from("BCIIIUD"))
    record: dict[str, Any] = {"action": action, "xid": draw(st.integers(0, 2**32))}
    record["timestamp"] = "2024-01-01 00:00:01+00"
    record["lsn"] = f"{draw(st.integers(0, 2**32 - 1)):X}/{draw(st.integers(0, 2**32 - 1)):X}"
    if action == "C":
        record["nextlsn"] = "1/0"
        return record
    if action == "B":
        return record
    record["schema"] = draw(st.sampled_from(["public", "s"]))
    record["table"] = draw(st.sampled_from(["t", "u"]))
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    columns = [
        {"name": n, "type": "x", "typeoid": draw(_oids), "value": draw(_plain_scalars)}
        for n in names
    ]
    if action != "D":
        record["columns"] = columns
    if action == "D" or draw(st.booleans()):
        record["identity"] = columns[:1]
    if draw(st.booleans()):
        record["pk"] = [{"name": names[0], "type": "x", "typeoid": 23}]
    return record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_well_formed(), min_size=1, max_size=8), st.booleans())
def test_random_well_formed_records(records: list[dict[str, Any]], spaced: bool) -> None:
    payloads = [_text(r, spaced, list(range(len(r)))) for r in records]
    if COMPILED is not None:
        assert all(COMPILED(p) is not None for p in payloads)
    assert_same_as_reference(payloads)
