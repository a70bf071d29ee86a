"""The streaming replication protocol, without I/O.

Bytes in, objects out (and the reverse): the CopyData payloads of a
``START_REPLICATION`` stream, the Standby Status Update we send back,
PostgreSQL-epoch timestamps, and the text of replication commands with every
user-supplied name quoted. Nothing here touches a socket, so every function
can be tested with plain bytes.

Frame layouts (all integers big-endian):

=========  =================================================================
``w``      XLogData: wal_start u64, wal_end u64, send_time i64, data
``k``      Primary keepalive: wal_end u64, send_time i64, reply_requested u8
``r``      Standby status update: written u64, flushed u64, applied u64,
           client_time i64, reply_requested u8
=========  =================================================================
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Final, NamedTuple

from replicant import _accel
from replicant.errors import ConfigurationError, ProtocolError
from replicant.lsn import LSN

__all__ = [
    "PG_EPOCH",
    "Frame",
    "PrimaryKeepalive",
    "XLogData",
    "create_slot_command",
    "datetime_to_pg_timestamp",
    "drop_slot_command",
    "encode_status_update",
    "identify_system_command",
    "parse_frame",
    "pg_now",
    "pg_timestamp_to_datetime",
    "quote_conninfo_value",
    "quote_identifier",
    "quote_literal",
    "read_slot_command",
    "start_replication_command",
    "validate_slot_name",
]

# PostgreSQL counts time in microseconds from 2000-01-01 00:00:00 UTC.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_PG_EPOCH_UNIX_US = 946_684_800_000_000
_timedelta = timedelta

_XLOGDATA_HEADER = struct.Struct("!QQq")  # after the 'w' byte
_KEEPALIVE = struct.Struct("!QqB")  # after the 'k' byte
_STATUS_UPDATE = struct.Struct("!cQQQqB")

_XLOGDATA_HEADER_SIZE = 1 + _XLOGDATA_HEADER.size
_KEEPALIVE_SIZE = 1 + _KEEPALIVE.size


class XLogData(NamedTuple):
    """A chunk of WAL as the output plugin rendered it.

    ``wal_start`` is where the record begins, ``wal_end`` the end of WAL on
    the server when it was sent, ``send_time`` the server clock in
    PostgreSQL-epoch microseconds (see :attr:`sent_at`), ``data`` the plugin's
    payload.
    """

    wal_start: LSN
    wal_end: LSN
    send_time: int
    data: bytes

    @property
    def sent_at(self) -> datetime:
        """``send_time`` as an aware UTC ``datetime``."""
        return pg_timestamp_to_datetime(self.send_time)


class PrimaryKeepalive(NamedTuple):
    """The server's heartbeat: its current WAL end, and whether it wants an answer."""

    wal_end: LSN
    send_time: int
    reply_requested: bool

    @property
    def sent_at(self) -> datetime:
        """``send_time`` as an aware UTC ``datetime``."""
        return pg_timestamp_to_datetime(self.send_time)


Frame = XLogData | PrimaryKeepalive

_new_tuple = tuple.__new__  # _new_tuple(XLogData, fields): XLogData(*fields), faster
_lsn = int.__new__  # _lsn(LSN, n): LSN.from_int(n), faster


def parse_frame(payload: bytes) -> Frame:
    """Parse one CopyData payload of a replication stream.

    Raises :class:`ProtocolError` for an empty, truncated or unknown frame.
    """
    if not payload:
        raise ProtocolError("empty CopyData message in replication stream", position=0)
    kind = payload[0]
    if kind == 0x77:  # 'w'
        if len(payload) < _XLOGDATA_HEADER_SIZE:
            raise ProtocolError(
                f"XLogData frame truncated: {len(payload)} bytes, header needs "
                f"{_XLOGDATA_HEADER_SIZE}",
                position=len(payload),
            )
        start, end, sent = _XLOGDATA_HEADER.unpack_from(payload, 1)
        # The hot path, once per message: the tuple and the LSNs are built
        # without the Python-level constructors (values unpacked as u64 are
        # always in range): a third faster.
        data = payload[_XLOGDATA_HEADER_SIZE:]
        return _new_tuple(XLogData, (_lsn(LSN, start), _lsn(LSN, end), sent, data))
    if kind == 0x6B:  # 'k'
        if len(payload) != _KEEPALIVE_SIZE:
            raise ProtocolError(
                f"primary keepalive frame has {len(payload)} bytes, expected {_KEEPALIVE_SIZE}",
                position=min(len(payload), _KEEPALIVE_SIZE),
            )
        end, sent, reply = _KEEPALIVE.unpack_from(payload, 1)
        return PrimaryKeepalive(LSN.from_int(end), sent, reply != 0)
    raise ProtocolError(
        f"unknown replication message type {bytes([kind])!r} (0x{kind:02x})", position=0
    )


def encode_status_update(
    written: int,
    flushed: int,
    applied: int,
    *,
    now: int | None = None,
    reply: bool = False,
) -> bytes:
    """Build a Standby Status Update (``r``) payload.

    ``now`` is the client clock in PostgreSQL-epoch microseconds (default:
    the current time). ``reply`` asks the server to answer with a keepalive.
    Positions must be valid unsigned 64-bit values.
    """
    for name, value in (("written", written), ("flushed", flushed), ("applied", applied)):
        if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
            raise ConfigurationError(f"{name} position out of range: {value!r}")
    return _STATUS_UPDATE.pack(
        b"r", written, flushed, applied, pg_now() if now is None else now, 1 if reply else 0
    )


# --- timestamps -----------------------------------------------------------


def pg_now() -> int:
    """The current time in PostgreSQL-epoch microseconds."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


def pg_timestamp_to_datetime(value: int) -> datetime:
    """PostgreSQL-epoch microseconds to an aware UTC ``datetime``.

    The one conversion of the times messages carry (keepalives, XLogData,
    pgoutput's commit, prepare and abort times). The overflow policy: a
    value outside ``datetime``'s range raises :class:`ProtocolError` (inside
    a decoder, :class:`~replicant.errors.DecodeError`). The server's clock
    writes these times, so only a corrupt frame carries one; clamping it
    would deliver a wrong time in silence. (Column *values* are another
    matter: :mod:`replicant.values` keeps an out-of-range timestamp as the
    server's exact text in a :class:`~replicant.values.PgValue`.)
    """
    try:
        return PG_EPOCH + _timedelta(0, 0, value)  # positional: faster than microseconds=
    except OverflowError:
        raise ProtocolError(f"timestamp out of range: {value} us since 2000-01-01") from None


# The same conversion compiled where the extension is (the same datetime, the
# same ProtocolError, no timedelta in between): for the hot paths, where two
# of them were a third of what a small transaction's Begin and Commit cost.
fast_pg_timestamp_to_datetime: Final[Callable[[int], datetime]] = (
    pg_timestamp_to_datetime if _accel.compiled is None else _accel.compiled.pg_datetime
)


def datetime_to_pg_timestamp(value: datetime) -> int:
    """An aware ``datetime`` to PostgreSQL-epoch microseconds.

    A naive ``datetime`` is taken as UTC.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- replication commands -------------------------------------------------

# The server accepts slot names of lower-case letters, digits and underscores,
# at most NAMEDATALEN - 1 bytes (ReplicationSlotValidateName).
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_NAMEDATALEN = 64


def validate_slot_name(name: str) -> str:
    """Return ``name`` if the server would accept it as a slot name.

    Otherwise raise :class:`ConfigurationError` saying why, before anything is
    sent to the server.
    """
    if not isinstance(name, str):
        raise ConfigurationError(f"slot name must be a string, not {type(name).__name__}")
    if not name:
        raise ConfigurationError("slot name must not be empty")
    if len(name.encode()) >= _NAMEDATALEN:
        raise ConfigurationError(f"slot name {name!r} is too long (at most 63 characters)")
    if _SLOT_NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"invalid slot name {name!r}: PostgreSQL allows only lower-case letters, "
            "digits and underscores"
        )
    return name


def _check_text(kind: str, value: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{kind} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ConfigurationError(f"{kind} must not contain a NUL character: {value!r}")
    return value


def quote_identifier(name: str, *, minimal: bool = False) -> str:
    """Quote ``name`` as an SQL identifier (``"..."`` with ``"`` doubled).

    Works for any text without NUL: quotes, commas, spaces, backslashes,
    semicolons and non-ASCII characters all come through as they are.
    ``minimal`` leaves a name bare where that means the same (lower-case
    ASCII letters, digits and ``_``, not starting with a digit, not a
    keyword), as the server's ``quote_ident()`` does: for text people read.
    Raises :class:`ConfigurationError` for an empty name or one with NUL.
    """
    _check_text("identifier", name)
    if not name:
        raise ConfigurationError("identifier must not be empty")
    if minimal and _BARE_IDENTIFIER.fullmatch(name) and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


_BARE_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")

# The keywords a bare identifier may not be in every place (PostgreSQL's
# reserved, type/function-name and column-name keywords): quoted even when
# ``minimal``. Quoting one too many is harmless; one too few is not.
_KEYWORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization between bigint
    binary bit boolean both case cast char character check coalesce collate collation
    column concurrently constraint create cross current_catalog current_date
    current_role current_schema current_time current_timestamp current_user dec decimal
    default deferrable desc distinct do else end except exists extract false fetch float
    for foreign freeze from full grant greatest group grouping having ilike in initially
    inner inout int integer intersect interval into is isnull join json lateral leading
    least left like limit localtime localtimestamp national natural nchar none normalize
    not notnull null nullif numeric offset on only or order out outer overlaps overlay
    placing position precision primary real references returning right row select
    session_user setof similar smallint some substring symmetric system_user table
    tablesample then time timestamp to trailing treat trim true union unique user using
    values varchar variadic verbose when where window with xmlattributes xmlconcat
    xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize
    xmltable
    """.split()  # noqa: SIM905 (a word list reads better than 200 quoted strings)
)


def quote_conninfo_value(value: str) -> str:
    """``value`` as a libpq key/value connection string writes it.

    Bare when it has no white space, quote or backslash (and is not empty);
    otherwise in single quotes with ``'`` and ``\\`` escaped by a backslash.
    """
    if _BARE_CONNINFO.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_BARE_CONNINFO = re.compile(r"[^\s'\\]+")


def quote_literal(value: str) -> str:
    """Quote ``value`` as a standard SQL string literal (``'...'``, ``'`` doubled).

    The replication command scanner knows no backslash escapes, so backslashes
    are left as they are.
    """
    _check_text("literal", value)
    return "'" + value.replace("'", "''") + "'"


def identify_system_command() -> str:
    """``IDENTIFY_SYSTEM``."""
    return "IDENTIFY_SYSTEM"


_SNAPSHOT_KEYWORDS = {
    "export": "EXPORT_SNAPSHOT",
    "nothing": "NOEXPORT_SNAPSHOT",
    "use": "USE_SNAPSHOT",
}


def create_slot_command(
    name: str,
    plugin: str,
    *,
    server_version: int,
    temporary: bool = False,
    snapshot: str = "nothing",
    two_phase: bool = False,
) -> str:
    """``CREATE_REPLICATION_SLOT`` for a logical slot, in the syntax the server needs.

    ``server_version`` is the server's integer version (e.g. 150004): servers
    before 15 take keyword options (``NOEXPORT_SNAPSHOT``, ``TWO_PHASE``),
    15 and later a parenthesised option list. ``two_phase`` needs 14+.
    """
    validate_slot_name(name)
    if snapshot not in _SNAPSHOT_KEYWORDS:
        raise ConfigurationError(f"snapshot must be 'export', 'use' or 'nothing', not {snapshot!r}")
    if two_phase and server_version < 140000:
        raise ConfigurationError("two_phase slots need PostgreSQL 14 or later")
    parts = ["CREATE_REPLICATION_SLOT", quote_identifier(name)]
    if temporary:
        parts.append("TEMPORARY")
    parts += ["LOGICAL", quote_identifier(plugin)]
    if server_version >= 150000:
        options = [f"SNAPSHOT {quote_literal(snapshot)}"]
        if two_phase:
            options.append("TWO_PHASE true")
        parts.append("(" + ", ".join(options) + ")")
    else:
        parts.append(_SNAPSHOT_KEYWORDS[snapshot])
        if two_phase:
            parts.append("TWO_PHASE")
    return " ".join(parts)


def read_slot_command(name: str) -> str:
    """``READ_REPLICATION_SLOT`` (PostgreSQL 15+)."""
    return f"READ_REPLICATION_SLOT {quote_identifier(validate_slot_name(name))}"


def drop_slot_command(name: str, *, wait: bool = False) -> str:
    """``DROP_REPLICATION_SLOT``; with ``wait``, the server waits for an active slot."""
    command = f"DROP_REPLICATION_SLOT {quote_identifier(validate_slot_name(name))}"
    return command + " WAIT" if wait else command


def start_replication_command(
    slot: str,
    start_lsn: int = 0,
    options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> str:
    """``START_REPLICATION SLOT ... LOGICAL X/Y (option 'value', ...)``.

    Option names are quoted as identifiers and values as literals, so a value
    (a publication list, say) can hold any text but NUL. ``None`` values are
    sent as options without a value, booleans as ``'true'``/``'false'``.
    """
    parts = [
        "START_REPLICATION SLOT",
        quote_identifier(validate_slot_name(slot)),
        "LOGICAL",
        str(LSN(start_lsn)),
    ]
    items = list(options.items() if isinstance(options, Mapping) else options or ())
    if items:
        rendered = []
        for key, value in items:
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"invalid plugin option name: {key!r}")
            text = quote_identifier(key)
            if isinstance(value, bool):
                text += " " + quote_literal("true" if value else "false")
            elif value is not None:
                text += " " + quote_literal(str(value))
            rendered.append(text)
        parts.append("(" + ", ".join(rendered) + ")")
    return " ".join(parts)
