"""The event model: rows, UNCHANGED, repr, JSON forms, construction paths."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import ipaddress
import json
import math
import pickle
import uuid
from decimal import Decimal
from typing import Any

import pytest

from replicant import changes
from replicant.changes import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Event,
    Insert,
    Relation,
    Row,
    RowLayout,
    Truncate,
    Update,
    json_value,
)
from replicant.errors import DecodeError
from replicant.lsn import LSN
from replicant.values import BinaryValue, text_reader

UTC = dt.timezone.utc


def _relation(full: bool = False) -> Relation:
    columns = (
        Column("id", 23, -1, True),
        Column("name", 25, -1, full),
        Column("at", 1184, -1, full),
    )
    return Relation(LSN(1), 5, 16384, "public", "t", columns, "full" if full else "default")


def _row(*raw: Any) -> Row:
    oids = [23, 25, 1184]
    return Row(RowLayout(["id", "name", "at"], oids, [text_reader(o) for o in oids]), list(raw))


def test_row_is_a_read_only_mapping_converted_lazily() -> None:
    calls: list[bytes] = []

    def counting(raw: bytes) -> int:
        calls.append(raw)
        return int(raw)

    row = Row(RowLayout(["a", "b"], [23, 23], [counting, counting]), [b"1", b"2"])
    assert list(row) == ["a", "b"] and len(row) == 2 and "a" in row and "z" not in row
    assert calls == []
    assert row["b"] == 2 and row["b"] == 2
    assert calls == [b"2"]  # converted once, on first read, and cached
    assert dict(row) == {"a": 1, "b": 2}
    assert calls == [b"2", b"1"]
    with pytest.raises(KeyError):
        row["z"]
    with pytest.raises(TypeError):
        row["a"] = 5  # type: ignore[index]


def test_null_and_unchanged_are_never_converted() -> None:
    row = _row(b"1", None, UNCHANGED)
    assert row["name"] is None
    assert row["at"] is UNCHANGED
    assert row.raw("at") is UNCHANGED
    assert UNCHANGED is not None and repr(UNCHANGED) == "UNCHANGED"
    assert copy.deepcopy(UNCHANGED) is UNCHANGED
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert type(UNCHANGED)() is UNCHANGED


def test_undecodable_value_raises_decode_error_naming_the_column() -> None:
    row = _row(b"one", b"x", b"2024-99-99")
    with pytest.raises(DecodeError, match=r"column 'id' .*b'one'"):
        row["id"]
    assert "<undecodable" in repr(row)


def test_events_are_frozen_and_slotted() -> None:
    event = changes.new_insert(LSN(10), 7, _relation(), _row(b"1", b"a", None))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.lsn = LSN(11)  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    assert Insert(LSN(10), 7, _relation(), _row(b"1", b"a", None)) == event


def test_fast_constructors_match_the_dataclass_ones() -> None:
    relation = _relation(full=True)
    new, old = _row(b"1", b"a", None), _row(b"1", b"b", None)
    assert changes.new_update(LSN(3), 4, relation, new, old) == Update(
        LSN(3), 4, relation, new, old
    )
    assert changes.new_delete(LSN(3), None, relation, old) == Delete(LSN(3), None, relation, old)


def test_row_event_properties_and_keys() -> None:
    relation = _relation()
    new = _row(b"2", b"new", None)
    insert = Insert(LSN(1), 1, relation, new)
    assert (insert.schema, insert.table, insert.old) == ("public", "t", None)
    assert dict(insert.key) == {"id": 2}
    update = Update(LSN(1), 1, relation, new, None)
    assert dict(update.key) == {"id": 2}
    old_key = _row(b"1", None, None).project(["id"])
    update = Update(LSN(1), 1, relation, new, old_key)
    assert dict(update.key) == {"id": 1}
    delete = Delete(LSN(1), 1, _relation(full=True), _row(b"1", b"x", None))
    assert delete.new is None
    assert dict(delete.key) == {"id": 1, "name": "x", "at": None}


def test_repr_is_readable() -> None:
    event = Insert(LSN(0x16B3748), 735, _relation(), _row(b"1", b"a", None))
    assert repr(event) == (
        "Insert(lsn=0/16B3748, xid=735, relation=public.t, new={'id': 1, 'name': 'a', 'at': None})"
    )
    when = dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert repr(Commit(LSN(5), None, LSN(4), when)) == (
        "Commit(lsn=0/5, commit_lsn=0/4, commit_time=2024-01-01T00:00:00+00:00)"
    )
    assert "columns=(id*:23, name:25, at:1184)" in repr(_relation())


def test_to_dict_is_json_and_lossless() -> None:
    at = "2024-05-06 07:08:09.123456+02"
    event = Update(LSN(0x100000010), 9, _relation(), _row(b"1", "é".encode(), at.encode()), None)
    out = json.loads(json.dumps(event.to_dict()))
    assert out == {
        "kind": "update",
        "lsn": "1/10",
        "xid": 9,
        "schema": "public",
        "table": "t",
        "new": {"id": 1, "name": "é", "at": "2024-05-06T07:08:09.123456+02:00"},
        "old": None,
    }
    truncate = Truncate(LSN(2), 3, (_relation(),), True, False)
    assert truncate.to_dict()["tables"] == [{"schema": "public", "table": "t"}]
    begin = Begin(LSN(2), 3, LSN(9), None).to_dict()
    assert begin == {
        "kind": "begin",
        "lsn": "0/2",
        "xid": 3,
        "final_lsn": "0/9",
        "commit_time": None,
    }
    relation = _relation().to_dict()
    assert relation["columns"][0] == {
        "name": "id",
        "type_oid": 23,
        "type_modifier": -1,
        "key": True,
    }
    json.dumps(relation)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("1.50"), "1.50"),
        (Decimal("NaN"), "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
        (1.5, 1.5),
        (b"\x00\xff", {"$base64": "AP8="}),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.time(1, 2, 3, 4), "01:02:03.000004"),
        (dt.timedelta(days=1, seconds=7200), "P1DT2H"),
        (dt.timedelta(seconds=-0.5), "P-1DT23H59M59.5S"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (ipaddress.ip_interface("10.0.0.1/8"), "10.0.0.1/8"),
        (ipaddress.ip_network("10.0.0.0/8"), "10.0.0.0/8"),
        ([Decimal("1"), None, [b"a"]], ["1", None, [{"$base64": "YQ=="}]]),
        ({"k": [1, "x"]}, {"k": [1, "x"]}),
        (UNCHANGED, {"$unchanged": True}),
        (BinaryValue(600, b"\x01"), {"$base64": "AQ==", "type_oid": 600}),
    ],
)
def test_json_value(value: Any, expected: Any) -> None:
    assert json_value(value) == expected
    json.dumps(json_value(value), allow_nan=False)


def test_every_event_class_has_kind_to_dict_and_repr() -> None:
    classes = [c for c in vars(changes).values() if isinstance(c, type) and issubclass(c, Event)]
    kinds = {c.kind for c in classes if not c.__name__.startswith("_") and c is not Event}
    assert len(kinds) == 22  # with read, snapshot_begin and snapshot_end
    when = dt.datetime(2024, 1, 1, tzinfo=UTC)
    for cls in classes:
        if cls in (Event, changes._RowEvent) or issubclass(cls, changes._RowEvent):
            continue
        args = []
        for field in dataclasses.fields(cls):
            hint = str(field.type)
            if "LSN" in hint:
                args.append(LSN(1))
            elif "datetime" in hint:
                args.append(when)
            elif "bool" in hint:
                args.append(True)
            elif "tuple[Column" in hint:
                args.append((Column("a", 23, -1, True),))
            elif "tuple[Relation" in hint:
                args.append((_relation(),))
            elif "bytes" in hint:
                args.append(b"b")
            elif "str" in hint:
                args.append("s")
            else:
                args.append(1)
        event = cls(*args)
        assert repr(event).startswith(cls.__name__ + "(lsn=0/1")
        out = event.to_dict()
        assert out["kind"] == cls.kind and out["lsn"] == "0/1"
        json.dumps(out, allow_nan=False)
