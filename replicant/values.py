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

Every converter raises :class:`~replicant.errors.DecodeError` when the input
is malformed or out of Python's range (for example a date before year 1).

psycopg2's C typecasters write into the cursor they are given and read its
``tzinfo_factory``; called with ``None`` they corrupt memory or crash the
process. They are therefore always called with a real cursor object, built
on a connection object that is allocated but never connected (it owns no
socket and no libpq handle).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import psycopg2
import psycopg2.extensions

from replicant import _accel
from replicant.errors import DecodeError

# psycopg2's stubs leave out several of its typecaster objects (PYDATETIME,
# BINARYARRAY, ...); the module is used untyped here.
_ext: Any = psycopg2.extensions
_BYTEA_CASTER: Any = psycopg2.BINARY  # the DB-API type object is bytea's typecaster

__all__ = [
    "OID",
    "BinaryValue",
    "Converter",
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
    JSONB: Final = 3802
    JSONB_ARRAY: Final = 3807


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A value sent in binary format for a type replicant cannot read.

    ``data`` is the type's send representation exactly as the server sent it.
    """

    type_oid: int
    data: bytes


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
    _TEXT[OID.TIMESTAMPTZ] = _from_text(
        _dt.datetime.fromisoformat, _cast_with(_ext.PYDATETIMETZ)
    )


def _keep_str(value: str) -> str:
    return value


_utf8: Final[Callable[[bytes], str]] = bytes.decode


def text_reader(type_oid: int, *, from_str: bool = False) -> Converter:
    """The fast reader of ``type_oid``'s text representation, unguarded.

    It takes UTF-8 ``bytes`` (as pgoutput sends them), or ``str`` when
    ``from_str`` (as a JSON plugin gives them). On malformed input it raises
    whatever the parser raises (ValueError, psycopg2.DataError, ...):
    :class:`~replicant.changes.Row` turns that into DecodeError naming the
    column. Use :func:`text_converter` for a reader that raises only
    DecodeError.
    """
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
_NUMERIC_HEAD = struct.Struct(">hhHh")
_TIMETZ = struct.Struct(">qi")
_INTERVAL = struct.Struct(">qii")
_ARRAY_HEAD = struct.Struct(">iiI")
_ARRAY_DIM = struct.Struct(">ii")

_PG_EPOCH_DATE: Final = _dt.date(2000, 1, 1)
_PG_EPOCH: Final = _dt.datetime(2000, 1, 1)
_PG_EPOCH_UTC: Final = _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc)
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
    if len(data) < 8:
        raise DecodeError(f"binary numeric value has only {len(data)} bytes")
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(data)
    special = _NUMERIC_SPECIAL.get(sign)
    if special is not None:
        return special
    if ndigits < 0 or dscale < 0 or len(data) != 8 + 2 * ndigits or sign not in (0, _NUMERIC_NEG):
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
    return Decimal("-" + whole if sign == _NUMERIC_NEG else whole)


_read_date = _fixed(_INT4, "date")
_read_time = _fixed(_INT8, "time")
_read_timestamp = _fixed(_INT8, "timestamp")


def _date_bin(data: bytes) -> _dt.date:
    days = _read_date(data)
    if days == _DATE_INFINITY:
        return _dt.date.max
    if days == _DATE_NINFINITY:
        return _dt.date.min
    try:
        return _PG_EPOCH_DATE + _dt.timedelta(days=days)
    except OverflowError as exc:
        raise DecodeError(f"date out of Python's range ({days} days from 2000-01-01)") from exc


def _time_from_micros(micros: int, tz: _dt.tzinfo | None) -> _dt.time:
    if not 0 <= micros <= 86_400_000_000:
        raise DecodeError(f"binary time value out of range: {micros}")
    # 24:00:00 is a valid PostgreSQL time; psycopg2 reads it as midnight.
    micros %= 86_400_000_000
    seconds, us = divmod(micros, 1_000_000)
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    return _dt.time(h, m, s, us, tzinfo=tz)


def _time_bin(data: bytes) -> _dt.time:
    return _time_from_micros(_read_time(data), None)


def _timetz_bin(data: bytes) -> _dt.time:
    if len(data) != 12:
        raise DecodeError(f"binary timetz value has {len(data)} bytes, expected 12")
    micros, zone = _TIMETZ.unpack(data)
    # The zone is sent in seconds west of UTC; Python counts east.
    try:
        tz = _dt.timezone(_dt.timedelta(seconds=-zone))
    except ValueError as exc:
        raise DecodeError(f"binary timetz zone out of range: {zone}") from exc
    return _time_from_micros(micros, tz)


def _timestamp_bin(data: bytes) -> _dt.datetime:
    micros = _read_timestamp(data)
    if micros == _TS_INFINITY:
        return _dt.datetime.max
    if micros == _TS_NINFINITY:
        return _dt.datetime.min
    try:
        return _PG_EPOCH + _dt.timedelta(microseconds=micros)
    except OverflowError as exc:
        raise DecodeError(f"timestamp out of Python's range ({micros} us from 2000)") from exc


def _timestamptz_bin(data: bytes) -> _dt.datetime:
    micros = _read_timestamp(data)
    if micros == _TS_INFINITY:
        return _MAX_UTC
    if micros == _TS_NINFINITY:
        return _MIN_UTC
    try:
        return _PG_EPOCH_UTC + _dt.timedelta(microseconds=micros)
    except OverflowError as exc:
        raise DecodeError(f"timestamptz out of Python's range ({micros} us from 2000)") from exc


def _interval_bin(data: bytes) -> _dt.timedelta:
    if len(data) != 16:
        raise DecodeError(f"binary interval value has {len(data)} bytes, expected 16")
    micros, days, months = _INTERVAL.unpack(data)
    # psycopg2 reads "1 year 2 mons" as 365 + 2 * 30 days; do the same so the
    # text and binary formats give equal values.
    years = abs(months) // 12 * (1 if months >= 0 else -1)
    months -= years * 12
    try:
        return _dt.timedelta(days=years * 365 + months * 30 + days, microseconds=micros)
    except OverflowError as exc:
        raise DecodeError("interval out of Python's range") from exc


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


def _array_bin(data: bytes) -> list[Any]:
    end = len(data)
    if end < 12:
        raise DecodeError("binary array value too short")
    ndim, _flags, element_oid = _ARRAY_HEAD.unpack_from(data)
    if ndim == 0:
        return []
    if not 0 < ndim <= 6 or end < 12 + 8 * ndim:
        raise DecodeError(f"binary array value with bad dimension count {ndim}")
    dims = [_ARRAY_DIM.unpack_from(data, 12 + 8 * i)[0] for i in range(ndim)]
    if any(d <= 0 for d in dims):
        # PostgreSQL sends an empty array with no dimensions at all.
        raise DecodeError("binary array value with an empty or negative dimension")
    total = 1
    for d in dims:
        total *= d
    if total * 4 > end - (12 + 8 * ndim):
        raise DecodeError(f"binary array value too short for {total} elements")
    convert = binary_converter(element_oid)
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
    return result


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
    OID.FLOAT4: _fixed(_FLOAT4, "float4"),
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
):
    _BINARY[_oid] = _array_bin


def binary_reader(type_oid: int) -> Converter:
    """The fast reader of ``type_oid``'s binary (send) representation, unguarded.

    Types without a binary reader give a :class:`BinaryValue`. On malformed
    input it may raise struct.error, ValueError, ... besides DecodeError (see
    :func:`text_reader`); :func:`binary_converter` raises only DecodeError.
    """
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
