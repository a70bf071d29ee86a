"""Envelopes: the JSON record a sink writes for a change, in replicant's form or Debezium's.

An envelope turns the data events of a stream (row changes, truncates,
logical decoding messages, snapshot reads) into one JSON value each, as
UTF-8 bytes. It is fed *every* event in stream order, because some forms
need the transaction an event belongs to (Debezium's ``source`` block has
the commit time and the transaction id); events that make no record of
their own (``Begin``, ``Commit``, ``Relation``, ...) return ``None``.

- :class:`ReplicantEnvelope` (``"replicant"``): each event's ``to_dict()``,
  exactly what :func:`~replicant.formatting.format_json` prints.
- :class:`DebeziumEnvelope` (``"debezium"``): the value of Debezium's
  PostgreSQL connector change events (JSON converter, schemas disabled):
  ``before``, ``after``, ``source``, ``op`` (``c``/``u``/``d``/``r``/``t``,
  ``m`` for messages), ``ts_ms``, ``transaction``.

:func:`make_envelope` makes one by name. Both are built for speed (a few
microseconds per row event): the parts of a record that repeat (the
``source`` block of a transaction and table) are encoded once and reused.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import time
from typing import Any, Final, Protocol, runtime_checkable

from replicant import __version__, changes, formatting
from replicant.changes import (
    Begin,
    Commit,
    Delete,
    Event,
    Insert,
    Message,
    RawChange,
    Relation,
    Row,
    StreamCommit,
    Truncate,
    Update,
)
from replicant.errors import ConfigurationError, ReplicantError
from replicant.formatting import debezium_record, format_json, json_line, replicant_record
from replicant.lsn import LSN

__all__ = [
    "DEBEZIUM_UNAVAILABLE",
    "DebeziumEnvelope",
    "Envelope",
    "ReplicantEnvelope",
    "envelope_names",
    "make_envelope",
]

# One encoder, made once: json.dumps with keyword arguments builds a new
# encoder on every call, which costs about a microsecond.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode

# The snapshot engine's event for a row read by the initial copy, once it
# exists; until then snapshot reads are written through encode_read().
_READ: Final[type[Any] | None] = getattr(changes, "Read", None)

# The compiled writers of row records (formatting.py; None in pure Python):
# they write what the code below writes, from the rows' values as received.
_replicant_record: Final = replicant_record
_debezium_record: Final = debezium_record

DEBEZIUM_UNAVAILABLE: Final = formatting._DEBEZIUM_UNAVAILABLE
"""What Debezium writes for an unchanged TOASTed value the server did not send
(its ``unavailable.value.placeholder``); the Debezium envelope writes the same."""


@runtime_checkable
class Envelope(Protocol):
    """Turns events into JSON record values; fed every event of a stream, in order."""

    name: str

    def value(self, event: Event) -> bytes | None:
        """The record for a data event (UTF-8 JSON), or None for an event that makes none.

        A :class:`~replicant.changes.Truncate` of several tables makes one
        record per table: use :meth:`truncate_value` for each of its
        relations (``value()`` of a Truncate gives the first table's).
        """

    def truncate_value(self, event: Truncate, relation: Relation) -> bytes:
        """The record for ``relation``'s part of the truncate ``event``."""


class ReplicantEnvelope:
    """replicant's own JSON form: each event's ``to_dict()``, as ``format_json`` writes it."""

    name = "replicant"

    def __repr__(self) -> str:
        return "<ReplicantEnvelope>"

    def value(self, event: Event) -> bytes | None:
        """``format_json(event)`` as bytes for a data event; None for framing and relations."""
        cls = type(event)
        if cls is Insert or cls is Update or cls is Delete:
            if _replicant_record is not None:
                return _replicant_record(event)
            # json_line writes format_json's bytes, and a newline.
            return json_line(event)[:-1]
        if cls is Truncate or cls is Message or cls is RawChange or cls is _READ:
            return format_json(event).encode()
        return None

    def truncate_value(self, event: Truncate, relation: Relation) -> bytes:
        """The whole truncate event (every table it names), for each table's record."""
        return format_json(event).encode()


def _ms(moment: _dt.datetime | None) -> int | None:
    if moment is None:
        return None
    return int(moment.timestamp() * 1000)


def _lsn_int(lsn: int | None) -> str:
    return "null" if lsn is None else str(int(lsn))


class DebeziumEnvelope:
    """Debezium's PostgreSQL change-event value (JSON converter, schemas disabled).

    Every record has ``before``, ``after``, ``source``, ``op``, ``ts_ms``
    and ``transaction`` (always ``null``: Debezium's transaction metadata is
    not written):

    - insert: ``op: "c"``, ``before: null``, ``after`` the new row;
    - update: ``op: "u"``, ``after`` the new row, ``before`` the old row as
      the server sent it: every column under REPLICA IDENTITY FULL, the old
      key columns when the key changed, else ``null`` (as Debezium);
    - delete: ``op: "d"``, ``before`` the old row (its key columns, or every
      column under FULL), ``after: null``;
    - truncate: ``op: "t"``, ``before`` and ``after`` null, one record per table;
    - snapshot read: ``op: "r"``, ``after`` the row, ``source.snapshot: "true"``;
    - logical decoding message: ``op: "m"`` with ``message: {"prefix",
      "content"}`` (``content`` base64), no ``before``/``after``.

    ``source`` has ``version`` (replicant's), ``connector: "postgresql"``,
    ``name`` (``name``, Debezium's ``topic.prefix``), ``ts_ms`` (the commit
    time in ms since the epoch), ``snapshot`` (``"true"`` or ``"false"``),
    ``db`` (``database``), ``sequence`` (``"[last commit LSN, this LSN]"``
    as decimal strings, as Debezium writes it), ``schema``, ``table``,
    ``txId``, ``lsn`` (a number: the WAL position) and ``xmin: null``. The
    top ``ts_ms`` is when the record was made.

    Column values are replicant's lossless JSON forms
    (:func:`~replicant.changes.json_value`), not Debezium's converters:
    numeric as text (Debezium's ``decimal.handling.mode=string``), dates and
    times as ISO 8601 text, bytea as ``{"$base64": ...}``. An unchanged
    TOASTed value is ``"__debezium_unavailable_value"``, as Debezium writes it.
    A plugin replicant does not decode (raw payloads) has no Debezium form:
    :meth:`value` raises :class:`~replicant.errors.ReplicantError`.
    """

    name = "debezium"

    def __init__(self, *, name: str = "replicant", database: str | None = None) -> None:
        self.server_name = name
        self.database = database
        # The fixed head of every source block: "{"version":...,"connector":...,"name":...
        self._head = (
            '{"version":'
            + _encode(__version__)
            + ',"connector":"postgresql","name":'
            + _encode(name)
            + ',"ts_ms":'
        )
        self._db = _encode(database)
        # The current transaction's part of the source block, and what it came from.
        self._xid: int | None = None
        self._commit_ms: int | None = None
        self._last_commit: int | None = None  # the end of the last committed transaction
        self._tx_part = self._transaction_part()
        self._tx_bytes = self._tx_part.encode()  # what the compiled writer takes
        # ',"schema":...,"table":...,"txId":' per (schema, table)
        self._tables: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return f"<DebeziumEnvelope name={self.server_name!r} db={self.database!r}>"

    # -- transaction context

    def _transaction_part(self, snapshot: str = "false") -> str:
        ms = "null" if self._commit_ms is None else str(self._commit_ms)
        last = "null" if self._last_commit is None else '\\"' + str(self._last_commit) + '\\"'
        return (
            self._head
            + ms
            + ',"snapshot":"'
            + snapshot
            + '","db":'
            + self._db
            + ',"sequence":"['
            + last
            + ',\\"'
        )

    def _begin(self, xid: int | None, commit_time: _dt.datetime | None) -> None:
        self._xid = xid
        self._commit_ms = _ms(commit_time)
        self._tx_part = self._transaction_part()
        self._tx_bytes = self._tx_part.encode()

    def _table_part(self, schema: str, table: str) -> str:
        key = (schema, table)
        part = self._tables.get(key)
        if part is None:
            part = self._tables[key] = (
                ',"schema":' + _encode(schema) + ',"table":' + _encode(table) + ',"txId":'
            )
        return part

    def _source(self, lsn: int, xid: int | None, schema: str, table: str) -> str:
        text = str(int(lsn))
        return (
            self._tx_part
            + text
            + '\\"]"'
            + self._table_part(schema, table)
            + ("null" if xid is None else str(xid))
            + ',"lsn":'
            + text
            + ',"xmin":null}'
        )

    # -- records

    def _record(self, before: str, after: str, source: str, op: str) -> bytes:
        return (
            '{"before":'
            + before
            + ',"after":'
            + after
            + ',"source":'
            + source
            + ',"op":"'
            + op
            + '","ts_ms":'
            + str(int(time.time() * 1000))
            + ',"transaction":null}'
        ).encode()

    def value(self, event: Event) -> bytes | None:
        """The Debezium record for a data event; None for framing, relations and origins.

        ``Begin`` and ``StreamCommit`` set the transaction the following
        records belong to; ``Commit`` moves ``sequence``'s last commit.
        """
        cls = type(event)
        if _debezium_record is not None and (cls is Insert or cls is Update or cls is Delete):
            # The whole record at once, compiled; None: the code below writes it.
            xid = self._xid  # self._txid(event), inlined
            made = _debezium_record(
                event,
                self._tx_bytes,
                event.xid if xid is None else xid,
                int(time.time() * 1000),
            )
            if made is not None:
                return made
        if cls is Insert:
            assert isinstance(event, Insert)
            rel = event.relation
            return self._record(
                "null",
                _encode(event.new.to_dict()),
                self._source(event.lsn, self._txid(event), rel.schema, rel.table),
                "c",
            )
        if cls is Update:
            assert isinstance(event, Update)
            rel = event.relation
            old = event.old
            return self._record(
                "null" if old is None else _encode(_unavailable(old)),
                _encode(_unavailable(event.new)),
                self._source(event.lsn, self._txid(event), rel.schema, rel.table),
                "u",
            )
        if cls is Delete:
            assert isinstance(event, Delete)
            rel = event.relation
            return self._record(
                _encode(_unavailable(event.old)),
                "null",
                self._source(event.lsn, self._txid(event), rel.schema, rel.table),
                "d",
            )
        if cls is Begin:
            assert isinstance(event, Begin)
            self._begin(event.xid, event.commit_time)
            return None
        if cls is Commit:
            assert isinstance(event, Commit)
            self._last_commit = int(event.lsn)
            self._begin(None, None)
            return None
        if cls is StreamCommit:
            # A streamed transaction's changes are written at its commit (by
            # the sink), so they belong to the transaction this names.
            assert isinstance(event, StreamCommit)
            self._last_commit = int(event.lsn)
            self._begin(None, None)
            return None
        if cls is Truncate:
            assert isinstance(event, Truncate)
            return self.truncate_value(event, event.relations[0]) if event.relations else None
        if cls is Message:
            assert isinstance(event, Message)
            return self._message(event)
        if _READ is not None and cls is _READ:
            read: Any = event  # the snapshot's row event: relation and new, as an Insert
            return self.encode_read(read.relation, read.new, read.lsn, read.xid)
        if cls is RawChange:
            raise ReplicantError(
                "the debezium envelope needs decoded row events; this plugin's payloads "
                "are raw (use the replicant envelope, or pgoutput or wal2json)"
            )
        return None

    def _txid(self, event: Event) -> int | None:
        # The transaction's id (Begin's): a change in a subtransaction of a
        # streamed transaction carries the subtransaction's.
        xid = self._xid
        return event.xid if xid is None else xid

    def begin_transaction(self, xid: int | None, commit_time: _dt.datetime | None) -> None:
        """Make the following records belong to transaction ``xid`` committed at ``commit_time``.

        For a sink that writes a streamed transaction's changes at its
        commit (the events' own ``Begin`` came before they were written).
        """
        self._begin(xid, commit_time)

    def truncate_value(self, event: Truncate, relation: Relation) -> bytes:
        """The ``op: "t"`` record for ``relation``, one of the tables ``event`` truncated."""
        return self._record(
            "null",
            "null",
            self._source(event.lsn, self._txid(event), relation.schema, relation.table),
            "t",
        )

    def encode_read(self, relation: Relation, row: Row, lsn: int, xid: int | None) -> bytes:
        """The ``op: "r"`` record of a row copied by a snapshot (``source.snapshot: "true"``).

        ``lsn`` is the position the snapshot is consistent with.
        """
        if _debezium_record is not None and type(lsn) is LSN:
            made = _debezium_record(
                changes.new_insert(lsn, xid, relation, row),
                self._transaction_part("true").encode(),
                xid,
                int(time.time() * 1000),
                True,
            )
            if made is not None:
                return made
        tx_part = self._tx_part
        self._tx_part = self._transaction_part("true")
        try:
            source = self._source(lsn, xid, relation.schema, relation.table)
        finally:
            self._tx_part = tx_part
        return self._record("null", _encode(row.to_dict()), source, "r")

    def _message(self, event: Message) -> bytes:
        xid = self._txid(event) if event.transactional else event.xid
        source = self._source(event.lsn, xid, "", "")
        content = base64.b64encode(event.content).decode("ascii")
        return (
            '{"op":"m","ts_ms":'
            + str(int(time.time() * 1000))
            + ',"source":'
            + source
            + ',"message":{"prefix":'
            + _encode(event.prefix)
            + ',"content":"'
            + content
            + '"}}'
        ).encode()


def _unavailable(row: Row) -> dict[str, Any]:
    """``row.to_dict()`` with Debezium's placeholder for unchanged TOASTed values."""
    return formatting._row_dict(row, True)


_ENVELOPES: Final = {"replicant": ReplicantEnvelope, "debezium": DebeziumEnvelope}


def envelope_names() -> tuple[str, ...]:
    """The names :func:`make_envelope` knows."""
    return tuple(_ENVELOPES)


def make_envelope(kind: str, /, **options: Any) -> ReplicantEnvelope | DebeziumEnvelope:
    """The envelope called ``kind`` (``"replicant"`` or ``"debezium"``), made with ``options``.

    ``debezium`` takes ``name`` (Debezium's ``topic.prefix``, written as
    ``source.name``) and ``database`` (``source.db``); ``replicant`` takes none.
    """
    cls = _ENVELOPES.get(kind)
    if cls is None:
        raise ConfigurationError(
            f"unknown envelope {kind!r}: choose one of {', '.join(sorted(_ENVELOPES))}"
        )
    try:
        made: ReplicantEnvelope | DebeziumEnvelope = cls(**options)
    except TypeError as error:
        raise ConfigurationError(f"the {kind} envelope: {error}") from None
    return made
