"""Events as text: JSON Lines and a compact human form, and byte sizes for people.

One home for how replicant prints an event, shared by the ``replicant``
command, the demo and the sinks (:class:`~replicant.sinks.JsonLinesSink`).
Each formatter takes one event and returns one line without its newline.
How a column value becomes JSON is :func:`replicant.changes.json_value`'s
business; these functions only lay the events out.

:func:`format_json` is the reference for the JSON form: ``to_dict()`` and
the standard library's encoder. :func:`json_line` writes the same bytes
faster, for the sinks: it lays out row events, Begin and Commit without the
generic ``to_dict()`` machinery and encodes with ``msgspec`` when it is
installed (the ``fast`` extra) and replicant is not running in pure Python
(``REPLICANT_PURE_PYTHON``); otherwise with a prepared standard-library
encoder (``JSON_ENCODER`` says which: ``"msgspec"`` or ``"json"``). The
tests hold the two to the same bytes on every value type.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
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
    Truncate,
    Update,
    _json_field,
    json_value,
)
from replicant.errors import ReplicantError
from replicant.lsn import LSN

__all__ = ["format_json", "format_text", "human_bytes", "json_line"]


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
"""What :func:`json_line` encodes with: ``"msgspec"`` or ``"json"`` (the standard library)."""

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


# One function, made once: the sinks call it for every event.
json_line: Final = _json_line_for(_msgspec)


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
