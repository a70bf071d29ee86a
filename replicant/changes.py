"""The events a decoder produces and a callback receives.

Every event is a frozen, slotted dataclass with at least:

``lsn``
    The position to acknowledge once the event has been processed (return it
    from the callback). How it is chosen:

    * Transaction ends (:class:`Commit`, :class:`StreamCommit`,
      :class:`Prepare`, :class:`StreamPrepare`, :class:`CommitPrepared`,
      :class:`RollbackPrepared`) carry the *end* of the transaction's last
      WAL record. Acknowledging it tells the server the whole transaction is
      done: after a restart it is not sent again.
    * Everything inside a transaction (:class:`Begin`, row events,
      :class:`Message`, :class:`Relation`, :class:`Origin`, stream
      boundaries) carries a position *at or before the transaction's commit
      record*: the WAL position of the change itself when the plugin reports
      it (pgoutput and wal2json format 2 do), otherwise the end of the last
      transaction this decoder finished (wal2json format 1 reports no
      position per change). The server re-sends every transaction whose
      commit record lies at or after the acknowledged position, so
      acknowledging a change in the middle of a transaction never makes a
      restart skip the rest of it: the whole transaction comes again
      (at-least-once delivery).
    * A non-transactional :class:`Message` carries its own position.

``xid``
    The transaction id, where the plugin gives it (``None`` otherwise). In a
    streamed transaction (pgoutput 2+) a data event's ``xid`` is the id of the
    (sub)transaction that made the change, as the server sends it; a
    :class:`StreamAbort` names the subtransaction whose changes to discard.

Row events (:class:`Insert`, :class:`Update`, :class:`Delete`) also have
``schema``, ``table``, ``relation``, ``new``/``old`` rows and ``key``.
Rows are read-only mappings from column name to value (:class:`Row`); values
are converted lazily, on first access. An unchanged TOASTed value (a large
value the change did not touch, which the server does not send) reads as
:data:`UNCHANGED`, never ``None``.

``to_dict()`` gives a JSON-serialisable ``dict`` (see :func:`json_value` for
how values are represented) and ``repr()`` a readable one-line summary.
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, final

from replicant import _accel
from replicant import values as _values
from replicant.errors import DecodeError
from replicant.lsn import LSN
from replicant.values import JsonForm

__all__ = [
    "UNCHANGED",
    "Begin",
    "BeginPrepare",
    "Column",
    "Commit",
    "CommitPrepared",
    "Delete",
    "Event",
    "Insert",
    "Message",
    "Origin",
    "Prepare",
    "RawChange",
    "Read",
    "Relation",
    "RollbackPrepared",
    "Row",
    "SnapshotBegin",
    "SnapshotEnd",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Update",
    "json_value",
]


@final
class _Unchanged:
    """The type of :data:`UNCHANGED`; there is exactly one instance."""

    __slots__ = ()
    _instance: ClassVar[_Unchanged | None] = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"

    def __copy__(self) -> _Unchanged:
        return self

    def __deepcopy__(self, memo: object) -> _Unchanged:
        return self


UNCHANGED: Final = _Unchanged()
"""An unchanged TOASTed value: the server did not send it because the change
left it alone. Distinct from ``None`` (SQL NULL)."""

_PENDING: Final = object()  # a cached value not computed yet

Converter = Callable[[Any], Any]


# --- columns and rows --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a relation as the server described it."""

    name: str
    type_oid: int
    type_modifier: int
    key: bool
    """Part of the replica identity (for REPLICA IDENTITY FULL: every column)."""


class RowLayout:
    """The shape rows of one relation share: names, their index, converters.

    Built once per relation description by a decoder (one layout per value
    representation); not part of the public API. ``convert`` holds one
    converter per column; it may raise any exception for malformed input,
    which the row reports as DecodeError.
    """

    __slots__ = ("_json_plan", "convert", "index", "json", "names", "type_oids")

    def __init__(
        self,
        names: Sequence[str],
        type_oids: Sequence[int],
        convert: Sequence[Converter],
        json: Sequence[JsonForm | None] | None = None,
    ) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self.type_oids: tuple[int, ...] = tuple(type_oids)
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.names)}
        self.convert: tuple[Converter, ...] = tuple(convert)
        # How the compiled JSON writer writes these rows (formatting._json_plan),
        # made on first use.
        self._json_plan: Any = None
        if not len(self.names) == len(self.type_oids) == len(self.convert):
            raise ValueError("a row layout needs one type and one converter per column")
        # Per column, how to write its JSON form from the raw value when the
        # Python value alone loses something (see values.text_json); None:
        # from the Python value.
        self.json: tuple[JsonForm | None, ...] | None = None
        if json is not None and any(form is not None for form in json):
            self.json = tuple(json)
            if len(self.json) != len(self.names):
                raise ValueError("a row layout needs one JSON form per column")

    def subset(self, positions: Sequence[int]) -> RowLayout:
        """The layout of the columns at ``positions`` (for key-only rows)."""
        json = self.json
        return RowLayout(
            [self.names[i] for i in positions],
            [self.type_oids[i] for i in positions],
            [self.convert[i] for i in positions],
            None if json is None else [json[i] for i in positions],
        )

    def with_converters(
        self, convert: Sequence[Converter], json: Sequence[JsonForm | None] | None = None
    ) -> RowLayout:
        """The same columns with other converters (and JSON forms)."""
        return RowLayout(self.names, self.type_oids, convert, json)


class _RowCore:
    """A row's storage and its mapping protocol, in Python.

    ``_speedups.RowCore`` is the compiled equivalent, used when built: the
    tests hold the two to the same behaviour.
    """

    __slots__ = ("_layout", "_raw", "_values")

    def __init__(self, layout: RowLayout, raw: list[Any]) -> None:
        self._layout = layout
        self._raw = raw
        self._values: list[Any] | None = None

    def __getitem__(self, name: str) -> Any:
        i = self._layout.index[name]
        values = self._values
        if values is None:
            values = self._values = [_PENDING] * len(self._raw)
        value = values[i]
        if value is _PENDING:
            value = self._raw[i]
            if value is not None and value is not UNCHANGED:
                try:
                    value = self._layout.convert[i](value)
                except Exception as exc:  # converters raise their parsers' errors: bad input
                    raise self._error(name, exc) from exc
            values[i] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.names)

    def __len__(self) -> int:
        return len(self._layout.index)

    def __contains__(self, name: object) -> bool:
        return name in self._layout.index

    def _error(self, name: str, exc: Exception) -> DecodeError:
        raise NotImplementedError  # Row's


# A statement, not a conditional expression: type checkers then see one base.
if TYPE_CHECKING or _accel.compiled is None:  # noqa: SIM108
    _Core = _RowCore
else:
    _Core = _accel.compiled.RowCore


class Row(_Core, Mapping[str, Any]):
    """A read-only mapping from column name to value, in column order.

    Values are kept as received (text or binary bytes, or what a JSON plugin
    gave) and converted on first access, then cached; a column nobody reads is
    never converted. ``None`` is SQL NULL and :data:`UNCHANGED` an unchanged
    TOASTed value. A value that cannot be converted raises
    :class:`~replicant.errors.DecodeError` when read; :meth:`raw` still gives
    its representation.
    """

    __slots__ = ()

    _layout: RowLayout
    _raw: list[Any]

    def _error(self, name: str, exc: Exception) -> DecodeError:
        detail = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
        shown = self.raw(name)
        if isinstance(shown, (bytes, str)) and len(shown) > 80:
            shown = shown[:80]
        return DecodeError(
            f"cannot read column {name!r} (type {self.type_oid(name)}) from {shown!r}: {detail}"
        )

    def __repr__(self) -> str:
        items = ", ".join(f"{name!r}: {self._repr_value(name)}" for name in self._layout.names)
        return "{" + items + "}"

    def _repr_value(self, name: str) -> str:
        try:
            return repr(self[name])
        except DecodeError:
            return f"<undecodable {self.raw(name)!r}>"

    @property
    def columns(self) -> tuple[str, ...]:
        """The column names this row carries, in order."""
        return self._layout.names

    def raw(self, name: str) -> Any:
        """The value of ``name`` as received, unconverted.

        ``bytes`` for pgoutput (text or binary representation, per the
        decoder's options), ``str``/``bool`` for wal2json, ``None`` for NULL,
        :data:`UNCHANGED` for an unchanged TOASTed value.
        """
        return self._raw[self._layout.index[name]]

    def type_oid(self, name: str) -> int:
        """The type OID of column ``name``."""
        return self._layout.type_oids[self._layout.index[name]]

    def project(self, names: Sequence[str]) -> Row:
        """A row with only the columns ``names`` (those this row has), in this row's order."""
        index = self._layout.index
        wanted = set(names)
        positions = [index[n] for n in self._layout.names if n in wanted]
        if len(positions) == len(self._raw):
            return self
        return Row(self._layout.subset(positions), [self._raw[i] for i in positions])

    def to_dict(self) -> dict[str, Any]:
        """Every column in its lossless JSON form (see :func:`json_value`).

        Where the Python value loses something (json ``'null'``, infinite
        timestamps, interval months, numeric text, ranges), the form is
        written from the raw value instead. Raises DecodeError for a column
        that cannot be read.
        """
        return {name: self._json_form(i) for i, name in enumerate(self._layout.names)}

    def _json_form(self, i: int) -> Any:
        """Column ``i``'s lossless JSON form, as :meth:`to_dict` holds it (or DecodeError)."""
        layout = self._layout
        name = layout.names[i]
        value = self[name]
        forms = layout.json
        form = forms[i] if forms is not None else None
        raw = self._raw[i]
        if form is None or raw is None or raw is UNCHANGED:
            return json_value(value)
        try:
            return form(raw, value)
        except Exception as exc:  # a form parses the raw value: bad input
            raise self._error(name, exc) from exc


# --- the JSON form of values ----------------------------------------------------------


def json_value(value: Any) -> Any:
    """A lossless JSON-serialisable form of a column value.

    ``None`` (SQL NULL), ``bool``, ``int`` and ``str`` stay as they are;
    ``Decimal`` becomes its digits as text (``"1.50"``, ``"NaN"``);
    ``float`` stays a number unless it is NaN or infinite (then ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``); dates, times and datetimes become ISO
    8601 text; ``timedelta`` an ISO 8601 duration (``"P1DT2H"``); ``bytes``
    ``{"$base64": "..."}``; UUIDs, network addresses and ranges their text;
    lists element by element, a :class:`~replicant.values.PgArray`
    ``{"$array": [...], "lower_bounds": [...]}``; a
    :class:`~replicant.values.PgValue` its server text; :data:`UNCHANGED`
    ``{"$unchanged": true}``; a :class:`~replicant.values.BinaryValue`
    ``{"$base64": "...", "type_oid": n}``.

    :meth:`Row.to_dict` writes some types from the value as received
    instead, so nothing is lost: json and jsonb as ``{"$json": "<server
    text>"}`` (so JSON ``null`` differs from SQL NULL and duplicate keys
    stay), numeric as the server printed it, infinite dates and timestamps
    as ``"infinity"``/``"-infinity"``, intervals as ISO 8601 with months
    and days apart (``"P1Y2M3DT4H5M6S"``), ranges and multiranges as their
    server text. The guide's type table lists every type.
    """
    if value is UNCHANGED:
        return {"$unchanged": True}
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return _values.json_value(value)


def _json_field(value: Any) -> Any:
    if isinstance(value, LSN):
        return str(value)
    if isinstance(value, Row):
        return value.to_dict()
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return [_json_field(item) for item in value]
    if isinstance(value, Column):
        return {
            "name": value.name,
            "type_oid": value.type_oid,
            "type_modifier": value.type_modifier,
            "key": value.key,
        }
    return json_value(value)


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Event:
    """Fields every event has; see the module documentation for their meaning."""

    kind: ClassVar[str] = "event"

    lsn: LSN
    xid: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: ``kind``, ``lsn`` as ``X/Y`` text, ``xid``, the rest."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            out[f.name] = _json_field(getattr(self, f.name))
        return out

    def _repr_fields(self) -> Iterator[tuple[str, Any]]:
        for f in fields(self):
            if f.name not in ("lsn", "xid"):
                yield f.name, getattr(self, f.name)

    def __repr__(self) -> str:
        parts = [f"lsn={self.lsn}"]
        if self.xid is not None:
            parts.append(f"xid={self.xid}")
        parts.extend(f"{name}={_short_repr(value)}" for name, value in self._repr_fields())
        return f"{type(self).__name__}({', '.join(parts)})"


def _short_repr(value: Any) -> str:
    if isinstance(value, LSN):
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, Relation):
        return f"{value.schema}.{value.table}"
    if isinstance(value, tuple) and value and isinstance(value[0], Relation):
        return "(" + ", ".join(f"{r.schema}.{r.table}" for r in value) + ")"
    if isinstance(value, tuple) and value and isinstance(value[0], Column):
        return "(" + ", ".join(f"{c.name}{'*' if c.key else ''}:{c.type_oid}" for c in value) + ")"
    return repr(value)


@dataclass(frozen=True, slots=True, repr=False)
class Begin(Event):
    """A transaction starts. Its changes follow, then a :class:`Commit`."""

    kind: ClassVar[str] = "begin"

    final_lsn: LSN | None
    """The position of the commit record (pgoutput, wal2json 2)."""
    commit_time: _dt.datetime | None


@dataclass(frozen=True, slots=True, repr=False)
class Commit(Event):
    """The transaction committed; ``lsn`` is its end."""

    kind: ClassVar[str] = "commit"

    commit_lsn: LSN | None
    """The position of the commit record (``None`` when the plugin does not say)."""
    commit_time: _dt.datetime | None


@dataclass(frozen=True, slots=True, repr=False)
class Origin(Event):
    """The transaction was replayed from another node (replication origin)."""

    kind: ClassVar[str] = "origin"

    name: str
    origin_lsn: LSN
    """The commit position on the origin node."""


@dataclass(frozen=True, slots=True, repr=False)
class Relation(Event):
    """The description of a table; row events for it refer to it."""

    kind: ClassVar[str] = "relation"

    relid: int
    """The table's OID (0 when the plugin does not give it)."""
    schema: str
    table: str
    columns: tuple[Column, ...]
    replica_identity: str
    """``"default"``, ``"nothing"``, ``"full"``, ``"index"`` or ``"unknown"``."""

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The names of the replica-identity columns."""
        return tuple(c.name for c in self.columns if c.key)


@dataclass(frozen=True, slots=True, repr=False)
class _RowEvent(Event):
    relation: Relation

    @property
    def schema(self) -> str:
        """The table's schema."""
        return self.relation.schema

    @property
    def table(self) -> str:
        """The table's name."""
        return self.relation.table

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "lsn": str(self.lsn),
            "xid": self.xid,
            "schema": self.relation.schema,
            "table": self.relation.table,
        }
        for f in fields(self):
            if f.name not in ("lsn", "xid", "relation"):
                out[f.name] = _json_field(getattr(self, f.name))
        return out

    def _key_of(self, row: Row) -> Row:
        return row.project(self.relation.key_columns)


@dataclass(frozen=True, slots=True, repr=False)
class Insert(_RowEvent):
    """A row was inserted."""

    kind: ClassVar[str] = "insert"

    new: Row

    @property
    def old(self) -> None:
        """Always ``None``: an insert has no old row."""
        return None

    @property
    def key(self) -> Row:
        """The replica-identity columns of the new row."""
        return self._key_of(self.new)


@dataclass(frozen=True, slots=True, repr=False)
class Update(_RowEvent):
    """A row was updated.

    ``old`` is ``None`` when the server sent no old row (the replica identity
    did not change and the table is not REPLICA IDENTITY FULL); otherwise it
    has the old identity columns (or, for FULL, every column).
    """

    kind: ClassVar[str] = "update"

    new: Row
    old: Row | None

    @property
    def key(self) -> Row:
        """The replica-identity columns: of the old row if sent, else of the new."""
        return self._key_of(self.old if self.old is not None else self.new)


@dataclass(frozen=True, slots=True, repr=False)
class Delete(_RowEvent):
    """A row was deleted; ``old`` has its identity columns (all for FULL)."""

    kind: ClassVar[str] = "delete"

    old: Row

    @property
    def new(self) -> None:
        """Always ``None``: a delete has no new row."""
        return None

    @property
    def key(self) -> Row:
        """The replica-identity columns of the deleted row."""
        return self._key_of(self.old)


@dataclass(frozen=True, slots=True, repr=False)
class Read(_RowEvent):
    """A row that existed when a snapshot was taken (see the guide's Snapshot chapter).

    The same row model and values as :class:`Insert`: ``new`` is the row,
    read with the same value readers. ``lsn`` is the slot's consistent point
    for an initial snapshot, the high watermark's position for an
    incremental one; ``xid`` is ``None``. Apply it as an upsert: a snapshot
    that is redone (after a crash) delivers its rows again.
    """

    kind: ClassVar[str] = "read"

    new: Row

    @property
    def old(self) -> None:
        """Always ``None``: a snapshot row has no old row."""
        return None

    @property
    def key(self) -> Row:
        """The replica-identity columns of the row."""
        return self._key_of(self.new)


@dataclass(frozen=True, slots=True, repr=False)
class SnapshotBegin(Event):
    """A snapshot, or one table of it, starts.

    ``table``/``schema`` are ``None`` for the frame of the whole snapshot,
    whose ``tables`` lists every table it is to read (schema-qualified,
    as ``schema.table``); a table's own frame has its name and
    ``tables == ()``. In an initial snapshot everything a sink holds of a
    table is replaced by the rows that follow until its
    :class:`SnapshotEnd` (a snapshot taken again after a crash starts
    over). ``incremental`` marks an incremental snapshot (taken while
    streaming): its rows are upserts among the stream's changes, and the
    sink keeps what it has.
    """

    kind: ClassVar[str] = "snapshot_begin"

    schema: str | None
    table: str | None
    tables: tuple[str, ...]
    incremental: bool


@dataclass(frozen=True, slots=True, repr=False)
class SnapshotEnd(Event):
    """A snapshot, or one table of it, is complete: ``rows`` were delivered.

    For the whole snapshot (``table`` ``None``) ``rows`` is the total and
    ``missing`` names the tables that were dropped before they could be
    read (delivered as nothing). After an initial snapshot's end the
    stream continues from its consistent point.
    """

    kind: ClassVar[str] = "snapshot_end"

    schema: str | None
    table: str | None
    rows: int
    incremental: bool
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class Truncate(Event):
    """One or more tables were truncated."""

    kind: ClassVar[str] = "truncate"

    relations: tuple[Relation, ...]
    cascade: bool
    restart_identity: bool

    @property
    def tables(self) -> tuple[tuple[str, str], ...]:
        """``(schema, table)`` of each truncated table."""
        return tuple((r.schema, r.table) for r in self.relations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lsn": str(self.lsn),
            "xid": self.xid,
            "tables": [{"schema": s, "table": t} for s, t in self.tables],
            "cascade": self.cascade,
            "restart_identity": self.restart_identity,
        }


@dataclass(frozen=True, slots=True, repr=False)
class Message(Event):
    """A logical decoding message (``pg_logical_emit_message``)."""

    kind: ClassVar[str] = "message"

    prefix: str
    content: bytes
    transactional: bool


@dataclass(frozen=True, slots=True, repr=False)
class StreamStart(Event):
    """A block of an in-progress transaction's changes starts (pgoutput 2+)."""

    kind: ClassVar[str] = "stream_start"

    first_segment: bool


@dataclass(frozen=True, slots=True, repr=False)
class StreamStop(Event):
    """The current block of a streamed transaction ends."""

    kind: ClassVar[str] = "stream_stop"


@dataclass(frozen=True, slots=True, repr=False)
class StreamCommit(Event):
    """A streamed transaction committed; ``lsn`` is its end."""

    kind: ClassVar[str] = "stream_commit"

    commit_lsn: LSN
    commit_time: _dt.datetime


@dataclass(frozen=True, slots=True, repr=False)
class StreamAbort(Event):
    """A streamed (sub)transaction aborted: discard the changes of ``subxid``.

    ``subxid == xid`` means the whole transaction. ``abort_lsn`` and
    ``abort_time`` come with protocol 4 and ``streaming 'parallel'``.
    """

    kind: ClassVar[str] = "stream_abort"

    subxid: int
    abort_lsn: LSN | None
    abort_time: _dt.datetime | None


@dataclass(frozen=True, slots=True, repr=False)
class BeginPrepare(Event):
    """A transaction prepared for two-phase commit starts (pgoutput 3+)."""

    kind: ClassVar[str] = "begin_prepare"

    prepare_lsn: LSN
    end_lsn: LSN
    prepare_time: _dt.datetime
    gid: str


@dataclass(frozen=True, slots=True, repr=False)
class Prepare(Event):
    """The transaction was prepared (PREPARE TRANSACTION); ``lsn`` is its end."""

    kind: ClassVar[str] = "prepare"

    prepare_lsn: LSN
    prepare_time: _dt.datetime
    gid: str


@dataclass(frozen=True, slots=True, repr=False)
class CommitPrepared(Event):
    """A prepared transaction was committed; ``lsn`` is the end of COMMIT PREPARED."""

    kind: ClassVar[str] = "commit_prepared"

    commit_lsn: LSN
    commit_time: _dt.datetime
    gid: str


@dataclass(frozen=True, slots=True, repr=False)
class RollbackPrepared(Event):
    """A prepared transaction was rolled back; ``lsn`` is the end of ROLLBACK PREPARED."""

    kind: ClassVar[str] = "rollback_prepared"

    prepare_end_lsn: LSN
    prepare_time: _dt.datetime
    rollback_time: _dt.datetime
    gid: str


@dataclass(frozen=True, slots=True, repr=False)
class StreamPrepare(Event):
    """A streamed transaction was prepared; ``lsn`` is the end of its PREPARE."""

    kind: ClassVar[str] = "stream_prepare"

    prepare_lsn: LSN
    prepare_time: _dt.datetime
    gid: str


@dataclass(frozen=True, slots=True, repr=False)
class RawChange(Event):
    """One payload of a plugin replicant does not decode, as the server sent it.

    ``lsn`` is the frame's WAL start (the change's position as the plugin
    reported it; 0 when the plugin did not give one) and ``wal_end`` its end.
    """

    kind: ClassVar[str] = "raw"

    data: bytes
    wal_end: LSN

    def text(self, encoding: str = "utf-8") -> str:
        """The payload decoded as text (for text plugins such as test_decoding)."""
        return self.data.decode(encoding, errors="replace")


# --- fast construction ----------------------------------------------------------------
#
# The generated __init__ of a frozen dataclass sets every field through
# object.__setattr__, which measured at ~0.75 us for an Insert; setting the
# slots through their descriptors takes about half that. The decoders build
# the hot events (row events, Begin, Commit) through these.

_new = object.__new__


def _slot(cls: type, name: str) -> Callable[[object, object], None]:
    setter: Callable[[object, object], None] = cls.__dict__[name].__set__
    return setter


_lsn = _slot(Event, "lsn")
_xid = _slot(Event, "xid")
_begin_final_lsn = _slot(Begin, "final_lsn")
_begin_commit_time = _slot(Begin, "commit_time")
_commit_commit_lsn = _slot(Commit, "commit_lsn")
_commit_commit_time = _slot(Commit, "commit_time")
_relation = _slot(_RowEvent, "relation")
_insert_new = _slot(Insert, "new")
_update_new = _slot(Update, "new")
_update_old = _slot(Update, "old")
_delete_old = _slot(Delete, "old")
_read_new = _slot(Read, "new")


def new_begin(
    lsn: LSN, xid: int | None, final_lsn: LSN | None, commit_time: _dt.datetime | None
) -> Begin:
    """``Begin(lsn, xid, final_lsn, commit_time)``, faster."""
    event: Begin = _new(Begin)
    _lsn(event, lsn)
    _xid(event, xid)
    _begin_final_lsn(event, final_lsn)
    _begin_commit_time(event, commit_time)
    return event


def new_commit(
    lsn: LSN, xid: int | None, commit_lsn: LSN | None, commit_time: _dt.datetime | None
) -> Commit:
    """``Commit(lsn, xid, commit_lsn, commit_time)``, faster."""
    event: Commit = _new(Commit)
    _lsn(event, lsn)
    _xid(event, xid)
    _commit_commit_lsn(event, commit_lsn)
    _commit_commit_time(event, commit_time)
    return event


def new_insert(lsn: LSN, xid: int | None, relation: Relation, new: Row) -> Insert:
    """``Insert(lsn, xid, relation, new)``, faster."""
    event: Insert = _new(Insert)
    _lsn(event, lsn)
    _xid(event, xid)
    _relation(event, relation)
    _insert_new(event, new)
    return event


def new_update(lsn: LSN, xid: int | None, relation: Relation, new: Row, old: Row | None) -> Update:
    """``Update(lsn, xid, relation, new, old)``, faster."""
    event: Update = _new(Update)
    _lsn(event, lsn)
    _xid(event, xid)
    _relation(event, relation)
    _update_new(event, new)
    _update_old(event, old)
    return event


def new_delete(lsn: LSN, xid: int | None, relation: Relation, old: Row) -> Delete:
    """``Delete(lsn, xid, relation, old)``, faster."""
    event: Delete = _new(Delete)
    _lsn(event, lsn)
    _xid(event, xid)
    _relation(event, relation)
    _delete_old(event, old)
    return event


def new_read(lsn: LSN, xid: int | None, relation: Relation, new: Row) -> Read:
    """``Read(lsn, xid, relation, new)``, faster."""
    event: Read = _new(Read)
    _lsn(event, lsn)
    _xid(event, xid)
    _relation(event, relation)
    _read_new(event, new)
    return event


_Made = TypeVar("_Made", bound=Callable[..., Any])


def _compiled(python: _Made, cls: type, names: str) -> _Made:
    """``python``, or the compiled equivalent (``_speedups.maker``) when built.

    The compiled one does what the Python one does, in one call: about a
    third of the time.
    """
    native = _accel.compiled
    if native is None:
        return python
    made: _Made = native.maker(cls, tuple(names.split()))
    return made


# The Python constructors stay the reference: the tests compare the two.
_PYTHON_CONSTRUCTORS: Final = (new_begin, new_commit, new_insert, new_update, new_delete)
_PYTHON_NEW_READ: Final = new_read

new_begin = _compiled(new_begin, Begin, "lsn xid final_lsn commit_time")
new_commit = _compiled(new_commit, Commit, "lsn xid commit_lsn commit_time")
new_insert = _compiled(new_insert, Insert, "lsn xid relation new")
new_update = _compiled(new_update, Update, "lsn xid relation new old")
new_delete = _compiled(new_delete, Delete, "lsn xid relation old")
new_read = _compiled(new_read, Read, "lsn xid relation new")
