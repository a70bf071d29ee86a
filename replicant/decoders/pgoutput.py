"""pgoutput, PostgreSQL's built-in logical replication plugin, protocol versions 1 to 4.

Each XLogData payload holds one message; :meth:`PgOutputDecoder.decode`
turns it into zero or one event (a Type message gives none: it only
teaches the decoder a type's name).

Message layouts follow the PostgreSQL documentation, "Logical Replication
Message Formats". Notes on what the documentation leaves implicit:

* Inside a stream block (between Stream Start and Stream Stop, protocol 2+)
  every data message (Relation, Type, Insert, Update, Delete, Truncate,
  Message) starts with the xid of the (sub)transaction that made it. Outside
  a block it does not. The decoder tracks the block to know which.
* Stream Abort carries the abort LSN and time only with protocol 4 and
  ``streaming 'parallel'``; the decoder expects them when it asked for that.
* A key-only old tuple ('K') has every column, NULL where the column is not
  part of the replica identity; the decoder exposes only the identity
  columns, which is what the server means.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from replicant import _accel
from replicant import values as _values
from replicant.changes import (
    UNCHANGED,
    BeginPrepare,
    Column,
    CommitPrepared,
    Event,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    Row,
    RowLayout,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    new_begin,
    new_commit,
    new_delete,
    new_insert,
    new_update,
)
from replicant.errors import ConfigurationError, DecodeError, ProtocolError
from replicant.lsn import LSN
from replicant.protocol import fast_pg_timestamp_to_datetime as _time
from replicant.protocol import quote_identifier

__all__ = ["PgOutputDecoder", "quote_publication_names"]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")  # final_lsn, commit_time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_time
_STREAM_START = struct.Struct(">IB")  # xid, first_segment
_STREAM_COMMIT = struct.Struct(">IBQQq")  # xid, flags, commit_lsn, end_lsn, commit_time
_TWO_U32 = struct.Struct(">II")  # xid and relid; xid and subxid
_STREAM_ABORT_4 = struct.Struct(">IIQq")  # xid, subxid, abort_lsn, abort_time
_BEGIN_PREPARE = struct.Struct(">QQqI")  # prepare_lsn, end_lsn, prepare_time, xid
_PREPARE = struct.Struct(">BQQqI")  # flags, prepare_lsn, end_lsn, prepare_time, xid
_ROLLBACK_PREPARED = struct.Struct(">BQQqqI")  # flags, prepare_end, rollback_end, 2 times, xid
_MESSAGE = struct.Struct(">BQ")  # flags, lsn
_TRUNCATE = struct.Struct(">IB")  # nrelids, flags
_ATTR = struct.Struct(">Ii")  # type oid, type modifier
_ROW_HEAD = struct.Struct(">IBH")  # relid, tuple marker, its column count
_STREAM_ROW_HEAD = struct.Struct(">IIBH")  # xid, relid, tuple marker, its column count
_MARK_COUNT = struct.Struct(">BH")  # tuple marker, its column count
_KIND_LEN = struct.Struct(">BI")  # a tuple column's kind byte and (for 't'/'b') its length
# Lets _KIND_LEN read past the end (after a final 'n'/'u' column, or at the
# end of a tuple that claims more columns than it has): kind 0, caught.
_PAD: Final = bytes(_KIND_LEN.size)

_lsn = int.__new__  # _lsn(LSN, n): LSN.from_int without the method call, for the hot path
_IDENTITY: Final = {b"d"[0]: "default", b"n"[0]: "nothing", b"f"[0]: "full", b"i"[0]: "index"}
_TEXT, _BINARY, _NULL, _TOAST = b"t"[0], b"b"[0], b"n"[0], b"u"[0]
# ProtocolError: a time out of range (pg_timestamp_to_datetime's policy).
_MALFORMED = (struct.error, IndexError, ValueError, OverflowError, ProtocolError)

_NAMES: Final = {
    b"B"[0]: "Begin",
    b"C"[0]: "Commit",
    b"O"[0]: "Origin",
    b"R"[0]: "Relation",
    b"Y"[0]: "Type",
    b"I"[0]: "Insert",
    b"U"[0]: "Update",
    b"D"[0]: "Delete",
    b"T"[0]: "Truncate",
    b"M"[0]: "Message",
    b"S"[0]: "Stream Start",
    b"E"[0]: "Stream Stop",
    b"c"[0]: "Stream Commit",
    b"A"[0]: "Stream Abort",
    b"b"[0]: "Begin Prepare",
    b"P"[0]: "Prepare",
    b"K"[0]: "Commit Prepared",
    b"r"[0]: "Rollback Prepared",
    b"p"[0]: "Stream Prepare",
}


def quote_publication_names(publication: str | Sequence[str]) -> str:
    """The ``publication_names`` option value: a comma-separated list of quoted identifiers.

    Each name is double-quoted with embedded double quotes doubled, so names
    with capitals, quotes, commas, spaces or non-ASCII letters reach the
    server unchanged. (The replication protocol layer quotes the whole value
    as a string literal.)
    """
    names = [publication] if isinstance(publication, str) else list(publication)
    if not names:
        raise ConfigurationError("at least one publication name is needed")
    quoted = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"not a publication name: {name!r}")
        if "\x00" in name:
            raise ConfigurationError(f"publication name contains a NUL character: {name!r}")
        quoted.append(quote_identifier(name))
    return ",".join(quoted)


class _Table:
    """What the decoder keeps per relation: the event and the row shapes."""

    __slots__ = (
        "binary",
        "key_binary",
        "key_positions",
        "key_text",
        "ncolumns",
        "relation",
        "text",
    )

    def __init__(self, relation: Relation, decode_values: bool, strict: bool = False) -> None:
        columns = relation.columns
        names = [c.name for c in columns]
        oids = [c.type_oid for c in columns]
        text_json: list[Any] | None = None
        binary_json: list[Any] | None = None
        if decode_values:
            text = [_values.text_reader(oid, strict=strict) for oid in oids]
            binary = [_values.binary_reader(oid, strict=strict) for oid in oids]
            text_json = [_values.text_json(oid) for oid in oids]
            binary_json = [_values.binary_json(oid) for oid in oids]
        else:
            text = binary = [_keep] * len(columns)
        self.relation = relation
        self.ncolumns = len(columns)
        self.text = RowLayout(names, oids, text, text_json)
        self.binary = RowLayout(names, oids, binary, binary_json)
        self.key_positions = [i for i, c in enumerate(columns) if c.key]
        self.key_text = self.text.subset(self.key_positions)
        self.key_binary = self.binary.subset(self.key_positions)


def _keep(value: Any) -> Any:
    return value


def _walk_tuple(data: bytes, pos: int, count: int) -> tuple[list[Any], int, int, int]:
    """Split ``count`` TupleData columns at ``pos``: values, end, binary and special counts.

    The values are the bytes of each text ('t') or binary ('b') column,
    ``None`` for NULL ('n'), :data:`UNCHANGED` for an unchanged TOASTed value
    ('u'); the counts say how many were 'b', and how many 'n' or 'u'.
    ``_speedups.read_row`` is the compiled equivalent (and makes the row
    too); this is the reference, and the one that says what is wrong with a
    malformed tuple.
    """
    end = len(data)
    if pos > end:
        raise DecodeError("tuple data truncated", position=end)
    buf = data + _PAD
    raw: list[Any] = []
    append = raw.append
    read = _KIND_LEN.unpack_from
    binary = special = 0
    for _ in range(count):
        # Reading past the end finds the zero padding: kind 0, handled below.
        kind, length = read(buf, pos)
        if kind == 116 or kind == 98:  # 't', 'b'
            start = pos + 5
            pos = start + length
            if pos > end:
                raise DecodeError("column value runs past the message's end", position=start)
            append(buf[start:pos])
            if kind == 98:
                binary += 1
        elif kind == 110:  # 'n'
            append(None)
            pos += 1
            special += 1
        elif kind == 117:  # 'u'
            append(UNCHANGED)
            pos += 1
            special += 1
        elif pos >= end:
            raise DecodeError("tuple data truncated", position=pos)
        else:
            raise DecodeError(f"unknown tuple column kind {kind!r}", position=pos)
    return raw, pos, binary, special


# The compiled tuple walk, chosen once with every other fast path (see
# replicant._accel). It makes the rows itself, so Row is then on its RowCore.
_read_row: Final[Any] = None if _accel.compiled is None else _accel.compiled.read_row
# The compiled decode of Begin, Commit, Insert and Update (see decode()).
_PgOutputFast: Final[Any] = None if _accel.compiled is None else _accel.compiled.PgOutputFast


class PgOutputDecoder:
    """Decodes pgoutput payloads into events, keeping the relation cache of one stream.

    The constructor takes the options for START_REPLICATION in friendly
    form; :meth:`start_options` turns them into the option strings for a
    given server version. ``decode_values=False`` gives rows whose values
    stay as the bytes the server sent (text or binary representation).
    A value Python's type cannot hold (a BC date, year 10000, a huge
    interval) reads as a :class:`~replicant.values.PgValue`;
    ``strict_values=True`` makes reading it raise DecodeError instead.
    """

    plugin = "pgoutput"

    def __init__(
        self,
        publication: str | Sequence[str],
        *,
        proto_version: int | None = None,
        binary: bool = False,
        messages: bool = False,
        streaming: bool | str = False,
        two_phase: bool = False,
        origin: str | None = None,
        options: Mapping[str, str] | None = None,
        decode_values: bool = True,
        strict_values: bool = False,
    ) -> None:
        self._publication_names = quote_publication_names(publication)
        if proto_version is not None and (
            isinstance(proto_version, bool)
            or not isinstance(proto_version, int)
            or not 1 <= proto_version <= 4
        ):
            raise ConfigurationError(
                f"pgoutput proto_version must be 1 to 4, not {proto_version!r}"
            )
        if streaming not in (True, False, "on", "off", "parallel"):
            raise ConfigurationError(
                f"streaming must be True, False or 'parallel', not {streaming!r}"
            )
        if origin is not None and origin not in ("none", "any"):
            raise ConfigurationError(f"origin must be 'none' or 'any', not {origin!r}")
        self.proto_version = proto_version
        self.binary = bool(binary)
        self.messages = bool(messages)
        self.streaming: str = (
            "on" if streaming is True else "off" if streaming is False else str(streaming)
        )
        self.two_phase = bool(two_phase)
        self.origin = origin
        self.extra_options = dict(options or {})
        self.decode_values = decode_values
        self.strict_values = strict_values
        self._abort_info = self.extra_options.get("streaming", self.streaming) == "parallel"
        self._dispatch = self._make_dispatch()
        self._read_row: Any = _read_row
        self.reset()
        if _PgOutputFast is not None and type(self) is PgOutputDecoder:
            # The compiled decode of an ordinary transaction's messages, in
            # front of the Python one (the reference), which takes the rest.
            # Not for a subclass, whose own methods must decode.
            self.decode = _PgOutputFast(  # type: ignore[method-assign]
                self,
                PgOutputDecoder.decode.__get__(self),
                LSN,
                Row,
                UNCHANGED,
                new_begin,
                new_commit,
                new_insert,
                new_update,
                _time,
            )

    # -- Decoder interface --------------------------------------------------------------

    def start_options(self, server_version: int) -> dict[str, str]:
        """START_REPLICATION options for a server (``server_version_num``, e.g. 150004).

        ``proto_version`` defaults to the highest the server speaks (13: 1,
        14: 2, 15: 3, 16 and later: 4). Asking for a feature the server or
        the protocol version lacks raises ConfigurationError.
        """
        major = server_version // 10000
        if major < 10:
            raise ConfigurationError(f"pgoutput needs PostgreSQL 10 or later (server {major})")
        highest = 1 if major < 14 else 2 if major == 14 else 3 if major == 15 else 4
        version = self.proto_version if self.proto_version is not None else highest
        if version > highest:
            raise ConfigurationError(
                f"PostgreSQL {major} speaks pgoutput protocol up to {highest}, not {version}"
            )
        options = {"proto_version": str(version), "publication_names": self._publication_names}
        if self.binary:
            self._need(major >= 14, "binary", "PostgreSQL 14")
            options["binary"] = "true"
        if self.messages:
            self._need(major >= 14, "messages", "PostgreSQL 14")
            options["messages"] = "true"
        if self.streaming == "on":
            self._need(version >= 2, "streaming", "protocol 2 (PostgreSQL 14)")
            options["streaming"] = "on"
        elif self.streaming == "parallel":
            self._need(version >= 4, "streaming 'parallel'", "protocol 4 (PostgreSQL 16)")
            options["streaming"] = "parallel"
        if self.two_phase:
            self._need(version >= 3, "two_phase", "protocol 3 (PostgreSQL 15)")
            options["two_phase"] = "on"
        if self.origin is not None:
            self._need(major >= 16, "origin", "PostgreSQL 16")
            options["origin"] = self.origin
        options.update(self.extra_options)
        return options

    @staticmethod
    def _need(condition: bool, what: str, needed: str) -> None:
        if not condition:
            raise ConfigurationError(f"pgoutput option {what} needs {needed} or later")

    def reset(self) -> None:
        """Forget the relation and type caches and any open transaction."""
        self._tables: dict[int, _Table] = {}
        self._types: dict[int, tuple[str, str]] = {}
        self._xid: int | None = None
        self._in_transaction = False
        self._in_stream = False
        self._stream_xid: int | None = None
        self._last_end = LSN.from_int(0)

    @property
    def in_transaction(self) -> bool:
        """True between Begin (or Begin Prepare, Stream Start) and its end.

        The end is Commit (Prepare, Stream Stop).
        """
        return self._in_transaction

    @property
    def relations(self) -> Mapping[int, Relation]:
        """The relations described so far on this stream, by OID."""
        return MappingProxyType({oid: t.relation for oid, t in self._tables.items()})

    @property
    def types(self) -> Mapping[int, tuple[str, str]]:
        """Types described by Type messages so far: OID to (schema, name)."""
        return MappingProxyType(self._types)

    def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
        """Decode one pgoutput message. Raises DecodeError for anything malformed.

        With the compiled paths, a decoder's ``decode`` is a compiled twin
        of this for an ordinary transaction's Begin, Commit, Insert and
        Update, which hands every other message to this method.
        """
        if not data:
            raise DecodeError("empty pgoutput message", position=0)
        if type(wal_start) is not LSN:  # the stream gives LSNs; other callers may not
            wal_start = _lsn(LSN, wal_start)
        try:
            events: list[Event] = self._dispatch[data[0]](data, wal_start)
            return events
        except DecodeError:
            raise
        except _MALFORMED as exc:
            # Every read is bounds-checked by struct or an explicit test; what
            # lands here is a message shorter than its fields say.
            name = _NAMES.get(data[0], "pgoutput")
            raise DecodeError(f"malformed {name} message: {exc}") from exc

    # -- helpers --------------------------------------------------------------------------

    def _make_dispatch(self) -> tuple[Any, ...]:
        handlers = {
            b"B"[0]: self._begin,
            b"C"[0]: self._commit,
            b"O"[0]: self._origin,
            b"R"[0]: self._relation,
            b"Y"[0]: self._type,
            b"I"[0]: self._insert,
            b"U"[0]: self._update,
            b"D"[0]: self._delete,
            b"T"[0]: self._truncate,
            b"M"[0]: self._message,
            b"S"[0]: self._stream_start,
            b"E"[0]: self._stream_stop,
            b"c"[0]: self._stream_commit,
            b"A"[0]: self._stream_abort,
            b"b"[0]: self._begin_prepare,
            b"P"[0]: self._prepare,
            b"K"[0]: self._commit_prepared,
            b"r"[0]: self._rollback_prepared,
            b"p"[0]: self._stream_prepare,
        }
        return tuple(handlers.get(i, self._unknown) for i in range(256))

    def _unknown(self, data: bytes, wal_start: LSN) -> list[Event]:
        raise DecodeError(f"unknown pgoutput message type {data[:1]!r}", position=0)

    def _position(self, wal_start: LSN) -> LSN:
        # A change's own position when the frame carries it; the walsender
        # sends 0 for messages that are not the last of a change (Relation,
        # Type), and acknowledging the end of the previous transaction is
        # always safe.
        return wal_start or self._last_end

    def _ended(self, end_lsn: int) -> LSN:
        lsn: LSN = _lsn(LSN, end_lsn)
        if lsn > self._last_end:
            self._last_end = lsn
        return lsn

    @staticmethod
    def _string(data: bytes, pos: int) -> tuple[str, int]:
        """A NUL-terminated string at ``pos``; returns it and the position after the NUL."""
        end = data.find(0, pos)
        if end < 0:
            raise DecodeError("unterminated string", position=pos)
        try:
            return data[pos:end].decode(), end + 1
        except UnicodeDecodeError as exc:
            raise DecodeError(f"string is not valid UTF-8: {exc.reason}", position=pos) from exc

    @staticmethod
    def _finish(data: bytes, pos: int, name: str) -> None:
        if pos != len(data):
            raise DecodeError(
                f"{name} message has {len(data) - pos} unexpected trailing bytes", position=pos
            )

    def _check_size(self, data: bytes, size: int, name: str) -> None:
        if len(data) != size:
            raise DecodeError(
                f"{name} message has {len(data)} bytes, expected {size}",
                position=min(len(data), size),
            )

    def _data_xid(self, data: bytes) -> tuple[int | None, int]:
        """The xid of a data message and where its body starts."""
        if self._in_stream:
            return _U32.unpack_from(data, 1)[0], 5
        return self._xid, 1

    def _table(self, relid: int, pos: int) -> _Table:
        table = self._tables.get(relid)
        if table is None:
            raise self._unknown_relation(relid, pos)
        return table

    @staticmethod
    def _unknown_relation(relid: int, pos: int) -> DecodeError:
        return DecodeError(
            f"change for relation {relid}, which this stream has not described", position=pos
        )

    def _tuple(self, data: bytes, pos: int, count: int, table: _Table) -> tuple[Row, int]:
        """Read the columns of TupleData at ``pos`` (its column count already read).

        Returns the row and the position after it.
        """
        if count != table.ncolumns:
            relation = table.relation
            raise DecodeError(
                f"tuple has {count} columns, relation {relation.schema}.{relation.table}"
                f" has {table.ncolumns}",
                position=pos - 2,
            )
        read_row = self._read_row
        if read_row is not None:
            made: tuple[Row, int] | None = read_row(
                data, pos, count, table.text, table.binary, Row, UNCHANGED
            )
            if made is not None:
                return made
            # Malformed (the Python walk says what is wrong) or mixing text
            # and binary columns (rare): done below.
        raw, end, binary, special = _walk_tuple(data, pos, count)
        if not binary:
            return Row(table.text, raw), end
        if binary + special == count:
            return Row(table.binary, raw), end
        return Row(PgOutputDecoder._mixed_layout(data, pos, count, table), raw), end

    @staticmethod
    def _mixed_layout(data: bytes, pos: int, count: int, table: _Table) -> RowLayout:
        """Converters for a tuple with both text and binary columns.

        Binary mode still sends text for a type without a send function.
        Rare, so the tuple's kinds are simply read again.
        """
        convert = []
        json: list[Any] = []
        for i in range(count):
            kind, length = _KIND_LEN.unpack_from(data + _PAD, pos)
            layout = table.binary if kind == 98 else table.text
            convert.append(layout.convert[i])
            json.append(layout.json[i] if layout.json is not None else None)
            pos += 5 + length if kind in (98, 116) else 1
        return table.text.with_converters(convert, json)

    @staticmethod
    def _key_row(row: Row, table: _Table) -> Row:
        """The identity columns of a 'K' old tuple (the rest are NULL placeholders)."""
        positions = table.key_positions
        raw = [row._raw[i] for i in positions]
        if row._layout is table.text:
            return Row(table.key_text, raw)
        if row._layout is table.binary:
            return Row(table.key_binary, raw)
        return Row(row._layout.subset(positions), raw)

    # -- transaction framing ------------------------------------------------------------------

    # Begin and Commit are two of every three messages of small transactions:
    # built like the row events, without the dataclass constructors.

    def _begin(self, data: bytes, wal_start: LSN) -> list[Event]:
        if len(data) != 21:
            self._check_size(data, 21, "Begin")
        final_lsn, commit_time, xid = _BEGIN.unpack_from(data, 1)
        self._xid = xid
        self._in_transaction = True
        lsn = wal_start or self._last_end
        return [new_begin(lsn, xid, _lsn(LSN, final_lsn), _time(commit_time))]

    def _commit(self, data: bytes, wal_start: LSN) -> list[Event]:
        if len(data) != 26:
            self._check_size(data, 26, "Commit")
        _flags, commit_lsn, end_lsn, commit_time = _COMMIT.unpack_from(data, 1)
        xid = self._xid
        self._xid = None
        self._in_transaction = False
        return [new_commit(self._ended(end_lsn), xid, _lsn(LSN, commit_lsn), _time(commit_time))]

    def _origin(self, data: bytes, wal_start: LSN) -> list[Event]:
        (origin_lsn,) = _U64.unpack_from(data, 1)
        name, pos = self._string(data, 9)
        self._finish(data, pos, "Origin")
        return [Origin(self._position(wal_start), self._xid, name, LSN.from_int(origin_lsn))]

    # -- schema ---------------------------------------------------------------------------------

    def _relation(self, data: bytes, wal_start: LSN) -> list[Event]:
        xid, pos = self._data_xid(data)
        (relid,) = _U32.unpack_from(data, pos)
        schema, pos = self._string(data, pos + 4)
        table, pos = self._string(data, pos)
        identity = _IDENTITY.get(data[pos], "unknown")
        (count,) = _U16.unpack_from(data, pos + 1)
        pos += 3
        columns = []
        for _ in range(count):
            key = bool(data[pos] & 1)
            name, pos = self._string(data, pos + 1)
            type_oid, type_modifier = _ATTR.unpack_from(data, pos)
            pos += 8
            columns.append(Column(name, type_oid, type_modifier, key))
        self._finish(data, pos, "Relation")
        relation = Relation(
            self._position(wal_start),
            xid,
            relid,
            schema or "pg_catalog",  # the server sends "" for pg_catalog
            table,
            tuple(columns),
            identity,
        )
        self._tables[relid] = _Table(relation, self.decode_values, self.strict_values)
        return [relation]

    def _type(self, data: bytes, wal_start: LSN) -> list[Event]:
        _xid, pos = self._data_xid(data)
        (type_oid,) = _U32.unpack_from(data, pos)
        schema, pos = self._string(data, pos + 4)
        name, pos = self._string(data, pos)
        self._finish(data, pos, "Type")
        self._types[type_oid] = (schema or "pg_catalog", name)
        return []

    # -- rows -------------------------------------------------------------------------------------

    def _insert(self, data: bytes, wal_start: LSN) -> list[Event]:
        # The hot path: one struct call for the fixed fields, then the tuple.
        if self._in_stream:
            xid, relid, marker, count = _STREAM_ROW_HEAD.unpack_from(data, 1)
            pos = 12
        else:
            xid = self._xid
            relid, marker, count = _ROW_HEAD.unpack_from(data, 1)
            pos = 8
        table = self._tables.get(relid)
        if table is None:
            raise self._unknown_relation(relid, pos - 7)
        if marker != 78:  # 'N'
            raise DecodeError(f"Insert without a new tuple (marker {marker})", position=pos - 3)
        new, pos = self._tuple(data, pos, count, table)
        if pos != len(data):
            self._finish(data, pos, "Insert")
        lsn = wal_start or self._last_end
        return [new_insert(lsn, xid, table.relation, new)]

    def _row_head(self, data: bytes) -> tuple[int | None, int, int, int, int]:
        """xid, relid, tuple marker, its column count, and where the tuple starts."""
        if self._in_stream:
            xid, relid, marker, count = _STREAM_ROW_HEAD.unpack_from(data, 1)
            return xid, relid, marker, count, 12
        relid, marker, count = _ROW_HEAD.unpack_from(data, 1)
        return self._xid, relid, marker, count, 8

    def _update(self, data: bytes, wal_start: LSN) -> list[Event]:
        # Hot like _insert: the row head read here rather than by _row_head.
        if self._in_stream:
            xid, relid, marker, count = _STREAM_ROW_HEAD.unpack_from(data, 1)
            pos = 12
        else:
            xid = self._xid
            relid, marker, count = _ROW_HEAD.unpack_from(data, 1)
            pos = 8
        table = self._tables.get(relid)
        if table is None:
            raise self._unknown_relation(relid, pos - 7)
        old: Row | None = None
        if marker == 75 or marker == 79:  # 'K' or 'O'
            old, pos = self._tuple(data, pos, count, table)
            if marker == 75:
                old = self._key_row(old, table)
            marker, count = _MARK_COUNT.unpack_from(data, pos)
            pos += 3
        if marker != 78:  # 'N'
            raise DecodeError(f"Update without a new tuple (marker {marker})", position=pos - 3)
        new, pos = self._tuple(data, pos, count, table)
        if pos != len(data):
            self._finish(data, pos, "Update")
        lsn = wal_start or self._last_end
        return [new_update(lsn, xid, table.relation, new, old)]

    def _delete(self, data: bytes, wal_start: LSN) -> list[Event]:
        xid, relid, marker, count, pos = self._row_head(data)
        table = self._tables.get(relid)
        if table is None:
            raise self._unknown_relation(relid, pos - 7)
        if marker != 75 and marker != 79:  # 'K' or 'O'
            raise DecodeError(f"Delete without an old tuple (marker {marker})", position=pos - 3)
        old, pos = self._tuple(data, pos, count, table)
        if marker == 75:
            old = self._key_row(old, table)
        if pos != len(data):
            self._finish(data, pos, "Delete")
        lsn = wal_start or self._last_end
        return [new_delete(lsn, xid, table.relation, old)]

    def _truncate(self, data: bytes, wal_start: LSN) -> list[Event]:
        xid, pos = self._data_xid(data)
        count, flags = _TRUNCATE.unpack_from(data, pos)
        pos += 5
        if len(data) != pos + 4 * count:
            raise DecodeError(
                f"Truncate message for {count} relations has {len(data)} bytes", position=pos
            )
        relids = struct.unpack_from(f">{count}I", data, pos)
        relations = tuple(
            self._table(relid, pos + 4 * i).relation for i, relid in enumerate(relids)
        )
        return [
            Truncate(self._position(wal_start), xid, relations, bool(flags & 1), bool(flags & 2))
        ]

    def _message(self, data: bytes, wal_start: LSN) -> list[Event]:
        xid, pos = self._data_xid(data)
        flags, lsn = _MESSAGE.unpack_from(data, pos)
        prefix, pos = self._string(data, pos + 9)
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + length != len(data):
            raise DecodeError(
                f"Message content of {length} bytes does not fit the message", position=pos
            )
        transactional = bool(flags & 1)
        if transactional:
            position = self._position(wal_start)
        else:
            # A non-transactional message stands alone at its own position.
            position = LSN.from_int(lsn)
            xid = xid if self._in_stream else None
        return [Message(position, xid, prefix, data[pos:], transactional)]

    # -- streamed transactions (protocol 2+) ------------------------------------------------

    def _stream_start(self, data: bytes, wal_start: LSN) -> list[Event]:
        self._check_size(data, 6, "Stream Start")
        xid, first = _STREAM_START.unpack_from(data, 1)
        self._in_stream = True
        self._in_transaction = True
        self._stream_xid = xid
        return [StreamStart(self._position(wal_start), xid, first == 1)]

    def _stream_stop(self, data: bytes, wal_start: LSN) -> list[Event]:
        self._check_size(data, 1, "Stream Stop")
        xid = self._stream_xid
        self._in_stream = False
        self._in_transaction = False
        self._stream_xid = None
        return [StreamStop(self._position(wal_start), xid)]

    def _stream_commit(self, data: bytes, wal_start: LSN) -> list[Event]:
        self._check_size(data, 30, "Stream Commit")
        xid, _flags, commit_lsn, end_lsn, commit_time = _STREAM_COMMIT.unpack_from(data, 1)
        return [
            StreamCommit(self._ended(end_lsn), xid, LSN.from_int(commit_lsn), _time(commit_time))
        ]

    def _stream_abort(self, data: bytes, wal_start: LSN) -> list[Event]:
        # The abort LSN and time follow only with protocol 4 and streaming
        # 'parallel', which this decoder asked for (or not).
        if self._abort_info:
            self._check_size(data, 25, "Stream Abort")
            xid, subxid, abort_lsn, abort_time = _STREAM_ABORT_4.unpack_from(data, 1)
            lsn = LSN.from_int(abort_lsn)
            return [
                StreamAbort(
                    wal_start or lsn,
                    xid,
                    subxid,
                    lsn,
                    _time(abort_time),
                )
            ]
        self._check_size(data, 9, "Stream Abort")
        xid, subxid = _TWO_U32.unpack_from(data, 1)
        return [StreamAbort(self._position(wal_start), xid, subxid, None, None)]

    # -- two-phase commit (protocol 3+) -----------------------------------------------------

    def _begin_prepare(self, data: bytes, wal_start: LSN) -> list[Event]:
        prepare_lsn, end_lsn, prepare_time, xid = _BEGIN_PREPARE.unpack_from(data, 1)
        gid, pos = self._string(data, 29)
        self._finish(data, pos, "Begin Prepare")
        self._xid = xid
        self._in_transaction = True
        return [
            BeginPrepare(
                self._position(wal_start),
                xid,
                LSN.from_int(prepare_lsn),
                LSN.from_int(end_lsn),
                _time(prepare_time),
                gid,
            )
        ]

    def _prepare_fields(self, data: bytes, name: str) -> tuple[int, int, int, int, str]:
        _flags, prepare_lsn, end_lsn, prepare_time, xid = _PREPARE.unpack_from(data, 1)
        gid, pos = self._string(data, 30)
        self._finish(data, pos, name)
        return prepare_lsn, end_lsn, prepare_time, xid, gid

    def _prepare(self, data: bytes, wal_start: LSN) -> list[Event]:
        prepare_lsn, end_lsn, prepare_time, xid, gid = self._prepare_fields(data, "Prepare")
        self._xid = None
        self._in_transaction = False
        return [
            Prepare(self._ended(end_lsn), xid, LSN.from_int(prepare_lsn), _time(prepare_time), gid)
        ]

    def _commit_prepared(self, data: bytes, wal_start: LSN) -> list[Event]:
        commit_lsn, end_lsn, commit_time, xid, gid = self._prepare_fields(data, "Commit Prepared")
        return [
            CommitPrepared(
                self._ended(end_lsn), xid, LSN.from_int(commit_lsn), _time(commit_time), gid
            )
        ]

    def _rollback_prepared(self, data: bytes, wal_start: LSN) -> list[Event]:
        fields = _ROLLBACK_PREPARED.unpack_from(data, 1)
        _flags, prepare_end, rollback_end, prepare_time, rollback_time, xid = fields
        gid, pos = self._string(data, 38)
        self._finish(data, pos, "Rollback Prepared")
        return [
            RollbackPrepared(
                self._ended(rollback_end),
                xid,
                LSN.from_int(prepare_end),
                _time(prepare_time),
                _time(rollback_time),
                gid,
            )
        ]

    def _stream_prepare(self, data: bytes, wal_start: LSN) -> list[Event]:
        prepare_lsn, end_lsn, prepare_time, xid, gid = self._prepare_fields(data, "Stream Prepare")
        return [
            StreamPrepare(
                self._ended(end_lsn), xid, LSN.from_int(prepare_lsn), _time(prepare_time), gid
            )
        ]
