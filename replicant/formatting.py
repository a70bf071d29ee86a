"""Events as text: JSON Lines and a compact human form, and byte sizes for people.

One home for how replicant prints an event, shared by the ``replicant``
command, the demo and the sinks (:class:`~replicant.sinks.JsonLinesSink`).
Each formatter takes one event and returns one line without its newline.
How a column value becomes JSON is :func:`replicant.changes.json_value`'s
business; these functions only lay the events out.

:func:`format_json` is the reference for the JSON form: ``to_dict()`` and
the standard library's encoder. :data:`json_line` writes the same bytes
faster, for the sinks. Where the compiled extension is in use, row events,
Begin and Commit are written in C (``_speedups.JsonWriter``) straight from
the rows' values as received, without a Python value per column: a value
is written there only when the C code is certain to write what the
reference writes (and to raise when it raises), and goes to the Python code
for that one column otherwise. :data:`row_json` is the same for one row
(what the envelopes use). The Python twin lays the events out without the
generic ``to_dict()`` machinery and encodes with ``msgspec`` when it is
installed (the ``fast`` extra) and replicant is not running in pure Python
(``REPLICANT_PURE_PYTHON``); otherwise with a prepared standard-library
encoder (``JSON_ENCODER`` says which: ``"msgspec"`` or ``"json"``); it
writes the events the compiled writer leaves to it, and everything in pure
Python. The tests hold them all to the same bytes on every value type.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from types import ModuleType
from typing import Any, Final

from replicant import _accel
from replicant import values as _values
from replicant.changes import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Event,
    Insert,
    Message,
    RawChange,
    Read,
    Relation,
    Row,
    RowLayout,
    Truncate,
    Update,
    _json_field,
    json_value,
)
from replicant.errors import ReplicantError
from replicant.lsn import LSN

__all__ = ["format_json", "format_text", "human_bytes", "json_line", "row_json"]


def format_json(event: Event) -> str:
    """One JSON Lines line (without the newline) for ``event``: its ``to_dict()``.

    A raw payload, or a message's content, that is valid UTF-8 also gets a
    ``text`` field beside its base64, so text plugins such as test_decoding
    and text messages stay readable.
    """
    return json.dumps(_json_dict(event), ensure_ascii=False, separators=(",", ":"))


def _json_dict(event: Event) -> dict[str, Any]:
    """What :func:`format_json` writes for ``event``, before encoding: the one definition."""
    data = event.to_dict()
    if isinstance(event, Read):
        data["op"] = "read"  # a snapshot row, told apart from the stream's changes
    if isinstance(event, RawChange):
        with contextlib.suppress(UnicodeDecodeError):
            data["text"] = event.data.decode("utf-8")
    elif isinstance(event, Message):
        with contextlib.suppress(UnicodeDecodeError):
            data["text"] = event.content.decode("utf-8")
    return data


# --- the fast JSON Lines form --------------------------------------------------------------


def _import_msgspec() -> ModuleType | None:
    try:
        import msgspec
    except ImportError:
        return None
    module: ModuleType = msgspec  # typed even where mypy cannot see msgspec
    return module


_msgspec_module: Final = _import_msgspec()
# Pure-Python mode runs no compiled code of replicant's choosing, msgspec's
# included: the standard library's encoder then writes the lines.
_msgspec: Final = _msgspec_module if _accel.compiled is not None else None

JSON_ENCODER: Final[str] = "msgspec" if _msgspec is not None else "json"
"""What :data:`json_line`'s Python twin encodes with: ``"msgspec"`` or ``"json"`` (the stdlib's)."""

# The reference's encoder, made once (json.dumps with arguments builds one per call).
_stdlib_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

_datetime = _dt.datetime
# A datetime's isoformat(): compiled, a quarter of the method's time (which
# formats through PyUnicode_FromFormat), or the method itself.
_isoformat: Final[Callable[[_dt.datetime], str]] = (
    _dt.datetime.isoformat if _accel.compiled is None else _accel.compiled.isoformat
)
# Python writes a float with an exponent below 1e-4 and from 1e16 on, and
# NaN and the infinities as NaN, Infinity; msgspec writes those otherwise
# ("0.00001", "1e16", null): they go as Python's own text.
_FIXED_LOW = 1e-4
_FIXED_HIGH = 1e16
_INFINITY = float("inf")

Prepare = Callable[[Any], Any]


def _tame(data: Any) -> Any:
    """``data`` with what msgspec writes differently from ``json`` made to agree.

    Floats that Python writes with an exponent (or as NaN, Infinity) become
    ``msgspec.Raw`` of ``json``'s text for them. Containers are copied only
    when they hold one.
    """
    if isinstance(data, float):
        size = abs(data)
        if _FIXED_LOW <= size < _FIXED_HIGH or size == 0.0:
            return data
        if size != size:
            text = "NaN"
        elif size == _INFINITY:
            text = "Infinity" if data > 0 else "-Infinity"
        else:
            text = float.__repr__(data)
        assert _msgspec_module is not None
        return _msgspec_module.Raw(text.encode())
    kind = type(data)
    if kind is list or kind is tuple:
        tamed = [_tame(item) for item in data]
        if all(a is b for a, b in zip(tamed, data, strict=True)):
            return data
        return tamed
    if kind is dict:
        items = {key: _tame(value) for key, value in data.items()}
        return data if all(items[k] is v for k, v in data.items()) else items
    return data


def _untamed(data: Any) -> Any:
    return data


_infinity_form: Final = _values._json_text_infinity
_exact_form: Final = _values._json_text_exact
_INFINITE: Final[dict[Any, str]] = {
    b"infinity": "infinity",
    b"-infinity": "-infinity",
    "infinity": "infinity",
    "-infinity": "-infinity",
}


def _row_json(row: Row, prepare: Prepare) -> dict[str, Any]:
    """``row.to_dict()``, faster: the common types and forms inline, the rest as it does them."""
    layout = row._layout
    forms = layout.json
    raw = row._raw
    out: dict[str, Any] = {}
    for i, name in enumerate(layout.names):
        value = row[name]
        form = forms[i] if forms is not None else None
        if form is not None:
            given = raw[i]
            if form is _infinity_form and type(value) is _datetime:
                # values._json_text_infinity: "infinity" as the server wrote it
                infinite = _INFINITE.get(given)
                out[name] = _isoformat(value) if infinite is None else infinite
                continue
            if form is _exact_form and type(given) is bytes:
                # values._json_text_exact (numeric, ranges): the server's text
                try:
                    out[name] = given.decode()
                except UnicodeDecodeError as exc:
                    raise row._error(name, exc) from exc
                continue
            if given is not None and given is not UNCHANGED:
                try:
                    shown = form(given, value)
                except Exception as exc:  # a form parses the raw value: bad input
                    raise row._error(name, exc) from exc
                out[name] = shown if type(shown) is str else prepare(shown)
                continue
        kind = type(value)
        if kind is str or kind is int or value is None or kind is bool:
            out[name] = value
        elif kind is _datetime:
            out[name] = _isoformat(value)
        else:
            shown = json_value(value)
            out[name] = shown if type(shown) is str else prepare(shown)
    return out


def _lsn_str(lsn: Any) -> str:
    """``str(lsn)`` (what a row event's to_dict writes), LSN.__str__ inlined."""
    if type(lsn) is LSN:
        # %-formatting: measured at two thirds of the f-string's time.
        return "%X/%X" % (lsn >> 32, lsn & 0xFFFFFFFF)  # noqa: UP031
    return str(lsn)


def _field(value: Any, prepare: Prepare) -> Any:
    """``_json_field(value)`` (what Event.to_dict writes), the usual LSNs and times inlined."""
    kind = type(value)
    if kind is LSN:
        return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)  # noqa: UP031
    if value is None or kind is int:
        return value
    if kind is _datetime:
        return _isoformat(value)
    return prepare(_json_field(value))


def _event_json(event: Event, prepare: Prepare) -> Any:
    """``event.to_dict()`` (plus format_json's ``text``), laid out directly for the hot events."""
    kind = type(event)
    if kind is Insert:
        insert: Insert = event  # type: ignore[assignment]
        relation = insert.relation
        return {
            "kind": "insert",
            "lsn": _lsn_str(insert.lsn),
            "xid": insert.xid,
            "schema": relation.schema,
            "table": relation.table,
            "new": _row_json(insert.new, prepare),
        }
    if kind is Update:
        update: Update = event  # type: ignore[assignment]
        relation = update.relation
        old = update.old
        return {
            "kind": "update",
            "lsn": _lsn_str(update.lsn),
            "xid": update.xid,
            "schema": relation.schema,
            "table": relation.table,
            "new": _row_json(update.new, prepare),
            "old": None if old is None else _row_json(old, prepare),
        }
    if kind is Delete:
        delete: Delete = event  # type: ignore[assignment]
        relation = delete.relation
        return {
            "kind": "delete",
            "lsn": _lsn_str(delete.lsn),
            "xid": delete.xid,
            "schema": relation.schema,
            "table": relation.table,
            "old": _row_json(delete.old, prepare),
        }
    if kind is Begin:
        begin: Begin = event  # type: ignore[assignment]
        return {
            "kind": "begin",
            "lsn": _field(begin.lsn, prepare),
            "xid": _field(begin.xid, prepare),
            "final_lsn": _field(begin.final_lsn, prepare),
            "commit_time": _field(begin.commit_time, prepare),
        }
    if kind is Commit:
        commit: Commit = event  # type: ignore[assignment]
        return {
            "kind": "commit",
            "lsn": _field(commit.lsn, prepare),
            "xid": _field(commit.xid, prepare),
            "commit_lsn": _field(commit.commit_lsn, prepare),
            "commit_time": _field(commit.commit_time, prepare),
        }
    return prepare(_json_dict(event))


_JSON_LINE_DOC = """``format_json(event)`` and a newline, as UTF-8: byte for byte the same, faster.

    What the sinks write. Raises what :func:`format_json` raises for an
    event it cannot write (a column that cannot be read: DecodeError; a
    string that is not valid Unicode: UnicodeEncodeError).
    """


def _json_line_for(encoder: ModuleType | None) -> Callable[[Event], bytes]:
    """:func:`json_line` encoding with ``encoder`` (msgspec), or the standard library for None."""
    if encoder is None:
        encode_str = _stdlib_encode

        def json_line(event: Event) -> bytes:
            return (encode_str(_event_json(event, _untamed)) + "\n").encode("utf-8")

    else:
        encode: Callable[[Any], bytes] = encoder.json.Encoder().encode

        def json_line(event: Event) -> bytes:
            return encode(_event_json(event, _tame)) + b"\n"

    json_line.__doc__ = _JSON_LINE_DOC
    return json_line


# --- the compiled writer ----------------------------------------------------------------------
#
# _speedups.JsonWriter writes row events from their rows' values as received,
# column by column, following a plan made once per row layout: a code per
# column saying how its raw value becomes JSON (the numbers are _json.c's).
# A column has a code only when its layout reads it with replicant's own
# converter and JSON form for its type (a type registered by the user, a
# decoder that keeps raw values, anything else: code 0, the Python code
# below writes it); the C code then still checks each value and hands any
# it is not certain of to _column_json.

_J_FALLBACK: Final = 0
_J_INT_TEXT, _J_STR_UTF8, _J_STR_KEEP, _J_BOOL_TEXT, _J_BOOL_ANY, _J_FLOAT = 1, 2, 3, 4, 5, 6
_J_NUMERIC_TEXT, _J_DATE_TEXT, _J_TIMESTAMP_TEXT, _J_TIMESTAMPTZ_TEXT = 7, 8, 9, 10
_J_UUID_TEXT, _J_JSON_TEXT, _J_BYTEA_TEXT, _J_BYTEA_HEX = 11, 12, 13, 14
_J_INT2_BIN, _J_INT4_BIN, _J_INT8_BIN, _J_OID_BIN, _J_BOOL_BIN = 20, 21, 22, 23, 24
_J_NUMERIC_BIN, _J_DATE_BIN, _J_TIMESTAMP_BIN, _J_TIMESTAMPTZ_BIN = 25, 26, 27, 28
_J_UUID_BIN, _J_JSON_BIN, _J_JSONB_BIN, _J_BYTEA_BIN = 29, 30, 31, 32

# What Debezium writes for an unchanged TOASTed value (envelopes.DEBEZIUM_UNAVAILABLE).
_DEBEZIUM_UNAVAILABLE: Final = "__debezium_unavailable_value"

PlanEntry = tuple[Any, Any, int]  # (converter, JSON form, code)


def _plan_entries() -> tuple[dict[int, list[PlanEntry]], list[PlanEntry]]:
    """Per type OID, the converters and forms the C code knows; and those for any OID."""
    oid = _values.OID
    text, binary = _values.text_reader, _values.binary_reader
    text_form, binary_form = _values.text_json, _values.binary_json
    by_oid: dict[int, list[PlanEntry]] = {}

    def add(type_oid: int, convert: Any, form: Any, code: int) -> None:
        by_oid.setdefault(type_oid, []).append((convert, form, code))

    for type_oid, code in (
        (oid.INT2, _J_INT2_BIN),
        (oid.INT4, _J_INT4_BIN),
        (oid.INT8, _J_INT8_BIN),
        (oid.OID, _J_OID_BIN),
    ):
        add(type_oid, text(type_oid), None, _J_INT_TEXT)
        add(type_oid, binary(type_oid), None, code)
    add(oid.BOOL, text(oid.BOOL), None, _J_BOOL_TEXT)
    add(oid.BOOL, binary(oid.BOOL), None, _J_BOOL_BIN)
    for type_oid in (oid.FLOAT4, oid.FLOAT8):
        add(type_oid, text(type_oid), None, _J_FLOAT)
        add(type_oid, binary(type_oid), None, _J_FLOAT)
    for type_oid, text_code, binary_code in (
        (oid.NUMERIC, _J_NUMERIC_TEXT, _J_NUMERIC_BIN),
        (oid.DATE, _J_DATE_TEXT, _J_DATE_BIN),
        (oid.TIMESTAMP, _J_TIMESTAMP_TEXT, _J_TIMESTAMP_BIN),
        (oid.TIMESTAMPTZ, _J_TIMESTAMPTZ_TEXT, _J_TIMESTAMPTZ_BIN),
        (oid.JSON, _J_JSON_TEXT, _J_JSON_BIN),
        (oid.JSONB, _J_JSON_TEXT, _J_JSONB_BIN),
    ):
        add(type_oid, text(type_oid), text_form(type_oid), text_code)
        add(type_oid, binary(type_oid), binary_form(type_oid), binary_code)
    add(oid.UUID, text(oid.UUID), None, _J_UUID_TEXT)
    add(oid.UUID, binary(oid.UUID), None, _J_UUID_BIN)
    add(oid.BYTEA, text(oid.BYTEA), None, _J_BYTEA_TEXT)
    add(oid.BYTEA, binary(oid.BYTEA), None, _J_BYTEA_BIN)
    add(oid.BYTEA, bytes.fromhex, None, _J_BYTEA_HEX)  # wal2json's bytea
    # A type read as its text, whatever its OID: the text is the value.
    any_oid: list[PlanEntry] = [
        (text(oid.TEXT), None, _J_STR_UTF8),
        (binary(oid.TEXT), None, _J_STR_UTF8),
        (text(oid.TEXT, from_str=True), None, _J_STR_KEEP),
    ]
    return by_oid, any_oid


_PLAN_BY_OID, _PLAN_ANY_OID = _plan_entries()
# values._strict's wrapper (strict_values=True): it changes only what a
# value out of Python's range reads as, and the C code writes no such value.
_STRICT_CODE: Final = _values._strict(_values._keep_str, 0).__code__


def _unwrapped(convert: Any) -> Any:
    """The reader inside a strict_values wrapper, or ``convert`` itself."""
    if getattr(convert, "__code__", None) is _STRICT_CODE and convert.__closure__:
        cells = dict(zip(convert.__code__.co_freevars, convert.__closure__, strict=True))
        cell = cells.get("read")
        if cell is not None:
            return cell.cell_contents
    return convert


def _same(a: Any, b: Any) -> bool:
    # Bound builtin methods (bytes.fromhex) are made anew on each access: equal, not identical.
    return a is b or (type(a) is type(b) and type(a) is type(bytes.fromhex) and a == b)


def _column_code(type_oid: int, convert: Any, form: Any) -> int:
    convert = _unwrapped(convert)
    for known, known_form, code in _PLAN_BY_OID.get(type_oid, ()):
        if _same(convert, known) and form is known_form:
            return code
    if type_oid == _values.OID.BOOL and form is None:
        # wal2json's reader (JSON true/false, or "t"/"f"), when that decoder is loaded.
        wal2json = sys.modules.get("replicant.decoders.wal2json")
        if wal2json is not None and convert is getattr(wal2json, "_bool", None):
            return _J_BOOL_ANY
    if form is None:
        for known, _, code in _PLAN_ANY_OID:
            if convert is known:
                return code
    return _J_FALLBACK


def _make_plan(layout: RowLayout) -> tuple[Any, Any, Any]:
    """What JsonWriter needs of a layout: codes, each column's encoded key, converters.

    ``(None, None, None)`` when the columns cannot be one JSON object as the
    C code writes it (repeated names: ``to_dict`` keeps one; a name that is
    not valid Unicode): the Python code then writes every row of it.
    """
    names = layout.names
    if len(set(names)) != len(names) or not all(type(name) is str for name in names):
        return None, None, None
    forms = layout.json
    codes = bytes(
        _column_code(type_oid, convert, None if forms is None else forms[i])
        for i, (type_oid, convert) in enumerate(zip(layout.type_oids, layout.convert, strict=True))
    )
    try:
        keys = tuple(
            ("{" if i == 0 else ",").encode() + _stdlib_encode(name).encode() + b":"
            for i, name in enumerate(names)
        )
    except UnicodeEncodeError:
        return None, None, None
    return codes, keys, layout.convert


# Plans by what they are made of: a decoder that makes a layout per row (pgoutput's
# rows mixing text and binary columns) plans each shape once.
_PLANS: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
_MAX_PLANS: Final = 256


def _json_plan(layout: RowLayout) -> tuple[Any, Any, Any]:
    """The layout's plan, made and kept on it (RowLayout._json_plan) on first use."""
    try:
        key = (layout.names, layout.type_oids, layout.convert, layout.json)
        plan = _PLANS.get(key)
    except TypeError:  # a converter that cannot be hashed
        key, plan = None, None
    if plan is None:
        plan = _make_plan(layout)
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
    with contextlib.suppress(AttributeError):  # a layout of another kind: made each time
        layout._json_plan = plan
    return plan


def _column_shown(row: Row, i: int, debezium: bool) -> Any:
    """What ``row.to_dict()`` holds for column ``i`` (with Debezium's placeholder)."""
    shown = row._json_form(i)
    if debezium and type(shown) is dict and shown.get("$unchanged") is True:
        return _DEBEZIUM_UNAVAILABLE
    return shown


def _column_json(row: Row, i: int, debezium: bool) -> str:
    """Column ``i``'s JSON text, as the reference writes it (or raises)."""
    return _stdlib_encode(_column_shown(row, i, debezium))


def _row_dict(row: Row, debezium: bool) -> dict[str, Any]:
    """``row.to_dict()``; with ``debezium``, unchanged values as Debezium's placeholder."""
    data = row.to_dict()
    if debezium:
        for name, shown in data.items():
            if type(shown) is dict and shown.get("$unchanged") is True:
                data[name] = _DEBEZIUM_UNAVAILABLE
    return data


def _row_bytes(row: Row, debezium: bool = False) -> bytes:
    """The reference's UTF-8 JSON of :func:`_row_dict`: what ``row_json`` writes, the slow way."""
    return _stdlib_encode(_row_dict(row, debezium)).encode()


_python_json_line: Final = _json_line_for(_msgspec)

_writer: Final[Any] = (
    None
    if _accel.compiled is None
    else _accel.compiled.JsonWriter(
        _json_plan,
        _column_json,
        _row_bytes,
        _json_line_for(None),
        _python_json_line,
        Row,
        LSN,
        Insert,
        Update,
        Delete,
        UNCHANGED,
        Begin,
        Commit,
        _datetime,
        _isoformat,
    )
)

# One object, made once: the sinks call it for every event.
json_line: Final[Callable[[Event], bytes]] = _python_json_line if _writer is None else _writer
"""``json_line(event) -> bytes``: ``format_json(event)`` and a newline, as UTF-8, faster.

Byte for byte the same. What the sinks write. Row events are written by the compiled
``_speedups.JsonWriter`` straight from their rows' values as received
(where it is built and in use), other events and pure-Python mode by the
Python twin. Raises what :func:`format_json` raises for an event it cannot
write (a column that cannot be read: DecodeError; a string that is not
valid Unicode: UnicodeEncodeError).
"""

_row_writer: Final[Callable[[Row, bool], bytes]] = _row_bytes if _writer is None else _writer.row


def row_json(row: Row, debezium: bool = False) -> bytes:
    """The UTF-8 JSON object of ``row.to_dict()``, as ``json.dumps`` writes it (compact, UTF-8).

    With ``debezium`` an unchanged TOASTed value is Debezium's placeholder
    (``"__debezium_unavailable_value"``) instead of ``{"$unchanged": true}``.
    Written in C from the values as received where the compiled writer is in
    use, like :data:`json_line`; raises what ``to_dict()`` and the encoder
    raise (DecodeError for a column that cannot be read).
    """
    return _row_writer(row, debezium)


replicant_record: Final[Callable[[Event], bytes | None] | None] = (
    None if _writer is None else _writer.value
)
"""The compiled replicant-envelope record of a row event (None in pure Python).

``replicant_record(event)``: ``json_line(event)`` without the newline for
an Insert, Update or Delete; None for any other event.
"""

debezium_record: Final[Callable[..., bytes | None] | None] = (
    None if _writer is None else _writer.debezium
)
"""The compiled Debezium record of a row event, for envelopes.DebeziumEnvelope.

None in pure Python.

``debezium_record(event, transaction, txid, ts_ms, read=False)``:
``transaction`` is the source block's bytes up to the event's LSN; with
``read`` an Insert is written as a snapshot read. None where the
envelope's Python code must write the record.
"""


# Longer text and bytea values are cut (with an ellipsis) in the text form.
_MAX_TEXT_VALUE = 60


def _text_value(value: Any) -> str:
    if value is None:
        return "NULL"
    if value is UNCHANGED:
        return "(unchanged)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= _MAX_TEXT_VALUE else value[: _MAX_TEXT_VALUE - 1] + "…"
        return "'" + text.replace("'", "''") + "'"
    if isinstance(value, (bytes, bytearray, memoryview)):
        hexed = bytes(value).hex()
        if len(hexed) > _MAX_TEXT_VALUE:
            hexed = hexed[: _MAX_TEXT_VALUE - 1] + "…"
        return "'\\x" + hexed + "'"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    shown = json_value(value)
    if isinstance(shown, str):
        return shown
    return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))


def _text_row(row: Row) -> str:
    parts = []
    for name in row:
        try:
            shown = _text_value(row[name])
        except ReplicantError:
            # One value that cannot be read must not hide the rest of the row.
            shown = f"<undecodable {row.raw(name)!r}>"
        parts.append(f"{name}={shown}")
    return " ".join(parts)


def _text_payload(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "\\x" + data.hex()


def format_text(event: Event) -> str:
    """A compact one-line human form of ``event``: position, kind, what changed.

    ``0/1949A30  INSERT   public.accounts  id=1 owner='ada' balance=100.00``
    """
    head = f"{event.lsn!s:>11}  {event.kind.upper():<8} "
    if isinstance(event, (Insert, Update, Delete, Read)):
        where = f"{event.schema}.{event.table}  "
        if isinstance(event, (Insert, Read)):
            return head + where + _text_row(event.new)
        if isinstance(event, Update):
            text = head + where + _text_row(event.new)
            if event.old is not None:
                text += f"  (old: {_text_row(event.old)})"
            return text
        return head + where + _text_row(event.old)
    if isinstance(event, (Begin, Commit)):
        parts = [] if event.xid is None else [f"xid {event.xid}"]
        if event.commit_time is not None:
            parts.append(event.commit_time.isoformat(sep=" ", timespec="seconds"))
        return head + "  ".join(parts)
    if isinstance(event, Message):
        how = "transactional" if event.transactional else "non-transactional"
        return head + f"{event.prefix}: {_text_payload(event.content)}  ({how})"
    if isinstance(event, Truncate):
        tables = ", ".join(f"{schema}.{table}" for schema, table in event.tables)
        flags = [
            f
            for f, on in (("cascade", event.cascade), ("restart identity", event.restart_identity))
            if on
        ]
        return head + tables + (f"  ({', '.join(flags)})" if flags else "")
    if isinstance(event, Relation):
        columns = ", ".join(c.name + ("*" if c.key else "") for c in event.columns)
        return head + f"{event.schema}.{event.table}  ({columns})"
    if isinstance(event, RawChange):
        return head + _text_payload(event.data)
    fields = event.to_dict()
    rest = " ".join(
        f"{key}={value}"
        for key, value in fields.items()
        if key not in ("kind", "lsn") and value is not None
    )
    return head + rest


def human_bytes(size: int | None) -> str:
    """``size`` bytes in PostgreSQL's style (1 kB = 1024 bytes): ``"512 B"``, ``"1.5 MB"``.

    ``None`` (a size the server does not know) is ``"-"``.
    """
    if size is None:
        return "-"
    sign = "-" if size < 0 else ""
    value = float(abs(size))
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.1f} {unit}" if value < 10 else f"{sign}{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
