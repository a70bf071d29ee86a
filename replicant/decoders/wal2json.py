"""wal2json, format-version 1 (a JSON document per transaction) and 2 (one per action).

Both formats give the same event classes, with values typed the same way, as
:mod:`replicant.decoders.pgoutput` gives for the same changes, so a callback
does not care which plugin feeds it. The decoder asks wal2json for what it
needs to get there (``include-xids``, ``include-timestamp``,
``include-type-oids``, ``include-pk``, ``include-lsn``; format 2 also
``include-transaction``); options passed by the user override these.

What wal2json does not say, and how the decoder fills the gap:

* It has no relation messages. A row event's ``relation`` is built from the
  columns the row carries (type modifiers unknown: -1; ``relid`` 0;
  ``replica_identity`` ``"unknown"``), and no :class:`Relation` event is
  produced. Key flags are the primary key's columns, or the columns the
  server sent as the old row's identity once one has been seen.
* It leaves out a column whose value is an unchanged TOASTed datum: such a
  column is simply absent from the Update's new row (``"col" in row`` is
  false). The decoder does not fill it in from an earlier row of the table:
  the table may have changed since (a dropped column, a new type), and a
  row never carries a column the server did not send, nor a type it did
  not send with it. A row event's ``relation`` has the columns of its own
  row.
* It always gives an Update's old identity, computed from the new row when
  the server logged none. The decoder reports ``old=None`` when the identity
  equals the new row's values, as pgoutput does when no old row was logged.
* Format 1 leaves NULL columns out of an old identity row; for an Update of
  a table whose identity is not its primary key (REPLICA IDENTITY FULL) the
  decoder puts them back as ``None`` from the same change's new row. A
  Delete has no new row: its old row lacks them.
* Format 1 carries no position per change: events inside a transaction get
  the end of the previous transaction this decoder saw (see
  :mod:`replicant.changes` on why that is safe to acknowledge). Format 1
  does not report TRUNCATE; format 2 reports one record per table, which the
  decoder merges back into one :class:`Truncate` per statement (emitted with
  the next record). Neither reports its CASCADE/RESTART IDENTITY flags, nor
  replication origins, nor streamed or two-phase transactions.
* wal2json 2.5 (format 1) writes a stray comma before a non-transactional
  message that arrives while a transaction with changes is decoded; the
  decoder drops it.
* wal2json writes a message's content as a C string: it ends at the first
  NUL byte, so binary content does not survive.
* wal2json writes NaN and infinite ``float4``, ``float8`` and ``numeric``
  values as JSON ``null`` (2.5), exactly as it writes SQL NULL: nothing in
  its output tells them apart, so such a value reads as ``None``. With
  wal2json 2.6 or later, pass ``numeric-data-types-as-string='1'`` in
  ``options``: numbers then come as strings and NaN and infinities are read
  exactly.
* Values Python's types cannot hold (BC dates, year 10000, huge intervals)
  read as :class:`~replicant.values.PgValue`, as with pgoutput;
  ``strict_values=True`` makes them raise DecodeError.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from replicant import _accel
from replicant import values as _values
from replicant.changes import (
    Begin,
    Column,
    Commit,
    Event,
    Message,
    Relation,
    Row,
    RowLayout,
    Truncate,
    new_begin,
    new_commit,
    new_delete,
    new_insert,
    new_update,
)
from replicant.errors import ConfigurationError, DecodeError
from replicant.lsn import LSN

__all__ = ["Wal2JsonDecoder"]

_Json = dict[str, Any]


def _keep(value: Any) -> Any:
    return value


def _bool(value: Any) -> Any:
    # wal2json writes booleans as JSON true/false; accept text too.
    if value is True or value is False:
        return value
    return _values.text_reader(_values.OID.BOOL)(value)


def _converter(type_oid: int, strict: bool = False) -> _values.Converter:
    """The reader for a wal2json value of ``type_oid`` (text, or a JSON bool)."""
    if type_oid == _values.OID.BOOL:
        return _bool
    if type_oid == _values.OID.BYTEA:
        # wal2json writes bytea as its hex digits without the leading "\x".
        return bytes.fromhex
    return _values.text_reader(type_oid, from_str=True, strict=strict)


def _json_form(type_oid: int) -> _values.JsonForm | None:
    """The JSON form of a wal2json value of ``type_oid`` (see values.text_json)."""
    if type_oid in (_values.OID.BOOL, _values.OID.BYTEA):
        return None
    return _values.text_json(type_oid)


def _lsn(text: Any) -> LSN:
    if not isinstance(text, str):
        raise DecodeError(f"wal2json LSN is not a string: {text!r}")
    try:
        return LSN.parse(text)
    except ValueError as exc:
        raise DecodeError(f"wal2json sent a malformed LSN {text!r}") from exc


def _int(value: Any, what: str) -> int:
    # Numbers are parsed as text by the standard library (see _loads), as
    # int by msgspec; the few integer fields are converted here.
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise DecodeError(f"wal2json {what} is not an integer: {value!r}")


_KINDS: dict[str, str] = {"I": "insert", "U": "update", "D": "delete"}

_STRAY_COMMA = re.compile(rb'(\{\s*"change":\s*\[)\s*,')

# Numbers are kept as their text so numeric values keep every digit; the
# column's type decides what they become.
_PARSE = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str).raw_decode


def _fast_parser() -> Callable[[bytes], Any] | None:
    """msgspec's parser keeping fractions and exponents as text, if installed and compiled.

    Integers come as int (made text again for values: see _values_of);
    ``-0`` would too, losing its sign, so documents holding one go the
    standard library's way. Pure-Python mode uses the standard library.
    """
    if _accel.compiled is None:
        return None
    try:
        import msgspec
    except ImportError:
        return None
    decode: Callable[[bytes], Any] = msgspec.json.Decoder(float_hook=str).decode
    return decode


_FAST_PARSE = _fast_parser()


def _record_fields_python(data: bytes) -> tuple[Any, ...] | None:
    """The fields of a format 2 Begin, Commit, Insert, Update or Delete record, or None.

    The reference of ``_speedups.w2j_record``, which the fast path uses
    when compiled (pure Python takes the reference path itself, which this
    only wraps). Read from the reference path's parse (the standard
    library's, or msgspec's where it parses the same), the fields give the
    decoder exactly what the reference path gives. A tuple ``(action, xid,
    lsn, nextlsn, timestamp, schema, table, new, old, pk)``: ``xid`` an int
    or None (absent or null); ``lsn`` and ``nextlsn`` the position as an
    int, or None when absent; ``timestamp`` a str or None; ``schema`` a str
    ("" when absent), ``table`` a str or None when absent; ``new`` and
    ``old`` (``columns``, ``identity``) a tuple (names, type OIDs, values)
    or None when absent; ``pk`` a tuple of names or None when absent.

    None for anything else: messages and truncates, malformed JSON, fields
    of the wrong type; the reference path then decodes the record (and says
    what is wrong). The compiled twin may give None where this gives
    fields (it does not read escaped keys, lone surrogates, NaN, duplicate
    keys, ...), never other fields.
    """
    try:
        record = _loads_fast(data)  # what the reference path reads
    except DecodeError:
        return None
    if not isinstance(record, dict):
        return None
    action = record.get("action")
    if not isinstance(action, str) or action not in _FAST_ACTIONS:
        return None
    try:
        xid = record.get("xid")
        if xid is not None:
            xid = _int(xid, "xid")
        lsn = _plain_lsn(record, "lsn")
        nextlsn = _plain_lsn(record, "nextlsn")
        timestamp = record.get("timestamp")
        if timestamp is not None:
            timestamp = _str(timestamp, "timestamp")
        schema = _str(record.get("schema", ""), "schema")
        table = _str(record["table"], "table") if "table" in record else None
        new = _fields_of_columns(record["columns"]) if "columns" in record else None
        old = _fields_of_columns(record["identity"]) if "identity" in record else None
        pk = None
        if "pk" in record:
            pk = tuple(_str(_obj(c, "pk")["name"], "pk name") for c in _list(record["pk"], "pk"))
    except (DecodeError, KeyError):
        return None
    return (action, xid, lsn, nextlsn, timestamp, schema, table, new, old, pk)


_FAST_ACTIONS = ("B", "C", "I", "U", "D")


def _plain_lsn(record: _Json, key: str) -> int | None:
    if key not in record:
        return None
    return int(_lsn(record[key]))


def _fields_of_columns(items: Any) -> tuple[tuple[str, ...], tuple[int, ...], list[Any]]:
    names: list[str] = []
    oids: list[int] = []
    values: list[Any] = []
    for c in _list(items, "columns"):
        column = _obj(c, "column")
        names.append(_str(column["name"], "column name"))
        oids.append(_int(column.get("typeoid", "0"), "type OID"))
        value = column.get("value")
        if type(value) is int:
            value = str(value)  # msgspec's integer as the standard library's text
        if not (value is None or isinstance(value, (str, bool))):
            raise DecodeError("an object or a list as a value")  # the reference's to read
        values.append(value)
    return tuple(names), tuple(oids), values


def _choose_record_fields() -> Callable[[bytes], tuple[Any, ...] | None] | None:
    """The compiled reader when built, else None: the reference path is then the faster."""
    native = _accel.compiled
    if native is not None and hasattr(native, "w2j_record"):
        fields: Callable[[bytes], tuple[Any, ...] | None] = native.w2j_record
        return fields
    return None


_record_fields = _choose_record_fields()
# A number -0 (float8out writes one for negative zero): before a separator.
_NEGATIVE_ZERO = re.compile(rb"-0[\s,\]}]")
_new_lsn = int.__new__  # an LSN of an int already known to be in range


def _values_of(items: list[Any]) -> list[Any]:
    """Column values as the standard library parses them: integers as their text."""
    for value in items:
        if type(value) is int:
            return [str(v) if type(v) is int else v for v in items]
    return items


def _loads_fast(document: bytes) -> Any:
    """What _loads gives, with msgspec where it parses the same; the rest as _loads does."""
    if _FAST_PARSE is not None and not _NEGATIVE_ZERO.search(document):
        try:
            return _FAST_PARSE(document)
        except Exception:  # msgspec's errors: the standard library decides what is wrong
            pass
    return _loads(document)


def _loads(document: bytes) -> Any:
    try:
        text = document.decode()
        value, end = _PARSE(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"wal2json payload is not JSON: {exc}") from exc
    if end != len(text) and text[end:].strip():
        raise DecodeError("wal2json payload has data after its JSON document", position=end)
    return value


def _obj(value: Any, what: str) -> _Json:
    if not isinstance(value, dict):
        raise DecodeError(f"wal2json {what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise DecodeError(f"wal2json {what} is not a list")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"wal2json {what} is not a string: {value!r}")
    return value


class _Table:
    """What the decoder learned about one table from the rows it has seen."""

    __slots__ = ("fast", "identity", "last", "layouts", "pk", "relation", "relation_shape")

    def __init__(self) -> None:
        # The names and OIDs lists of the last row read, and its layout: rows
        # of one table usually look alike, and comparing two lists is cheap.
        self.last: tuple[list[Any], list[Any], RowLayout] | None = None
        self.pk: tuple[str, ...] | None = None
        self.identity: tuple[str, ...] | None = None
        self.relation: Relation | None = None
        self.relation_shape: tuple[Any, ...] = ()
        self.layouts: dict[tuple[tuple[str, ...], tuple[int, ...]], RowLayout] = {}
        # The fast path's last insert: the names, OIDs and key tuples it was
        # for, their layout and relation (checked by identity, see _fast_record).
        self.fast: tuple[Any, Any, tuple[str, ...], RowLayout, Relation] | None = None


class Wal2JsonDecoder:
    """Decodes wal2json payloads (format-version 1 or 2) into events.

    ``options`` are wal2json's own (``add-tables``, ``filter-msg-prefixes``,
    ``include-typmod``, ...); they are passed through and override the
    defaults this decoder sets. ``decode_values=False`` gives rows whose
    values stay as wal2json wrote them (text, or ``bool``);
    ``strict_values=True`` makes a value Python's type cannot hold raise
    DecodeError when read instead of giving a
    :class:`~replicant.values.PgValue`.
    """

    plugin = "wal2json"

    def __init__(
        self,
        *,
        format_version: int = 2,
        options: Mapping[str, str] | None = None,
        decode_values: bool = True,
        strict_values: bool = False,
    ) -> None:
        options = dict(options or {})
        if "format-version" in options:
            try:
                format_version = int(options.pop("format-version"))
            except ValueError as exc:
                raise ConfigurationError("wal2json format-version must be 1 or 2") from exc
        if format_version not in (1, 2):
            raise ConfigurationError(
                f"wal2json format-version must be 1 or 2, not {format_version}"
            )
        if options.get("write-in-chunks", "0").lower() in ("1", "t", "true", "on", "yes", "y"):
            raise ConfigurationError(
                "wal2json write-in-chunks splits documents across messages; it is not supported"
            )
        self.format_version = format_version
        self.extra_options = options
        self.decode_values = decode_values
        self.strict_values = strict_values
        # Compiled, format 2 Begin, Commit and row records go the fast way
        # (their fields read in one call); the reference path takes the rest.
        self._fields: Callable[[bytes], tuple[Any, ...] | None] | None = (
            _record_fields if format_version == 2 else None
        )
        self.reset()

    # -- Decoder interface --------------------------------------------------------------------

    def start_options(self, server_version: int) -> dict[str, str]:
        """START_REPLICATION options: format, the metadata the decoder needs, the user's."""
        options = {
            "format-version": str(self.format_version),
            "include-xids": "1",
            "include-timestamp": "1",
            "include-type-oids": "1",
            "include-pk": "1",
            "include-lsn": "1",
        }
        if self.format_version == 2:
            options["include-transaction"] = "1"
        options.update(self.extra_options)
        return options

    def reset(self) -> None:
        """Forget what was learned about tables and any open transaction."""
        self._tables: dict[tuple[str, str], _Table] = {}
        self._in_transaction = False
        self._xid: int | None = None
        self._last_end = LSN.from_int(0)
        self._truncate: list[Any] = []  # format 2: [lsn, xid, relations...] being merged
        # Format 2 dispatches on the record's action, as pgoutput does on the message byte.
        self._actions: dict[Any, Callable[[_Json, int], Event | None]] = {
            "B": self._begin_v2,
            "C": self._commit_v2,
            "I": self._change_v2,
            "U": self._change_v2,
            "D": self._change_v2,
            "T": self._add_truncate,
            "M": self._message_v2,
        }

    @property
    def in_transaction(self) -> bool:
        """True between a transaction's Begin and Commit records (format 2).

        A format 1 document holds a whole transaction, so between two
        payloads no transaction is open.
        """
        return self._in_transaction

    def decode(self, data: bytes, wal_start: int, wal_end: int) -> list[Event]:
        """Decode one wal2json payload. Raises DecodeError for anything malformed."""
        if self._fields is not None and not self._truncate:
            fields = self._fields(data)
            if fields is not None:
                events = self._fast_record(fields, wal_start)
                if events is not None:
                    return events
        if self.format_version == 1 and _STRAY_COMMA.match(data):
            # wal2json (2.5) puts a comma before a non-transactional message
            # written while a transaction with changes is being decoded.
            data = _STRAY_COMMA.sub(rb"\1", data, count=1)
        document = _obj(_loads_fast(data), "document")
        try:
            if self.format_version == 1:
                return self._document(document, wal_start)
            return self._record(document, wal_start)
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DecodeError(f"malformed wal2json document: {exc!r}") from exc

    # -- shared ------------------------------------------------------------------------------------

    def _table(self, schema: str, table: str) -> _Table:
        state = self._tables.get((schema, table))
        if state is None:
            state = self._tables[(schema, table)] = _Table()
        return state

    def _relation(
        self, state: _Table, schema: str, table: str, names: tuple[str, ...], oids: tuple[int, ...]
    ) -> Relation:
        key = state.identity if state.identity is not None else (state.pk or ())
        relation = state.relation
        if relation is not None and state.relation_shape == (names, oids, key):
            return relation
        columns = tuple(
            Column(name, oid, -1, name in key) for name, oid in zip(names, oids, strict=True)
        )
        relation = Relation(self._last_end, self._xid, 0, schema, table, columns, "unknown")
        state.relation = relation
        state.relation_shape = (names, oids, key)
        return relation

    def _layout(self, state: _Table, names: tuple[str, ...], oids: tuple[int, ...]) -> RowLayout:
        layout = state.layouts.get((names, oids))
        if layout is None:
            forms: list[_values.JsonForm | None] | None = None
            if self.decode_values:
                converters = [_converter(oid, self.strict_values) for oid in oids]
                forms = [_json_form(oid) for oid in oids]
            else:
                converters = [_keep] * len(oids)
            layout = RowLayout(names, oids, converters, forms)
            if len(state.layouts) > 64:  # a table whose shape keeps changing: start over
                state.layouts.clear()
            state.layouts[(names, oids)] = layout
        return layout

    def _row(self, state: _Table, names: list[Any], oids: list[Any], values: list[Any]) -> Row:
        last = state.last
        if last is not None and names == last[0] and oids == last[1]:
            layout = last[2]
        else:
            name_tuple = tuple(_str(n, "column name") for n in names)
            oid_tuple = tuple(_int(o, "type OID") for o in oids)
            layout = self._layout(state, name_tuple, oid_tuple)
            state.last = (names, oids, layout)
        if len(values) != len(layout.names):
            raise DecodeError("wal2json column names, types and values differ in number")
        return Row(layout, values)

    def _with_nulls(self, state: _Table, old: Row, new: Row) -> Row:
        """``old`` widened to ``new``'s columns (same change, so same schema), absent ones NULL."""
        present = old._layout.index
        names = new.columns
        if len(present) >= len(names) or not all(n in new for n in present):
            return old
        oids = tuple(new._layout.type_oids)
        raw = [old._raw[present[n]] if n in present else None for n in names]
        return Row(self._layout(state, names, oids), raw)

    def _event_for(
        self,
        kind: str,
        lsn: LSN,
        xid: int | None,
        schema: str,
        table: str,
        new: tuple[list[Any], list[Any], list[Any]] | None,
        old: tuple[list[Any], list[Any], list[Any]] | None,
        pk: list[str] | None,
    ) -> Event:
        state = self._table(schema, table)
        if pk is not None:
            state.pk = tuple(pk)
        new_row = self._row(state, *new) if new is not None else None
        old_row = self._row(state, *old) if old is not None else None
        return self._event_of(kind, lsn, xid, state, schema, table, new_row, old_row)

    def _event_of(
        self,
        kind: str,
        lsn: LSN,
        xid: int | None,
        state: _Table,
        schema: str,
        table: str,
        new_row: Row | None,
        old_row: Row | None,
    ) -> Event:
        if kind == "insert":
            if new_row is None:
                raise DecodeError("wal2json insert without columns")
            relation = self._relation(
                state, schema, table, new_row.columns, new_row._layout.type_oids
            )
            return new_insert(lsn, xid, relation, new_row)
        if old_row is not None:
            old_row = self._identity(state, old_row, new_row)
        if kind == "update":
            if new_row is None:
                raise DecodeError("wal2json update without columns")
            if old_row is not None and all(
                n in new_row and new_row.raw(n) == old_row.raw(n) for n in old_row.columns
            ):
                old_row = None  # the server logged no old row; wal2json used the new one
            relation = self._relation(
                state, schema, table, new_row.columns, new_row._layout.type_oids
            )
            return new_update(lsn, xid, relation, new_row, old_row)
        if kind == "delete":
            if old_row is None:
                raise DecodeError("wal2json delete without an old identity")
            relation = self._relation(
                state, schema, table, old_row.columns, old_row._layout.type_oids
            )
            return new_delete(lsn, xid, relation, old_row)
        raise DecodeError(f"unknown wal2json change kind {kind!r}")

    def _identity(self, state: _Table, old: Row, new: Row | None) -> Row:
        """Learn the identity columns from an old row; put back left-out NULLs (format 1)."""
        names = old.columns
        pk = state.pk or ()
        if state.pk is None or any(n not in pk for n in names):
            # Not (only) the primary key: REPLICA IDENTITY FULL (or an index).
            if self.format_version == 1 and new is not None:
                old = self._with_nulls(state, old, new)
            state.identity = old.columns
        elif names == pk:
            state.identity = None
        return old

    @staticmethod
    def _time(value: Any) -> _dt.datetime | None:
        if value is None:
            return None
        result = _values.decode_text(_values.OID.TIMESTAMPTZ, _str(value, "timestamp"))
        return result if isinstance(result, _dt.datetime) else None

    def _xid_of(self, obj: _Json) -> int | None:
        xid = obj.get("xid")
        return None if xid is None else _int(xid, "xid")

    def _message(self, change: _Json, lsn: LSN, xid: int | None) -> Message:
        content = _str(change["content"], "message content")
        transactional = change.get("transactional") is True
        return Message(
            lsn,
            xid if transactional else None,
            _str(change["prefix"], "message prefix"),
            content.encode(),
            transactional,
        )

    # -- format 1 ----------------------------------------------------------------------------------

    def _document(self, document: _Json, wal_start: int) -> list[Event]:
        changes = _list(document.get("change", []), "change list")
        if "nextlsn" not in document:
            # Not a transaction: non-transactional messages come alone.
            lsn = LSN.from_int(wal_start) if wal_start else self._last_end
            return [self._change_v1(_obj(c, "change"), lsn, None) for c in changes]
        end = _lsn(document["nextlsn"])
        xid = self._xid_of(document)
        when = self._time(document.get("timestamp"))
        position = self._last_end
        self._xid = xid
        events: list[Event] = [Begin(position, xid, None, when)]
        for change in changes:
            events.append(self._change_v1(_obj(change, "change"), position, xid))
        if end > self._last_end:
            self._last_end = end
        self._xid = None
        events.append(Commit(end, xid, None, when))
        return events

    def _change_v1(self, change: _Json, lsn: LSN, xid: int | None) -> Event:
        kind = change.get("kind")
        if kind == "message":
            return self._message(change, lsn, xid)
        schema = _str(change.get("schema", ""), "schema")
        table = _str(change["table"], "table")
        new = None
        if "columnnames" in change:
            new = (
                _list(change["columnnames"], "columnnames"),
                _list(change.get("columntypeoids", []), "columntypeoids"),
                _values_of(_list(change["columnvalues"], "columnvalues")),
            )
            if not new[1]:
                new = (new[0], [0] * len(new[0]), new[2])
        old = None
        if "oldkeys" in change:
            keys = _obj(change["oldkeys"], "oldkeys")
            old = (
                _list(keys["keynames"], "keynames"),
                _list(keys.get("keytypeoids", []), "keytypeoids"),
                _values_of(_list(keys["keyvalues"], "keyvalues")),
            )
            if not old[1]:
                old = (old[0], [0] * len(old[0]), old[2])
        pk = None
        if "pk" in change:
            pk = [_str(n, "pk name") for n in _list(_obj(change["pk"], "pk")["pknames"], "pknames")]
        elif "columnnames" in change or self._table(schema, table).pk is not None:
            # include-pk leaves "pk" out for a table without a primary key.
            pk = []
        return self._event_for(_str(kind, "kind"), lsn, xid, schema, table, new, old, pk)

    # -- format 2 ----------------------------------------------------------------------------------

    def _record(self, record: _Json, wal_start: int) -> list[Event]:
        action = record.get("action")
        events: list[Event] | None = None
        if self._truncate and (action != "T" or record.get("lsn") != self._truncate[0]):
            events = [self._flush_truncate()]
        try:
            handler = self._actions[action]
        except (KeyError, TypeError):  # TypeError: an unhashable action
            raise DecodeError(f"unknown wal2json action {action!r}") from None
        event = handler(record, wal_start)
        if events is None:
            return [] if event is None else [event]
        if event is not None:
            events.append(event)
        return events

    def _begin_v2(self, record: _Json, wal_start: int) -> Event:
        xid = self._xid_of(record)
        self._xid = xid
        self._in_transaction = True
        final = record.get("lsn")
        position = LSN.from_int(wal_start) if wal_start else self._last_end
        return Begin(
            position,
            xid,
            _lsn(final) if final is not None else None,
            self._time(record.get("timestamp")),
        )

    def _commit_v2(self, record: _Json, wal_start: int) -> Event:
        xid = self._xid_of(record)
        end = record.get("nextlsn")
        commit = record.get("lsn")
        lsn = _lsn(end) if end is not None else LSN.from_int(wal_start)
        if lsn > self._last_end:
            self._last_end = lsn
        self._xid = None
        self._in_transaction = False
        return Commit(
            lsn,
            xid,
            _lsn(commit) if commit is not None else None,
            self._time(record.get("timestamp")),
        )

    def _change_v2(self, record: _Json, wal_start: int) -> Event:
        return self._row_v2(record, record["action"], wal_start)

    def _message_v2(self, record: _Json, wal_start: int) -> Event:
        lsn = _lsn(record["lsn"]) if "lsn" in record else self._change_lsn(wal_start)
        return self._message(record, lsn, self._xid_of(record))

    def _change_lsn(self, wal_start: int) -> LSN:
        return LSN.from_int(wal_start) if wal_start else self._last_end

    @staticmethod
    def _columns(items: Any, what: str) -> tuple[list[Any], list[Any], list[Any]]:
        # A non-list or a non-object item raises TypeError, reported by decode().
        columns = _list(items, what)
        names: list[Any] = []
        oids: list[Any] = []
        values: list[Any] = []
        add_name, add_oid, add_value = names.append, oids.append, values.append
        for c in columns:
            add_name(c["name"])
            add_oid(c.get("typeoid", "0"))
            value = c.get("value")
            # msgspec's integers as the standard library's text (see _values_of)
            add_value(str(value) if type(value) is int else value)
        return names, oids, values

    def _row_v2(self, record: _Json, action: str, wal_start: int) -> Event:
        lsn = _lsn(record["lsn"]) if "lsn" in record else self._change_lsn(wal_start)
        new = self._columns(record["columns"], "columns") if "columns" in record else None
        old = self._columns(record["identity"], "identity") if "identity" in record else None
        pk = None
        if "pk" in record:
            pk = [_str(_obj(c, "pk")["name"], "pk name") for c in _list(record["pk"], "pk")]
        kind = _KINDS[action]
        schema = _str(record.get("schema", ""), "schema")
        table = _str(record["table"], "table")
        return self._event_for(kind, lsn, self._xid_of(record), schema, table, new, old, pk)

    # -- format 2, fast: records parsed into structs ----------------------------------------------

    def _fast_record(self, fields: tuple[Any, ...], wal_start: int) -> list[Event] | None:
        """The events of a record read by _record_fields: what the reference path gives.

        None, before changing anything, for a row record without a table
        (the reference path says what is wrong).
        """
        action, xid, lsn, nextlsn, timestamp, schema, table, new, old, pk = fields
        if action == "B":
            # The reference's order: state first, then the timestamp (which may raise).
            self._xid = xid
            self._in_transaction = True
            position = LSN.from_int(wal_start) if wal_start else self._last_end
            final = None if lsn is None else _new_lsn(LSN, lsn)
            return [new_begin(position, xid, final, self._time(timestamp))]
        if action == "C":
            end = LSN.from_int(wal_start) if nextlsn is None else _new_lsn(LSN, nextlsn)
            if end > self._last_end:
                self._last_end = end
            self._xid = None
            self._in_transaction = False
            commit = None if lsn is None else _new_lsn(LSN, lsn)
            return [new_commit(end, xid, commit, self._time(timestamp))]
        if table is None:
            return None
        position = self._change_lsn(wal_start) if lsn is None else _new_lsn(LSN, lsn)
        state = self._tables.get((schema, table))
        if state is None:
            state = self._tables[(schema, table)] = _Table()
        if pk is not None and pk != state.pk:
            state.pk = pk  # kept when equal: the relation cache compares by identity
        if action == "I":
            if new is None:
                raise DecodeError("wal2json insert without columns")
            names, oids, values = new
            key = state.identity if state.identity is not None else (state.pk or ())
            fast = state.fast
            relation = state.relation
            # Rows of one table come alike: the compiled reader then gives the same
            # name and OID tuples, and the layout and relation made for them hold.
            if (
                fast is None
                or fast[0] is not names
                or fast[1] is not oids
                or fast[2] is not key
                or fast[4] is not relation
            ):
                layout = self._fast_row(state, new)._layout
                relation = self._relation(state, schema, table, layout.names, layout.type_oids)
                fast = state.fast = (names, oids, key, layout, relation)
            return [new_insert(position, xid, fast[4], Row(fast[3], values))]
        new_row = None if new is None else self._fast_row(state, new)
        old_row = None if old is None else self._fast_row(state, old)
        kind = "update" if action == "U" else "delete"
        return [self._event_of(kind, position, xid, state, schema, table, new_row, old_row)]

    def _fast_row(self, state: _Table, columns: tuple[Any, Any, list[Any]]) -> Row:
        """The Row of (names, type OIDs, values), as _row makes it from lists."""
        names, oids, values = columns
        last = state.last
        if last is not None and names == last[0] and oids == last[1]:
            return Row(last[2], values)
        layout = self._layout(state, names, oids)
        state.last = (names, oids, layout)
        return Row(layout, values)

    def _add_truncate(self, record: _Json, wal_start: int) -> None:
        schema = _str(record.get("schema", ""), "schema")
        table = _str(record["table"], "table")
        state = self._table(schema, table)
        if state.relation is not None:
            relation = state.relation
        else:
            relation = Relation(self._last_end, self._xid, 0, schema, table, (), "unknown")
        if not self._truncate:
            lsn = record.get("lsn")
            self._truncate = [lsn, self._xid_of(record), wal_start]
        self._truncate.append(relation)

    def _flush_truncate(self) -> Truncate:
        lsn_text, xid, wal_start, *relations = self._truncate
        self._truncate = []
        lsn = _lsn(lsn_text) if lsn_text is not None else self._change_lsn(wal_start)
        return Truncate(lsn, xid, tuple(relations), False, False)
