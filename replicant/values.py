"""Column values: PostgreSQL's text and binary representations to Python objects.

A converter is chosen once per column (by type OID, when a relation is
described) and called only when somebody reads the value, so a column that
nobody reads costs nothing beyond keeping its bytes.

Text representations go through psycopg2's own typecasters, so a value comes
out exactly as psycopg2 would return it from a ``SELECT``: ``int``,
``float``, ``Decimal`` for numeric, ``bool``, ``str``, ``bytes`` for bytea,
``date``/``time``/``datetime``/``timedelta``, parsed JSON, ``uuid.UUID``,
``ipaddress`` objects for inet and cidr (as ``psycopg2.extras.register_ipaddress``
gives them), and lists for arrays of these. Any other type (enums, domains,
extension types, ...) gives the server's text as ``str``.

Binary representations (pgoutput with ``binary 'true'``) are read from each
type's send format with :mod:`struct` for the same set of types and give the
same Python values. A type without a binary reader gives a
:class:`BinaryValue` carrying its OID and the bytes as sent.

No value the server sends stops a stream: a value that Python's type cannot
hold (a date before year 1 or after 9999, a BC timestamp, an interval beyond
``timedelta``'s range, the time ``24:00:00``, an infinite interval) arrives
as a :class:`PgValue` that keeps the type OID and the server's text (in
binary mode, an exact rendering of the sent value in the server's text
format; ``timestamptz`` in UTC). Readers made with ``strict=True`` raise
:class:`~replicant.errors.DecodeError` for such a value instead. Arrays whose
lower bounds are not 1 arrive as :class:`PgArray`, built-in ranges as
psycopg2's ``Range`` types and multiranges as lists of them. Converters raise
DecodeError only for input that is malformed (not what the server writes).

psycopg2's C typecasters write into the cursor they are given and read its
``tzinfo_factory``; called with ``None`` they corrupt memory or crash the
process. They are therefore always called with a real cursor object, built
on a connection object that is allocated but never connected (it owns no
socket and no libpq handle).
"""

from __future__ import annotations

import base64
import datetime as _dt
import ipaddress
import json
import math
import re
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NamedTuple

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from replicant import _accel
from replicant.errors import DecodeError
from replicant.protocol import PG_EPOCH

# psycopg2's stubs leave out several of its typecaster objects (PYDATETIME,
# BINARYARRAY, ...); the module is used untyped here.
_ext: Any = psycopg2.extensions
_BYTEA_CASTER: Any = psycopg2.BINARY  # the DB-API type object is bytea's typecaster

__all__ = [
    "OID",
    "BinaryValue",
    "Converter",
    "PgArray",
    "PgValue",
    "binary_converter",
    "binary_reader",
    "decode_binary",
    "decode_text",
    "register_type",
    "text_converter",
    "text_reader",
]

Converter = Callable[[Any], Any]
"""A function from one representation (``bytes``, or ``str`` for text) to a value."""


class OID:
    """Type OIDs of the built-in types that have converters."""

    BOOL: Final = 16
    BYTEA: Final = 17
    CHAR: Final = 18
    NAME: Final = 19
    INT8: Final = 20
    INT2: Final = 21
    INT4: Final = 23
    TEXT: Final = 25
    OID: Final = 26
    JSON: Final = 114
    JSON_ARRAY: Final = 199
    CIDR: Final = 650
    CIDR_ARRAY: Final = 651
    FLOAT4: Final = 700
    FLOAT8: Final = 701
    UNKNOWN: Final = 705
    INET: Final = 869
    BOOL_ARRAY: Final = 1000
    BYTEA_ARRAY: Final = 1001
    CHAR_ARRAY: Final = 1002
    NAME_ARRAY: Final = 1003
    INT2_ARRAY: Final = 1005
    INT4_ARRAY: Final = 1007
    TEXT_ARRAY: Final = 1009
    BPCHAR_ARRAY: Final = 1014
    VARCHAR_ARRAY: Final = 1015
    INT8_ARRAY: Final = 1016
    FLOAT4_ARRAY: Final = 1021
    FLOAT8_ARRAY: Final = 1022
    OID_ARRAY: Final = 1028
    INET_ARRAY: Final = 1041
    BPCHAR: Final = 1042
    VARCHAR: Final = 1043
    DATE: Final = 1082
    TIME: Final = 1083
    TIMESTAMP: Final = 1114
    TIMESTAMP_ARRAY: Final = 1115
    DATE_ARRAY: Final = 1182
    TIME_ARRAY: Final = 1183
    TIMESTAMPTZ: Final = 1184
    TIMESTAMPTZ_ARRAY: Final = 1185
    INTERVAL: Final = 1186
    INTERVAL_ARRAY: Final = 1187
    NUMERIC_ARRAY: Final = 1231
    TIMETZ: Final = 1266
    TIMETZ_ARRAY: Final = 1270
    NUMERIC: Final = 1700
    UUID: Final = 2950
    UUID_ARRAY: Final = 2951
    MACADDR8: Final = 774
    MACADDR8_ARRAY: Final = 775
    MACADDR: Final = 829
    MACADDR_ARRAY: Final = 1040
    BIT: Final = 1560
    BIT_ARRAY: Final = 1561
    VARBIT: Final = 1562
    VARBIT_ARRAY: Final = 1563
    JSONB: Final = 3802
    JSONB_ARRAY: Final = 3807
    INT4RANGE: Final = 3904
    INT4RANGE_ARRAY: Final = 3905
    NUMRANGE: Final = 3906
    NUMRANGE_ARRAY: Final = 3907
    TSRANGE: Final = 3908
    TSRANGE_ARRAY: Final = 3909
    TSTZRANGE: Final = 3910
    TSTZRANGE_ARRAY: Final = 3911
    DATERANGE: Final = 3912
    DATERANGE_ARRAY: Final = 3913
    INT8RANGE: Final = 3926
    INT8RANGE_ARRAY: Final = 3927
    INT4MULTIRANGE: Final = 4451
    NUMMULTIRANGE: Final = 4532
    TSMULTIRANGE: Final = 4533
    TSTZMULTIRANGE: Final = 4534
    DATEMULTIRANGE: Final = 4535
    INT8MULTIRANGE: Final = 4536
    INT4MULTIRANGE_ARRAY: Final = 6150
    NUMMULTIRANGE_ARRAY: Final = 6151
    TSMULTIRANGE_ARRAY: Final = 6152
    TSTZMULTIRANGE_ARRAY: Final = 6153
    DATEMULTIRANGE_ARRAY: Final = 6155
    INT8MULTIRANGE_ARRAY: Final = 6157


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A value sent in binary format for a type replicant cannot read.

    ``data`` is the type's send representation exactly as the server sent it.
    """

    type_oid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PgValue:
    """A value that Python's type for its column cannot hold, kept exactly.

    ``text`` is the server's text for it (in binary mode an exact rendering
    in the same format, ``timestamptz`` in UTC) and ``type_oid`` its type;
    ``str()`` gives the text, and ``text::type`` on the server gives the
    value back. Examples: ``PgValue(1082, '0044-03-15 BC')``,
    ``PgValue(1114, '10000-01-01 00:00:00')``,
    ``PgValue(1186, '178000000 years')``, ``PgValue(1083, '24:00:00')``.
    """

    type_oid: int
    text: str

    def __str__(self) -> str:
        return self.text


class PgArray(list[Any]):
    """An array whose lower bounds are not all 1 (``'[0:2]={1,2,3}'``).

    A ``list`` of its elements (nested per dimension) that also carries
    ``lower_bounds``, one per dimension. It compares equal to a plain list
    with the same elements (the bounds are not compared). Arrays with the
    default bounds are plain lists.
    """

    __slots__ = ("lower_bounds",)

    def __init__(self, items: Any = (), lower_bounds: tuple[int, ...] = ()) -> None:
        super().__init__(items)
        self.lower_bounds: tuple[int, ...] = tuple(lower_bounds)

    def __repr__(self) -> str:
        return f"PgArray({list.__repr__(self)}, lower_bounds={self.lower_bounds!r})"


# --- text representations -------------------------------------------------------

# A cursor on a connection object that is allocated but never connected: what
# psycopg2's typecasters need to be called safely outside a query (a
# connection object that never connected holds no socket and no libpq
# handle; its cursor has a tzinfo_factory and decodes text as UTF-8). A cast
# records itself in the cursor and reads that record back at once, before
# any Python code can run, so one shared cursor serves every thread.
_CURSOR: Final = _ext.cursor(_ext.connection.__new__(_ext.connection))


def _as_str(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _cast_with(caster: Any) -> Converter:
    """A psycopg2 typecaster as a one-argument reader."""
    cursor = _CURSOR

    def read(value: str | bytes) -> Any:
        return caster(value, cursor)

    return read


def _py_caster(name: str, oid: int, array_oid: int, func: Callable[[str], Any]) -> tuple[Any, Any]:
    """Make psycopg2 typecasters (scalar and array) from a Python parse function."""

    def cast(value: str | None, cursor: Any) -> Any:
        return None if value is None else func(value)

    scalar = _ext.new_type((oid,), name, cast)
    return scalar, _ext.new_array_type((array_oid,), f"{name}ARRAY", scalar)


_BYTEA_CAST: Final = _cast_with(_BYTEA_CASTER)


def _bytea_text(value: str | bytes) -> bytes:
    # PostgreSQL's default bytea_output is hex ("\x00ff"): read it directly;
    # the escape format goes through psycopg2's caster.
    if isinstance(value, bytes):
        if value.startswith(b"\\x"):
            return bytes.fromhex(value[2:].decode("ascii"))
    elif value.startswith("\\x"):
        return bytes.fromhex(value[2:])
    return bytes(_BYTEA_CAST(value))


def _bytea_array(read: Converter) -> Converter:
    def convert(value: str | bytes) -> Any:
        return _map_nested(read(value), bytes)

    return convert


def _map_nested(value: Any, func: Callable[[Any], Any]) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_map_nested(item, func) for item in value]
    return func(value)


_JSON, _JSON_ARRAY = _py_caster("JSON", OID.JSON, OID.JSON_ARRAY, json.loads)
_JSONB, _JSONB_ARRAY = _py_caster("JSONB", OID.JSONB, OID.JSONB_ARRAY, json.loads)
_UUID, _UUID_ARRAY = _py_caster("UUID", OID.UUID, OID.UUID_ARRAY, uuid.UUID)
_INET, _INET_ARRAY = _py_caster("INET", OID.INET, OID.INET_ARRAY, ipaddress.ip_interface)
_CIDR, _CIDR_ARRAY = _py_caster("CIDR", OID.CIDR, OID.CIDR_ARRAY, ipaddress.ip_network)

# psycopg2's casters by type. Integers, floats and booleans are read without
# them: its casters for these are plain int()/float()/"t" tests, and calling
# the builtins directly saves a Python frame per value.
_TEXT_CASTERS: Final[dict[int, Any]] = {
    OID.NUMERIC: _ext.DECIMAL,
    OID.DATE: _ext.PYDATE,
    OID.TIME: _ext.PYTIME,
    OID.TIMETZ: _ext.PYTIME,
    OID.TIMESTAMP: _ext.PYDATETIME,
    OID.TIMESTAMPTZ: _ext.PYDATETIMETZ,
    OID.INTERVAL: _ext.PYINTERVAL,
    OID.JSON: _JSON,
    OID.JSONB: _JSONB,
    OID.UUID: _UUID,
    OID.INET: _INET,
    OID.CIDR: _CIDR,
    OID.BOOL_ARRAY: _ext.BOOLEANARRAY,
    OID.INT2_ARRAY: _ext.INTEGERARRAY,
    OID.INT4_ARRAY: _ext.INTEGERARRAY,
    OID.INT8_ARRAY: _ext.LONGINTEGERARRAY,
    OID.OID_ARRAY: _ext.LONGINTEGERARRAY,
    OID.FLOAT4_ARRAY: _ext.FLOATARRAY,
    OID.FLOAT8_ARRAY: _ext.FLOATARRAY,
    OID.NUMERIC_ARRAY: _ext.DECIMALARRAY,
    OID.TEXT_ARRAY: _ext.UNICODEARRAY,
    OID.VARCHAR_ARRAY: _ext.UNICODEARRAY,
    OID.BPCHAR_ARRAY: _ext.UNICODEARRAY,
    OID.NAME_ARRAY: _ext.UNICODEARRAY,
    OID.CHAR_ARRAY: _ext.UNICODEARRAY,
    OID.DATE_ARRAY: _ext.PYDATEARRAY,
    OID.TIME_ARRAY: _ext.PYTIMEARRAY,
    OID.TIMETZ_ARRAY: _ext.PYTIMEARRAY,
    OID.TIMESTAMP_ARRAY: _ext.PYDATETIMEARRAY,
    OID.TIMESTAMPTZ_ARRAY: _ext.PYDATETIMETZARRAY,
    OID.INTERVAL_ARRAY: _ext.PYINTERVALARRAY,
    OID.JSON_ARRAY: _JSON_ARRAY,
    OID.JSONB_ARRAY: _JSONB_ARRAY,
    OID.UUID_ARRAY: _UUID_ARRAY,
    OID.INET_ARRAY: _INET_ARRAY,
    OID.CIDR_ARRAY: _CIDR_ARRAY,
}

_TEXT_TYPES: Final = frozenset((OID.TEXT, OID.VARCHAR, OID.BPCHAR, OID.NAME, OID.CHAR, OID.UNKNOWN))
_BOOL_TEXT: Final = {b"t": True, b"f": False, "t": True, "f": False}

_TEXT: dict[int, Converter] = {oid: _cast_with(c) for oid, c in _TEXT_CASTERS.items()}
_TEXT.update(dict.fromkeys((OID.FLOAT4, OID.FLOAT8), float))
_TEXT[OID.BOOL] = _BOOL_TEXT.__getitem__
_TEXT[OID.BYTEA] = _bytea_text
_TEXT[OID.BYTEA_ARRAY] = _bytea_array(_cast_with(_ext.BINARYARRAY))


def _from_text_python(
    parse: Callable[[str], Any], fallback: Converter | None = None
) -> Callable[[str | bytes], Any]:
    """A reader of a text representation: ``parse`` the value as ``str``.

    ``bytes`` are decoded from UTF-8 first. When ``parse`` raises ValueError
    and there is a ``fallback``, that reads the value as it came instead.
    ``_speedups.from_text`` is the compiled equivalent.
    """

    def read(value: str | bytes) -> Any:
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            text = value.decode()
        else:
            raise TypeError(f"a text value must be str or bytes, not {type(value).__name__}")
        if fallback is None:
            return parse(text)
        try:
            return parse(text)
        except ValueError:
            return fallback(value)

    return read


_from_text = _from_text_python if _accel.compiled is None else _accel.compiled.from_text

# int and float read bytes as they read str (ASCII digits), Decimal only str.
# Dates and timestamps: with DateStyle ISO (the default) the server writes
# them in the form fromisoformat reads since Python 3.11 ("2024-01-02
# 03:04:05.5+00"), two to three times faster than psycopg2's caster, to the
# same value; the caster still reads what fromisoformat refuses: infinity,
# BC, years past 9999, other DateStyles.
_TEXT.update(dict.fromkeys((OID.INT2, OID.INT4, OID.INT8, OID.OID), _from_text(int)))
_TEXT[OID.NUMERIC] = _from_text(Decimal)
if sys.version_info >= (3, 11):  # earlier fromisoformat reads only isoformat()'s output
    _TEXT[OID.DATE] = _from_text(_dt.date.fromisoformat, _cast_with(_ext.PYDATE))
    _TEXT[OID.TIMESTAMP] = _from_text(_dt.datetime.fromisoformat, _cast_with(_ext.PYDATETIME))
    _TEXT[OID.TIMESTAMPTZ] = _from_text(_dt.datetime.fromisoformat, _cast_with(_ext.PYDATETIMETZ))


# --- values Python cannot hold, arrays with bounds, ranges ---------------------
#
# With the session settings replicant pins (DateStyle ISO, IntervalStyle
# postgres) the server writes these forms; a value in one of them that the
# parser refuses is out of Python's range, not malformed, and arrives as a
# PgValue. Anything else that fails to parse is malformed.

_INTERVAL_TEXT: Final = re.compile(
    r"(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
    r"(?:([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
)
_DAY_TEXT: Final = r"\d{4,}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
_CLOCK_TEXT: Final = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
_SERVER_FORM: Final[dict[int, re.Pattern[str]]] = {
    OID.DATE: re.compile(_DAY_TEXT + r"(?: BC)?"),
    OID.TIMESTAMP: re.compile(_DAY_TEXT + " " + _CLOCK_TEXT + r"(?: BC)?"),
    OID.TIMESTAMPTZ: re.compile(
        _DAY_TEXT + " " + _CLOCK_TEXT + r"[+-]\d\d(?::[0-5]\d){0,2}(?: BC)?"
    ),
    OID.INTERVAL: re.compile(r"-?infinity|" + _INTERVAL_TEXT.pattern),
}
_PARSE_ERRORS: Final = (ValueError, OverflowError, psycopg2.Error)


def _tolerant(type_oid: int, read: Converter) -> Converter:
    """``read``, giving a PgValue for server text that Python's type cannot hold."""
    form = _SERVER_FORM[type_oid]

    def convert(value: str | bytes) -> Any:
        try:
            return read(value)
        except _PARSE_ERRORS:
            text = _as_str(value)
            if text and form.fullmatch(text):
                return PgValue(type_oid, text)
            raise

    return convert


def _time_text(type_oid: int, read: Converter) -> Converter:
    """``read`` for time/timetz, except ``24:00:00`` (which datetime.time cannot hold)."""

    def convert(value: str | bytes) -> Any:
        text = _as_str(value)
        if text.startswith("24:"):
            return PgValue(type_oid, text)
        return read(text)

    return convert


def _parse_array(text: str, element: Converter) -> list[Any]:
    """An array's text form (``{...}``, with optional ``[l:u]=`` bounds) as nested lists.

    ``element`` reads each element's (unquoted) text; NULL gives ``None``.
    Non-default lower bounds give a :class:`PgArray`. Raises ValueError
    when the text is malformed.
    """
    pos = 0
    lower: tuple[int, ...] = ()
    if text.startswith("["):
        eq = text.find("=")
        dims = re.fullmatch(r"(?:\[-?\d+:-?\d+\])+", text[:eq]) if eq > 0 else None
        if dims is None:
            raise ValueError(f"malformed array bounds in {text[:40]!r}")
        lower = tuple(int(lo) for lo, _ in re.findall(r"\[(-?\d+):(-?\d+)\]", text[:eq]))
        pos = eq + 1
    end = len(text)

    def level(pos: int) -> tuple[list[Any], int]:
        if text[pos] != "{":
            raise ValueError("array level does not start with '{'")
        items: list[Any] = []
        pos += 1
        if text[pos] == "}":
            return items, pos + 1
        while True:
            c = text[pos]
            item: Any
            if c == "{":
                item, pos = level(pos)
            elif c == '"':
                chars: list[str] = []
                pos += 1
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    chars.append(text[pos])
                    pos += 1
                pos += 1
                item = element("".join(chars))
            else:
                stop = pos
                while text[stop] not in ",}":
                    stop += 1
                token = text[pos:stop].strip()
                pos = stop
                item = None if token.upper() == "NULL" else element(token)
            items.append(item)
            if text[pos] == ",":
                pos += 1
            elif text[pos] == "}":
                return items, pos + 1
            else:
                raise ValueError(f"unexpected {text[pos]!r} in an array")

    try:
        items, pos = level(pos)
    except IndexError:
        raise ValueError("array text ends too early") from None
    if pos != end:
        raise ValueError("array text has trailing characters")
    if lower and any(b != 1 for b in lower):
        return PgArray(items, lower)
    return items


# Element texts psycopg2's array casters read silently wrong (interval
# 'infinity' as 0, time '24:00:00' as midnight): arrays holding them go to
# the parser, whose element readers give a PgValue.
_CASTER_TRAPS: Final[dict[int, tuple[bytes, str]]] = {
    OID.INTERVAL_ARRAY: (b"infinity", "infinity"),
    OID.TIME_ARRAY: (b"24:", "24:"),
    OID.TIMETZ_ARRAY: (b"24:", "24:"),
}


def _array_text(array_oid: int, element_oid: int, fast: Converter | None) -> Converter:
    """The reader of an array's text: ``fast`` (psycopg2's caster) when it can, else the parser."""
    bounded = (b"[", "[")
    trap = _CASTER_TRAPS.get(array_oid)

    def convert(value: str | bytes) -> Any:
        # psycopg2's caster drops explicit bounds ("[0:2]={...}"): those go to the parser,
        # and so does what the caster refuses (an element out of Python's range).
        if trap is not None and trap[isinstance(value, str)] in value:  # type: ignore[operator]
            return _parse_array(_as_str(value), text_reader(element_oid, from_str=True))
        if fast is not None and value[:1] not in bounded:
            try:
                return fast(value)
            except Exception:  # the parser below decides whether the text is bad
                pass
        return _parse_array(_as_str(value), text_reader(element_oid, from_str=True))

    return convert


def _range_bound(text: str, pos: int) -> tuple[str | None, int]:
    """One bound of a range's text at ``pos``: its text (None: unbounded) and the end."""
    if text[pos] == '"':
        chars: list[str] = []
        pos += 1
        while True:
            c = text[pos]
            if c == "\\":
                chars.append(text[pos + 1])
                pos += 2
            elif c == '"':
                if text[pos + 1 : pos + 2] == '"':
                    chars.append('"')
                    pos += 2
                else:
                    return "".join(chars), pos + 1
            else:
                chars.append(c)
                pos += 1
    stop = pos
    while text[stop] not in ",)]":
        stop += 1
    return (text[pos:stop] or None), stop


_RANGES: Final[dict[int, tuple[type[Any], int]]] = {
    OID.INT4RANGE: (psycopg2.extras.NumericRange, OID.INT4),
    OID.INT8RANGE: (psycopg2.extras.NumericRange, OID.INT8),
    OID.NUMRANGE: (psycopg2.extras.NumericRange, OID.NUMERIC),
    OID.DATERANGE: (psycopg2.extras.DateRange, OID.DATE),
    OID.TSRANGE: (psycopg2.extras.DateTimeRange, OID.TIMESTAMP),
    OID.TSTZRANGE: (psycopg2.extras.DateTimeTZRange, OID.TIMESTAMPTZ),
}
_MULTIRANGES: Final[dict[int, int]] = {
    OID.INT4MULTIRANGE: OID.INT4RANGE,
    OID.INT8MULTIRANGE: OID.INT8RANGE,
    OID.NUMMULTIRANGE: OID.NUMRANGE,
    OID.DATEMULTIRANGE: OID.DATERANGE,
    OID.TSMULTIRANGE: OID.TSRANGE,
    OID.TSTZMULTIRANGE: OID.TSTZRANGE,
}


def _parse_range(text: str, pos: int, cls: type[Any], element: Converter) -> tuple[Any, int]:
    if text.startswith("empty", pos):
        return cls(empty=True), pos + 5
    lb = text[pos]
    if lb not in "[(":
        raise ValueError(f"a range starts with {lb!r}")
    lower, pos = _range_bound(text, pos + 1)
    if text[pos] != ",":
        raise ValueError("a range has no ',' between its bounds")
    upper, pos = _range_bound(text, pos + 1)
    ub = text[pos]
    if ub not in ")]":
        raise ValueError(f"a range ends with {ub!r}")
    return (
        cls(
            None if lower is None else element(lower),
            None if upper is None else element(upper),
            lb + ub,
        ),
        pos + 1,
    )


def _range_text(type_oid: int) -> Converter:
    cls, element_oid = _RANGES[type_oid]

    def convert(value: str | bytes) -> Any:
        text = _as_str(value)
        try:
            result, end = _parse_range(text, 0, cls, text_reader(element_oid, from_str=True))
        except IndexError:
            raise ValueError("range text ends too early") from None
        if end != len(text):
            raise ValueError("range text has trailing characters")
        return result

    return convert


def _multirange_text(type_oid: int) -> Converter:
    cls, element_oid = _RANGES[_MULTIRANGES[type_oid]]

    def convert(value: str | bytes) -> Any:
        text = _as_str(value)
        element = text_reader(element_oid, from_str=True)
        if not text.startswith("{"):
            raise ValueError("a multirange starts with '{'")
        ranges: list[Any] = []
        pos = 1
        try:
            if text[pos] != "}":
                while True:
                    item, pos = _parse_range(text, pos, cls, element)
                    ranges.append(item)
                    if text[pos] == "}":
                        break
                    if text[pos] != ",":
                        raise ValueError("ranges of a multirange are separated by ','")
                    pos += 1
        except IndexError:
            raise ValueError("multirange text ends too early") from None
        if pos + 1 != len(text):
            raise ValueError("multirange text has trailing characters")
        return ranges

    return convert


# Element types of the arrays replicant reads.
_ELEMENT: Final[dict[int, int]] = {
    OID.BOOL_ARRAY: OID.BOOL,
    OID.BYTEA_ARRAY: OID.BYTEA,
    OID.CHAR_ARRAY: OID.CHAR,
    OID.NAME_ARRAY: OID.NAME,
    OID.INT2_ARRAY: OID.INT2,
    OID.INT4_ARRAY: OID.INT4,
    OID.TEXT_ARRAY: OID.TEXT,
    OID.BPCHAR_ARRAY: OID.BPCHAR,
    OID.VARCHAR_ARRAY: OID.VARCHAR,
    OID.INT8_ARRAY: OID.INT8,
    OID.FLOAT4_ARRAY: OID.FLOAT4,
    OID.FLOAT8_ARRAY: OID.FLOAT8,
    OID.OID_ARRAY: OID.OID,
    OID.INET_ARRAY: OID.INET,
    OID.CIDR_ARRAY: OID.CIDR,
    OID.DATE_ARRAY: OID.DATE,
    OID.TIME_ARRAY: OID.TIME,
    OID.TIMETZ_ARRAY: OID.TIMETZ,
    OID.TIMESTAMP_ARRAY: OID.TIMESTAMP,
    OID.TIMESTAMPTZ_ARRAY: OID.TIMESTAMPTZ,
    OID.INTERVAL_ARRAY: OID.INTERVAL,
    OID.NUMERIC_ARRAY: OID.NUMERIC,
    OID.UUID_ARRAY: OID.UUID,
    OID.JSON_ARRAY: OID.JSON,
    OID.JSONB_ARRAY: OID.JSONB,
    OID.INT4RANGE_ARRAY: OID.INT4RANGE,
    OID.INT8RANGE_ARRAY: OID.INT8RANGE,
    OID.NUMRANGE_ARRAY: OID.NUMRANGE,
    OID.DATERANGE_ARRAY: OID.DATERANGE,
    OID.TSRANGE_ARRAY: OID.TSRANGE,
    OID.TSTZRANGE_ARRAY: OID.TSTZRANGE,
    OID.INT4MULTIRANGE_ARRAY: OID.INT4MULTIRANGE,
    OID.INT8MULTIRANGE_ARRAY: OID.INT8MULTIRANGE,
    OID.NUMMULTIRANGE_ARRAY: OID.NUMMULTIRANGE,
    OID.DATEMULTIRANGE_ARRAY: OID.DATEMULTIRANGE,
    OID.TSMULTIRANGE_ARRAY: OID.TSMULTIRANGE,
    OID.TSTZMULTIRANGE_ARRAY: OID.TSTZMULTIRANGE,
    OID.MACADDR_ARRAY: OID.MACADDR,
    OID.MACADDR8_ARRAY: OID.MACADDR8,
    OID.BIT_ARRAY: OID.BIT,
    OID.VARBIT_ARRAY: OID.VARBIT,
}

def _server_text_only(type_oid: int, read: Converter) -> Converter:
    """``read`` for text in the server's ISO form (or ``infinity``); anything else is malformed.

    psycopg2's date and timestamp casters read leniently: digits after the
    microseconds, or bytes that are not UTF-8, would give a wrong value in
    silence. Every text the server writes for these types with the session's
    DateStyle ISO has this form.
    """
    form = _SERVER_FORM[type_oid]

    def convert(value: str | bytes) -> Any:
        text = _as_str(value)
        if text in ("infinity", "-infinity") or form.fullmatch(text):
            return read(text)
        raise ValueError(f"not in the server's ISO form: {text!r}")

    return convert


for _oid in (OID.DATE, OID.TIMESTAMP, OID.TIMESTAMPTZ):
    _caster = _server_text_only(_oid, _cast_with(_TEXT_CASTERS[_oid]))
    if sys.version_info >= (3, 11):
        _TEXT[_oid] = _from_text(
            _dt.date.fromisoformat if _oid == OID.DATE else _dt.datetime.fromisoformat,
            _tolerant(_oid, _caster),
        )
    else:
        _TEXT[_oid] = _tolerant(_oid, _caster)


def _interval_text(read: Converter) -> Converter:
    """``read`` for interval, except the infinities of PostgreSQL 17.

    psycopg2's caster reads ``'infinity'`` as ``timedelta(0)``: silently wrong.
    """
    infinite = (b"infinity", b"-infinity", "infinity", "-infinity")

    def convert(value: str | bytes) -> Any:
        if value in infinite:
            return PgValue(OID.INTERVAL, _as_str(value))
        return read(value)

    return convert


_TEXT[OID.INTERVAL] = _interval_text(_tolerant(OID.INTERVAL, _TEXT[OID.INTERVAL]))
_TEXT[OID.TIME] = _time_text(OID.TIME, _TEXT[OID.TIME])
_TEXT[OID.TIMETZ] = _time_text(OID.TIMETZ, _TEXT[OID.TIMETZ])
for _oid, _element_oid in _ELEMENT.items():
    _TEXT[_oid] = _array_text(_oid, _element_oid, _TEXT.get(_oid))
for _oid in _RANGES:
    _TEXT[_oid] = _range_text(_oid)
for _oid in _MULTIRANGES:
    _TEXT[_oid] = _multirange_text(_oid)


def _holds_pg_value(value: Any) -> bool:
    if isinstance(value, PgValue):
        return True
    if isinstance(value, list):
        return any(_holds_pg_value(item) for item in value)
    if isinstance(value, psycopg2.extras.Range):
        return _holds_pg_value(value.lower) or _holds_pg_value(value.upper)
    return False


def _strict(read: Converter, type_oid: int) -> Converter:
    """``read``, raising DecodeError where it would give a PgValue."""

    def convert(value: Any) -> Any:
        result = read(value)
        if _holds_pg_value(result):
            raise DecodeError(f"a value of type {type_oid} is out of Python's range: {result}")
        return result

    return convert


def _keep_str(value: str) -> str:
    return value


_utf8: Final[Callable[[bytes], str]] = bytes.decode


def text_reader(type_oid: int, *, from_str: bool = False, strict: bool = False) -> Converter:
    """The fast reader of ``type_oid``'s text representation, unguarded.

    It takes UTF-8 ``bytes`` (as pgoutput sends them), or ``str`` when
    ``from_str`` (as a JSON plugin gives them). On malformed input it raises
    whatever the parser raises (ValueError, psycopg2.DataError, ...):
    :class:`~replicant.changes.Row` turns that into DecodeError naming the
    column. Use :func:`text_converter` for a reader that raises only
    DecodeError. A value Python's type cannot hold gives a :class:`PgValue`,
    or with ``strict`` raises DecodeError.
    """
    if strict:
        return _strict(text_reader(type_oid, from_str=from_str), type_oid)
    # bytes.decode (UTF-8, strict) rather than _as_str: a C call instead of a
    # Python one, for what is most columns of most tables.
    if type_oid in _TEXT_TYPES:
        return _keep_str if from_str else _utf8
    return _TEXT.get(type_oid, _keep_str if from_str else _utf8)


def _guard(read: Converter, what: str) -> Converter:
    def convert(value: Any) -> Any:
        try:
            return read(value)
        except DecodeError:
            raise
        except Exception as exc:  # any parser failure means the input was bad
            shown = value if isinstance(value, str) else bytes(value[:80])
            raise DecodeError(f"cannot read {what} value {shown!r}: {exc}") from exc

    return convert


def text_converter(type_oid: int) -> Converter:
    """The converter for ``type_oid``'s text representation (``str`` or UTF-8 ``bytes``).

    Types without a converter give the text itself as ``str``. Malformed
    input raises DecodeError.
    """
    if type_oid in _TEXT_TYPES or type_oid not in _TEXT:
        return _guard(_as_str, f"type {type_oid}")
    return _guard(_TEXT[type_oid], f"type {type_oid}")


def decode_text(type_oid: int, value: str | bytes | None) -> Any:
    """Convert one value from its text representation; ``None`` stays ``None``."""
    if value is None:
        return None
    return text_converter(type_oid)(value)


# --- binary representations -----------------------------------------------------

_INT2 = struct.Struct(">h")
_INT4 = struct.Struct(">i")
_INT8 = struct.Struct(">q")
_UINT4 = struct.Struct(">I")
_FLOAT4 = struct.Struct(">f")
_FLOAT8 = struct.Struct(">d")
_NUMERIC_HEAD = struct.Struct(">HhHH")  # numeric_recv: ndigits, dscale unsigned
_TIMETZ = struct.Struct(">qi")
_INTERVAL = struct.Struct(">qii")
_ARRAY_HEAD = struct.Struct(">iiI")
_ARRAY_DIM = struct.Struct(">ii")

# The epoch of PostgreSQL's binary dates and timestamps (protocol.PG_EPOCH), as
# a date, a naive and an aware datetime. Out of datetime's range, a value is
# kept as the server's text (PgValue): see protocol.pg_timestamp_to_datetime
# for the other policy, that of the times messages carry.
_PG_EPOCH_UTC: Final = PG_EPOCH
_PG_EPOCH: Final = PG_EPOCH.replace(tzinfo=None)
_PG_EPOCH_DATE: Final = PG_EPOCH.date()
_DATE_INFINITY: Final = 0x7FFFFFFF
_DATE_NINFINITY: Final = -0x80000000
_TS_INFINITY: Final = 0x7FFFFFFFFFFFFFFF
_TS_NINFINITY: Final = -0x8000000000000000
_MAX_UTC: Final = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)
_MIN_UTC: Final = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
_NUMERIC_NEG: Final = 0x4000
_NUMERIC_SPECIAL: Final = {
    0xC000: Decimal("NaN"),
    0xD000: Decimal("Infinity"),
    0xF000: Decimal("-Infinity"),
}


def _fixed(unpacker: struct.Struct, name: str) -> Converter:
    unpack = unpacker.unpack
    size = unpacker.size

    def convert(data: bytes) -> Any:
        if len(data) != size:
            raise DecodeError(f"binary {name} value has {len(data)} bytes, expected {size}")
        return unpack(data)[0]

    return convert


def _float4_bin_python(data: bytes) -> float:
    """A float4 as the shortest decimal that reads back as the same float32.

    That is the number float4out writes (extra_float_digits > 0), so text
    and binary mode give the same Python float (1004.3, not 1004.29998779...).
    ``_speedups.float4_bin`` is the compiled equivalent (the search below in
    C, a tenth of the time or less); the tests hold the two to the same
    result.
    """
    if len(data) != 4:
        raise DecodeError(f"binary float4 value has {len(data)} bytes, expected 4")
    (value,) = _FLOAT4.unpack(data)
    if not math.isfinite(value):
        return float(value)
    pack = _FLOAT4.pack
    # If d significant digits read back as the same float32, so do d + 1:
    # search for the fewest (9 always do).
    low, high = 1, 9
    best: float | None = None
    while low < high:
        digits = (low + high) // 2
        candidate = float(f"{value:.{digits}g}")
        try:
            same = pack(candidate) == data
        except OverflowError:  # rounded up past float32's largest value
            same = False
        if same:
            best, high = candidate, digits
        else:
            low = digits + 1
    return best if best is not None else float(f"{value:.9g}")


_float4_bin: Converter = (
    _float4_bin_python if _accel.compiled is None else _accel.compiled.float4_bin
)


def _macaddr_bin(data: bytes) -> str:
    if len(data) not in (6, 8):
        raise DecodeError(f"binary macaddr value has {len(data)} bytes, expected 6 or 8")
    return ":".join(f"{b:02x}" for b in data)


def _bits_bin(data: bytes) -> str:
    """bit and varbit: the bit string as the server writes it (``'1010'``)."""
    if len(data) < 4:
        raise DecodeError("binary bit string too short")
    (length,) = _INT4.unpack_from(data)
    if length < 0 or (length + 7) // 8 != len(data) - 4:
        raise DecodeError("binary bit string length does not match its bytes")
    bits = "".join(f"{b:08b}" for b in data[4:])
    return bits[:length]


def _bool_bin(data: bytes) -> bool:
    if len(data) != 1:
        raise DecodeError(f"binary bool value has {len(data)} bytes, expected 1")
    return data != b"\x00"


def _text_bin(data: bytes) -> str:
    return _as_str(data)


def _json_bin(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise DecodeError(f"cannot read json value: {exc}") from exc


def _jsonb_bin(data: bytes) -> Any:
    if data[:1] != b"\x01":
        raise DecodeError("binary jsonb value does not start with format version 1")
    return _json_bin(data[1:])


def _numeric_bin(data: bytes) -> Decimal:
    return Decimal(_numeric_text(data))


def _numeric_text(data: bytes) -> str:
    """The text numeric_out writes for a binary numeric value."""
    if len(data) < 8:
        raise DecodeError(f"binary numeric value has only {len(data)} bytes")
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(data)
    special = _NUMERIC_SPECIAL.get(sign)
    if special is not None:
        return str(special)
    if dscale > 0x3FFF or len(data) != 8 + 2 * ndigits or sign not in (0, _NUMERIC_NEG):
        raise DecodeError("malformed binary numeric value")
    digits = struct.unpack_from(f">{ndigits}H", data, 8)
    if ndigits and max(digits) > 9999:
        raise DecodeError("malformed binary numeric value (a digit above 9999)")
    # The value is 0.DDDD... in base 10000 (four decimal digits per DDDD)
    # times 10000**(weight + 1). Build its text with dscale fraction digits,
    # as numeric_out would, with string operations only: no int conversion,
    # so no limit on the number of digits and no rounding.
    text = ("%04d" * ndigits) % digits
    point = 4 * (weight + 1)
    if point <= 0:
        text = "0" * -point + text
        point = 0
    elif point > len(text):
        text += "0" * (point - len(text))
    whole = text[:point].lstrip("0") or "0"
    if dscale:
        fraction = text[point : point + dscale]
        whole = f"{whole}.{fraction}{'0' * (dscale - len(fraction))}"
    return "-" + whole if sign == _NUMERIC_NEG and whole.strip("0.") else whole


_read_date = _fixed(_INT4, "date")
_read_time = _fixed(_INT8, "time")
_read_timestamp = _fixed(_INT8, "timestamp")


_ORDINAL_2000: Final = _PG_EPOCH_DATE.toordinal()
_MAX_ORDINAL: Final = _dt.date.max.toordinal()
_CYCLE_DAYS: Final = 146_097  # days in 400 Gregorian years


def _civil(days: int) -> tuple[int, int, int]:
    """(astronomical year, month, day) ``days`` after 2000-01-01, for any year."""
    ordinal = _ORDINAL_2000 + days
    shift = 0
    # The proleptic Gregorian calendar repeats every 400 years: move the day
    # into date's range by whole cycles and move the year back.
    if ordinal < 1:
        cycles = (-ordinal) // _CYCLE_DAYS + 1
    elif ordinal > _MAX_ORDINAL:
        cycles = -((ordinal - _MAX_ORDINAL) // _CYCLE_DAYS + 1)
    else:
        cycles = 0
    ordinal += cycles * _CYCLE_DAYS
    shift = -400 * cycles
    day = _dt.date.fromordinal(ordinal)
    return day.year + shift, day.month, day.day


def _ymd(year: int, month: int, day: int) -> str:
    # Year 0 is 1 BC; the caller appends " BC" for years <= 0.
    return f"{year if year > 0 else 1 - year:04d}-{month:02d}-{day:02d}"


def _date_text(days: int) -> str:
    """date_out's ISO text for a date ``days`` after 2000-01-01."""
    if days == _DATE_INFINITY:
        return "infinity"
    if days == _DATE_NINFINITY:
        return "-infinity"
    year, month, day = _civil(days)
    return _ymd(year, month, day) + ("" if year > 0 else " BC")


def _date_bin(data: bytes) -> Any:
    return _from_epoch(_read_date(data), _DATE_EPOCH)


def _clock(micros: int) -> str:
    seconds, us = divmod(micros, 1_000_000)
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    text = f"{h:02d}:{m:02d}:{s:02d}"
    return text + f".{us:06d}".rstrip("0") if us else text


def _offset_text(east: int) -> str:
    """A UTC offset as the server writes it: +HH, +HH:MM or +HH:MM:SS."""
    sign = "-" if east < 0 else "+"
    minutes, s = divmod(abs(east), 60)
    h, m = divmod(minutes, 60)
    text = f"{sign}{h:02d}"
    if m or s:
        text += f":{m:02d}"
    if s:
        text += f":{s:02d}"
    return text


def _timestamp_text(micros: int, zone: bool) -> str:
    """timestamp_out's (timestamptz_out's, in UTC) ISO text for a binary value."""
    if micros == _TS_INFINITY:
        return "infinity"
    if micros == _TS_NINFINITY:
        return "-infinity"
    days, rest = divmod(micros, 86_400_000_000)
    year, month, day = _civil(days)
    text = f"{_ymd(year, month, day)} {_clock(rest)}" + ("+00" if zone else "")
    return text if year > 0 else text + " BC"


def _time_from_micros(micros: int, tz: _dt.tzinfo | None) -> Any:
    if not 0 <= micros <= 86_400_000_000:
        raise DecodeError(f"binary time value out of range: {micros}")
    if micros == 86_400_000_000:
        # 24:00:00 is a valid PostgreSQL time that datetime.time cannot hold.
        if tz is None:
            return PgValue(OID.TIME, "24:00:00")
        offset = tz.utcoffset(None)
        east = int(offset.total_seconds()) if offset is not None else 0
        return PgValue(OID.TIMETZ, "24:00:00" + _offset_text(east))
    seconds, us = divmod(micros, 1_000_000)
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    return _dt.time(h, m, s, us, tzinfo=tz)


def _time_bin(data: bytes) -> Any:
    return _time_from_micros(_read_time(data), None)


def _timetz_bin(data: bytes) -> Any:
    if len(data) != 12:
        raise DecodeError(f"binary timetz value has {len(data)} bytes, expected 12")
    micros, zone = _TIMETZ.unpack(data)
    # The zone is sent in seconds west of UTC; Python counts east.
    try:
        tz = _dt.timezone(_dt.timedelta(seconds=-zone))
    except ValueError as exc:
        raise DecodeError(f"binary timetz zone out of range: {zone}") from exc
    return _time_from_micros(micros, tz)


class _Epoch(NamedTuple):
    """How one binary date/time type counts from the epoch: in ``unit`` steps from
    ``epoch``, with its two infinities and the value each stands for."""

    epoch: Any
    unit: _dt.timedelta
    infinity: int
    highest: Any
    ninfinity: int
    lowest: Any
    oid: int
    text: Callable[[int], str]


def _from_epoch(count: int, kind: _Epoch) -> Any:
    """``count`` units after the epoch; the infinities as Python's extremes; a value
    beyond Python's range as the server's text in a :class:`PgValue` (never lost)."""
    if count == kind.infinity:
        return kind.highest
    if count == kind.ninfinity:
        return kind.lowest
    try:
        return kind.epoch + kind.unit * count
    except OverflowError:
        return PgValue(kind.oid, kind.text(count))


_MICROSECOND: Final = _dt.timedelta(microseconds=1)
_DATE_EPOCH: Final = _Epoch(
    _PG_EPOCH_DATE,
    _dt.timedelta(days=1),
    _DATE_INFINITY,
    _dt.date.max,
    _DATE_NINFINITY,
    _dt.date.min,
    OID.DATE,
    _date_text,
)
_TIMESTAMP_EPOCH: Final = _Epoch(
    _PG_EPOCH,
    _MICROSECOND,
    _TS_INFINITY,
    _dt.datetime.max,
    _TS_NINFINITY,
    _dt.datetime.min,
    OID.TIMESTAMP,
    lambda micros: _timestamp_text(micros, False),
)
_TIMESTAMPTZ_EPOCH: Final = _Epoch(
    _PG_EPOCH_UTC,
    _MICROSECOND,
    _TS_INFINITY,
    _MAX_UTC,
    _TS_NINFINITY,
    _MIN_UTC,
    OID.TIMESTAMPTZ,
    lambda micros: _timestamp_text(micros, True),
)


def _timestamp_bin(data: bytes) -> Any:
    return _from_epoch(_read_timestamp(data), _TIMESTAMP_EPOCH)


def _timestamptz_bin(data: bytes) -> Any:
    return _from_epoch(_read_timestamp(data), _TIMESTAMPTZ_EPOCH)


_INTERVAL_INFINITY: Final = (0x7FFFFFFFFFFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF)
_INTERVAL_NINFINITY: Final = (-0x8000000000000000, -0x80000000, -0x80000000)


def _interval_parts(data: bytes) -> tuple[int, int, int]:
    """(microseconds, days, months) of a binary interval."""
    if len(data) != 16:
        raise DecodeError(f"binary interval value has {len(data)} bytes, expected 16")
    micros, days, months = _INTERVAL.unpack(data)
    return micros, days, months


def _interval_postgres(micros: int, days: int, months: int) -> str:
    """interval_out's text (IntervalStyle postgres) for an interval's parts."""
    if (micros, days, months) == _INTERVAL_INFINITY:
        return "infinity"
    if (micros, days, months) == _INTERVAL_NINFINITY:
        return "-infinity"
    years = abs(months) // 12 * (1 if months >= 0 else -1)  # truncated toward zero
    mons = months - years * 12
    parts: list[str] = []
    negative_seen = False
    for amount, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if amount:
            sign = "+" if negative_seen and amount > 0 else ""
            parts.append(f"{sign}{amount} {unit}{'' if amount == 1 else 's'}")
            negative_seen = negative_seen or amount < 0
    if micros or not parts:
        sign = "-" if micros < 0 else "+" if negative_seen else ""
        parts.append(sign + _clock(abs(micros)))
    return " ".join(parts)


def _interval_iso(micros: int, days: int, months: int) -> str:
    """The interval in ISO 8601 as IntervalStyle iso_8601 writes it (``P1Y2M3DT4H5M6S``)."""
    if (micros, days, months) == _INTERVAL_INFINITY:
        return "infinity"
    if (micros, days, months) == _INTERVAL_NINFINITY:
        return "-infinity"
    years = abs(months) // 12 * (1 if months >= 0 else -1)  # truncated toward zero
    mons = months - years * 12
    text = "P"
    for amount, unit in ((years, "Y"), (mons, "M"), (days, "D")):
        if amount:
            text += f"{amount}{unit}"
    if micros:
        sign = "-" if micros < 0 else ""
        seconds, us = divmod(abs(micros), 1_000_000)
        minutes, s = divmod(seconds, 60)
        h, m = divmod(minutes, 60)
        text += "T"
        if h:
            text += f"{sign}{h}H"
        if m:
            text += f"{sign}{m}M"
        if s or us:
            text += f"{sign}{s}" + (f".{us:06d}".rstrip("0") if us else "") + "S"
    return "PT0S" if text == "P" else text


def _interval_bin(data: bytes) -> Any:
    micros, days, months = _interval_parts(data)
    # psycopg2 reads "1 year 2 mons" as 365 + 2 * 30 days; do the same so the
    # text and binary formats give equal values.
    years = abs(months) // 12 * (1 if months >= 0 else -1)
    months -= years * 12
    try:
        if (micros, days, months + years * 12) in (_INTERVAL_INFINITY, _INTERVAL_NINFINITY):
            raise OverflowError("an infinite interval")
        return _dt.timedelta(days=years * 365 + months * 30 + days, microseconds=micros)
    except OverflowError:
        return PgValue(OID.INTERVAL, _interval_postgres(micros, days, months + years * 12))


def _uuid_bin(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise DecodeError(f"binary uuid value has {len(data)} bytes, expected 16")
    return uuid.UUID(bytes=data)


def _inet_parts(data: bytes) -> str:
    if len(data) < 4:
        raise DecodeError("binary inet value too short")
    family, bits, _is_cidr, size = data[0], data[1], data[2], data[3]
    address = data[4:]
    if family == 2 and size == 4 and len(address) == 4 and bits <= 32:
        return f"{ipaddress.IPv4Address(address)}/{bits}"
    if family == 3 and size == 16 and len(address) == 16 and bits <= 128:
        return f"{ipaddress.IPv6Address(address)}/{bits}"
    raise DecodeError("malformed binary inet value")


def _inet_bin(data: bytes) -> Any:
    return ipaddress.ip_interface(_inet_parts(data))


def _cidr_bin(data: bytes) -> Any:
    try:
        return ipaddress.ip_network(_inet_parts(data))
    except ValueError as exc:
        raise DecodeError(f"malformed binary cidr value: {exc}") from exc


def _array_bin(data: bytes, element: Callable[[int], Converter] | None = None) -> list[Any]:
    end = len(data)
    if end < 12:
        raise DecodeError("binary array value too short")
    ndim, _flags, element_oid = _ARRAY_HEAD.unpack_from(data)
    if ndim == 0:
        return []
    if not 0 < ndim <= 6 or end < 12 + 8 * ndim:
        raise DecodeError(f"binary array value with bad dimension count {ndim}")
    bounds = [_ARRAY_DIM.unpack_from(data, 12 + 8 * i) for i in range(ndim)]
    dims = [d for d, _ in bounds]
    lower = tuple(lb for _, lb in bounds)
    if any(d <= 0 for d in dims):
        # PostgreSQL sends an empty array with no dimensions at all.
        raise DecodeError("binary array value with an empty or negative dimension")
    total = 1
    for d in dims:
        total *= d
    if total * 4 > end - (12 + 8 * ndim):
        raise DecodeError(f"binary array value too short for {total} elements")
    convert = element(element_oid) if element is not None else binary_converter(element_oid)
    pos = 12 + 8 * ndim
    unpack_len = _INT4.unpack_from

    def read(level: int) -> list[Any]:
        nonlocal pos
        items: list[Any] = []
        for _ in range(dims[level]):
            if level + 1 < ndim:
                items.append(read(level + 1))
                continue
            if pos + 4 > end:
                raise DecodeError("binary array value truncated")
            (length,) = unpack_len(data, pos)
            pos += 4
            if length == -1:
                items.append(None)
                continue
            if length < 0 or pos + length > end:
                raise DecodeError("binary array element truncated")
            items.append(convert(data[pos : pos + length]))
            pos += length
        return items

    result = read(0)
    if pos != end:
        raise DecodeError("binary array value has trailing bytes")
    if any(lb != 1 for lb in lower):
        return PgArray(result, lower)
    return result


_RANGE_EMPTY, _RANGE_LB_INC, _RANGE_UB_INC, _RANGE_LB_INF, _RANGE_UB_INF = 1, 2, 4, 8, 16


def _range_parts(data: bytes, pos: int, end: int) -> tuple[int, bytes | None, bytes | None]:
    """A binary range's flags and the send form of each finite bound."""
    if pos >= end:
        raise DecodeError("binary range value too short")
    flags = data[pos]
    pos += 1
    bounds: list[bytes | None] = []
    for infinite in (_RANGE_LB_INF, _RANGE_UB_INF):
        if flags & (_RANGE_EMPTY | infinite):
            bounds.append(None)
            continue
        if pos + 4 > end:
            raise DecodeError("binary range value truncated")
        (length,) = _INT4.unpack_from(data, pos)
        pos += 4
        if length < 0 or pos + length > end:
            raise DecodeError("binary range bound truncated")
        bounds.append(data[pos : pos + length])
        pos += length
    if pos != end:
        raise DecodeError("binary range value has trailing bytes")
    return flags, bounds[0], bounds[1]


def _range_value(type_oid: int, data: bytes, start: int, end: int) -> Any:
    cls, element_oid = _RANGES[type_oid]
    flags, lower, upper = _range_parts(data, start, end)
    if flags & _RANGE_EMPTY:
        return cls(empty=True)
    convert = binary_converter(element_oid)
    return cls(
        None if lower is None else convert(lower),
        None if upper is None else convert(upper),
        ("[" if flags & _RANGE_LB_INC else "(") + ("]" if flags & _RANGE_UB_INC else ")"),
    )


def _quote_bound(text: str) -> str:
    # range_out quotes a bound that is empty or holds a special character.
    if text and not any(c in text for c in '"\\()[],') and not any(c.isspace() for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'


def _range_render(type_oid: int, data: bytes, start: int, end: int) -> str:
    """range_out's text for a binary range (timestamptz bounds in UTC)."""
    _cls, element_oid = _RANGES[type_oid]
    flags, lower, upper = _range_parts(data, start, end)
    if flags & _RANGE_EMPTY:
        return "empty"
    render = _BINARY_TEXT[element_oid]
    return (
        ("[" if flags & _RANGE_LB_INC else "(")
        + ("" if lower is None else _quote_bound(render(lower)))
        + ","
        + ("" if upper is None else _quote_bound(render(upper)))
        + ("]" if flags & _RANGE_UB_INC else ")")
    )


def _multirange_items(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each range in a binary multirange."""
    if len(data) < 4:
        raise DecodeError("binary multirange value too short")
    (count,) = _INT4.unpack_from(data, 0)
    pos = 4
    items = []
    for _ in range(count):
        if pos + 4 > len(data):
            raise DecodeError("binary multirange value truncated")
        (length,) = _INT4.unpack_from(data, pos)
        pos += 4
        if length < 0 or pos + length > len(data):
            raise DecodeError("binary multirange range truncated")
        items.append((pos, pos + length))
        pos += length
    if pos != len(data) or count < 0:
        raise DecodeError("binary multirange value has trailing bytes")
    return items


def _range_bin(type_oid: int) -> Converter:
    def convert(data: bytes) -> Any:
        return _range_value(type_oid, data, 0, len(data))

    return convert


def _multirange_bin(type_oid: int) -> Converter:
    range_oid = _MULTIRANGES[type_oid]

    def convert(data: bytes) -> Any:
        return [_range_value(range_oid, data, a, b) for a, b in _multirange_items(data)]

    return convert


def _multirange_render(type_oid: int, data: bytes) -> str:
    range_oid = _MULTIRANGES[type_oid]
    items = _multirange_items(data)
    return "{" + ",".join(_range_render(range_oid, data, a, b) for a, b in items) + "}"


# Server text from a binary value, for the types whose JSON form or PgValue
# needs it.
_BINARY_TEXT: Final[dict[int, Callable[[bytes], str]]] = {
    OID.INT2: lambda b: str(_INT2.unpack(b)[0]),
    OID.INT4: lambda b: str(_INT4.unpack(b)[0]),
    OID.INT8: lambda b: str(_INT8.unpack(b)[0]),
    OID.NUMERIC: _numeric_text,
    OID.DATE: lambda b: _date_text(_read_date(b)),
    OID.TIMESTAMP: lambda b: _timestamp_text(_read_timestamp(b), False),
    OID.TIMESTAMPTZ: lambda b: _timestamp_text(_read_timestamp(b), True),
    OID.INTERVAL: lambda b: _interval_postgres(*_interval_parts(b)),
}


_BINARY: dict[int, Converter] = {
    OID.BOOL: _bool_bin,
    OID.BYTEA: bytes,
    OID.CHAR: _text_bin,
    OID.NAME: _text_bin,
    OID.TEXT: _text_bin,
    OID.VARCHAR: _text_bin,
    OID.BPCHAR: _text_bin,
    OID.UNKNOWN: _text_bin,
    OID.INT2: _fixed(_INT2, "int2"),
    OID.INT4: _fixed(_INT4, "int4"),
    OID.INT8: _fixed(_INT8, "int8"),
    OID.OID: _fixed(_UINT4, "oid"),
    OID.FLOAT4: _float4_bin,
    OID.MACADDR: _macaddr_bin,
    OID.MACADDR8: _macaddr_bin,
    OID.BIT: _bits_bin,
    OID.VARBIT: _bits_bin,
    OID.FLOAT8: _fixed(_FLOAT8, "float8"),
    OID.NUMERIC: _numeric_bin,
    OID.DATE: _date_bin,
    OID.TIME: _time_bin,
    OID.TIMETZ: _timetz_bin,
    OID.TIMESTAMP: _timestamp_bin,
    OID.TIMESTAMPTZ: _timestamptz_bin,
    OID.INTERVAL: _interval_bin,
    OID.JSON: _json_bin,
    OID.JSONB: _jsonb_bin,
    OID.UUID: _uuid_bin,
    OID.INET: _inet_bin,
    OID.CIDR: _cidr_bin,
}
for _oid in (
    OID.BOOL_ARRAY,
    OID.BYTEA_ARRAY,
    OID.CHAR_ARRAY,
    OID.NAME_ARRAY,
    OID.INT2_ARRAY,
    OID.INT4_ARRAY,
    OID.TEXT_ARRAY,
    OID.BPCHAR_ARRAY,
    OID.VARCHAR_ARRAY,
    OID.INT8_ARRAY,
    OID.FLOAT4_ARRAY,
    OID.FLOAT8_ARRAY,
    OID.OID_ARRAY,
    OID.INET_ARRAY,
    OID.CIDR_ARRAY,
    OID.DATE_ARRAY,
    OID.TIME_ARRAY,
    OID.TIMETZ_ARRAY,
    OID.TIMESTAMP_ARRAY,
    OID.TIMESTAMPTZ_ARRAY,
    OID.INTERVAL_ARRAY,
    OID.NUMERIC_ARRAY,
    OID.UUID_ARRAY,
    OID.JSON_ARRAY,
    OID.JSONB_ARRAY,
    OID.INT4RANGE_ARRAY,
    OID.INT8RANGE_ARRAY,
    OID.NUMRANGE_ARRAY,
    OID.DATERANGE_ARRAY,
    OID.TSRANGE_ARRAY,
    OID.TSTZRANGE_ARRAY,
    OID.INT4MULTIRANGE_ARRAY,
    OID.INT8MULTIRANGE_ARRAY,
    OID.NUMMULTIRANGE_ARRAY,
    OID.DATEMULTIRANGE_ARRAY,
    OID.TSMULTIRANGE_ARRAY,
    OID.TSTZMULTIRANGE_ARRAY,
    OID.MACADDR_ARRAY,
    OID.MACADDR8_ARRAY,
    OID.BIT_ARRAY,
    OID.VARBIT_ARRAY,
):
    _BINARY[_oid] = _array_bin
for _oid in _RANGES:
    _BINARY[_oid] = _range_bin(_oid)
for _oid in _MULTIRANGES:
    _BINARY[_oid] = _multirange_bin(_oid)


def binary_reader(type_oid: int, *, strict: bool = False) -> Converter:
    """The fast reader of ``type_oid``'s binary (send) representation, unguarded.

    Types without a binary reader give a :class:`BinaryValue`. On malformed
    input it may raise struct.error, ValueError, ... besides DecodeError (see
    :func:`text_reader`); :func:`binary_converter` raises only DecodeError.
    A value Python's type cannot hold gives a :class:`PgValue`, or with
    ``strict`` raises DecodeError.
    """
    if strict:
        return _strict(binary_reader(type_oid), type_oid)
    read = _BINARY.get(type_oid)
    if read is not None:
        return read

    def unknown(data: bytes) -> BinaryValue:
        return BinaryValue(type_oid, bytes(data))

    return unknown


def binary_converter(type_oid: int) -> Converter:
    """The converter for ``type_oid``'s binary (send) representation.

    Types without a binary reader give a :class:`BinaryValue`. Malformed
    input raises DecodeError.
    """
    return _guard(binary_reader(type_oid), f"binary type {type_oid}")


def decode_binary(type_oid: int, data: bytes | None) -> Any:
    """Convert one value from its binary representation; ``None`` stays ``None``."""
    if data is None:
        return None
    return binary_converter(type_oid)(data)


def register_type(
    type_oid: int,
    *,
    text: Callable[[str], Any] | None = None,
    binary: Callable[[bytes], Any] | None = None,
) -> None:
    """Use ``text`` (and ``binary``) to read values of ``type_oid`` from now on.

    For an extension's or the user's own types (whose OIDs differ per
    database). Relations described after the call use the new readers. An
    exception from ``text``/``binary`` comes out as a DecodeError.
    """
    if text is not None:
        parse_text = text

        def from_text(value: str | bytes) -> Any:
            return parse_text(_as_str(value))

        _TEXT[type_oid] = from_text
    if binary is not None:
        _BINARY[type_oid] = binary


# --- the JSON form --------------------------------------------------------------


def json_value(value: Any) -> Any:
    """A JSON-serialisable form of a Python value (see :func:`replicant.changes.json_value`)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return _interval_iso(value.seconds * 1_000_000 + value.microseconds, value.days, 0)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, PgArray):
        items = [json_value(item) for item in value]
        return {"$array": items, "lower_bounds": list(value.lower_bounds)}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, PgValue):
        return value.text
    if isinstance(value, BinaryValue):
        return {"$base64": base64.b64encode(value.data).decode("ascii"), "type_oid": value.type_oid}
    if isinstance(value, psycopg2.extras.Range):
        return _range_from_value(value)
    return str(value)


def _bound_text(value: Any) -> str:
    if isinstance(value, _dt.datetime):
        return value.isoformat(" ")
    text = json_value(value)
    return text if isinstance(text, str) else str(text)


def _range_from_value(value: Any) -> str:
    if value.isempty:
        return "empty"
    lower = "" if value.lower is None else _quote_bound(_bound_text(value.lower))
    upper = "" if value.upper is None else _quote_bound(_bound_text(value.upper))
    return f"{value._bounds[0]}{lower},{upper}{value._bounds[1]}"


JsonForm = Callable[[Any, Any], Any]
"""A column's JSON form from its raw representation and its Python value."""


def _interval_from_text(text: str) -> tuple[int, int, int] | None:
    """(microseconds, days, months) of interval_out's postgres-style text; None if infinite."""
    if text in ("infinity", "-infinity"):
        return None
    match = _INTERVAL_TEXT.fullmatch(text)
    if match is None or not text:
        raise ValueError(f"not an interval in the postgres style: {text!r}")
    years, mons, days, sign, h, m, s, fraction = match.groups()
    micros = ((int(h or 0) * 60 + int(m or 0)) * 60 + int(s or 0)) * 1_000_000
    micros += int((fraction or "").ljust(6, "0"))
    if sign == "-":
        micros = -micros
    return micros, int(days or 0), int(years or 0) * 12 + int(mons or 0)


def _json_text_exact(raw: Any, value: Any) -> Any:
    return _as_str(raw)


def _json_text_json(raw: Any, value: Any) -> Any:
    return {"$json": _as_str(raw)}


def _json_text_infinity(raw: Any, value: Any) -> Any:
    text = _as_str(raw)
    return text if text in ("infinity", "-infinity") else json_value(value)


def _json_text_interval(raw: Any, value: Any) -> Any:
    text = _as_str(raw)
    parts = _interval_from_text(text)
    return text if parts is None else _interval_iso(*parts)


_TEXT_JSON: Final[dict[int, JsonForm]] = {
    OID.JSON: _json_text_json,
    OID.JSONB: _json_text_json,
    OID.NUMERIC: _json_text_exact,
    OID.DATE: _json_text_infinity,
    OID.TIMESTAMP: _json_text_infinity,
    OID.TIMESTAMPTZ: _json_text_infinity,
    OID.INTERVAL: _json_text_interval,
    **dict.fromkeys(_RANGES, _json_text_exact),
    **dict.fromkeys(_MULTIRANGES, _json_text_exact),
}


def _json_text_array(element_oid: int) -> JsonForm:
    form = _TEXT_JSON[element_oid]

    def convert(raw: Any, value: Any) -> Any:
        read = text_reader(element_oid, from_str=True)
        return json_value(_parse_array(_as_str(raw), lambda text: form(text, read(text))))

    return convert


def text_json(type_oid: int) -> JsonForm | None:
    """The JSON form of a ``type_oid`` column from its text, or None: ``json_value(value)``.

    Only types whose Python value loses something have one: json/jsonb
    (``{"$json": server text}``), numeric (its text), date and timestamps
    (``"infinity"``/``"-infinity"``), interval (ISO 8601 with months),
    ranges and multiranges (their text), and arrays of these.
    """
    form = _TEXT_JSON.get(type_oid)
    if form is not None:
        return form
    element = _ELEMENT.get(type_oid)
    if element is not None and element in _TEXT_JSON:
        return _json_text_array(element)
    return None


def _json_bin_json(raw: Any, value: Any) -> Any:
    return {"$json": bytes(raw).decode()}


def _json_bin_jsonb(raw: Any, value: Any) -> Any:
    return {"$json": bytes(raw[1:]).decode()}


def _json_bin_numeric(raw: Any, value: Any) -> Any:
    return _numeric_text(bytes(raw))


def _json_bin_infinity(size: int, infinity: int) -> JsonForm:
    fmt = _INT4 if size == 4 else _INT8

    def convert(raw: Any, value: Any) -> Any:
        (n,) = fmt.unpack(raw)
        if n == infinity:
            return "infinity"
        if n == -infinity - 1:
            return "-infinity"
        return json_value(value)

    return convert


def _json_bin_interval(raw: Any, value: Any) -> Any:
    return _interval_iso(*_interval_parts(bytes(raw)))


def _json_bin_range(type_oid: int) -> JsonForm:
    def convert(raw: Any, value: Any) -> Any:
        data = bytes(raw)
        return _range_render(type_oid, data, 0, len(data))

    return convert


def _json_bin_multirange(type_oid: int) -> JsonForm:
    def convert(raw: Any, value: Any) -> Any:
        return _multirange_render(type_oid, bytes(raw))

    return convert


_BINARY_JSON: Final[dict[int, JsonForm]] = {
    OID.JSON: _json_bin_json,
    OID.JSONB: _json_bin_jsonb,
    OID.NUMERIC: _json_bin_numeric,
    OID.DATE: _json_bin_infinity(4, _DATE_INFINITY),
    OID.TIMESTAMP: _json_bin_infinity(8, _TS_INFINITY),
    OID.TIMESTAMPTZ: _json_bin_infinity(8, _TS_INFINITY),
    OID.INTERVAL: _json_bin_interval,
    **{oid: _json_bin_range(oid) for oid in _RANGES},
    **{oid: _json_bin_multirange(oid) for oid in _MULTIRANGES},
}


def _json_bin_array(raw: Any, value: Any) -> Any:
    def element(element_oid: int) -> Converter:
        form = _BINARY_JSON.get(element_oid)
        read = binary_converter(element_oid)
        if form is None:
            return lambda data: json_value(read(data))
        return lambda data: form(data, read(data))

    return json_value(_array_bin(bytes(raw), element))


def binary_json(type_oid: int) -> JsonForm | None:
    """As :func:`text_json`, from the binary (send) representation."""
    form = _BINARY_JSON.get(type_oid)
    if form is not None:
        return form
    element = _ELEMENT.get(type_oid)
    if element is not None and element in _BINARY_JSON:
        return _json_bin_array
    return None
