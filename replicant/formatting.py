"""Events as text: JSON Lines and a compact human form, and byte sizes for people.

One home for how replicant prints an event, shared by the ``replicant``
command, the demo and the sinks (:class:`~replicant.sinks.JsonLinesSink`).
Each formatter takes one event and returns one line without its newline.
How a column value becomes JSON is :func:`replicant.changes.json_value`'s
business; these functions only lay the events out.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from decimal import Decimal
from typing import Any

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
    json_value,
)
from replicant.errors import ReplicantError

__all__ = ["format_json", "format_text", "human_bytes"]


def format_json(event: Event) -> str:
    """One JSON Lines line (without the newline) for ``event``: its ``to_dict()``.

    A raw payload, or a message's content, that is valid UTF-8 also gets a
    ``text`` field beside its base64, so text plugins such as test_decoding
    and text messages stay readable.
    """
    data = event.to_dict()
    if isinstance(event, Read):
        data["op"] = "read"  # a snapshot row, told apart from the stream's changes
    if isinstance(event, RawChange):
        with contextlib.suppress(UnicodeDecodeError):
            data["text"] = event.data.decode("utf-8")
    elif isinstance(event, Message):
        with contextlib.suppress(UnicodeDecodeError):
            data["text"] = event.content.decode("utf-8")
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


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
