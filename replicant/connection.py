"""The replication connection and its COPY BOTH stream.

:class:`ReplicationConnection` opens a ``replication=database`` connection
with psycopg2 (so every libpq connection feature works) and runs the
replication commands that return rows as ordinary queries.
:meth:`ReplicationConnection.start` issues ``START_REPLICATION`` and hands
back a :class:`ReplicationStream`, which drives the COPY BOTH protocol
through :mod:`replicant.libpq` on the same ``PGconn``.

Thread rules for a stream: :meth:`ReplicationStream.read` and
:meth:`ReplicationStream.stop` belong to one reader at a time;
:meth:`ReplicationStream.send_status` may be called from any other thread
while a read is under way. libpq forbids two threads in one ``PGconn`` at
once, so every libpq call happens under one lock, and nothing waits while
holding it: waiting is ``select()`` on the socket, outside the lock, with the
connection in non-blocking mode.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

import psycopg2
import psycopg2.extensions

from replicant import libpq
from replicant.errors import (
    ConfigurationError,
    ConnectionLost,
    ReplicantError,
    ServerError,
    SlotError,
    UsageError,
)
from replicant.lsn import LSN
from replicant.protocol import (
    Frame,
    create_slot_command,
    drop_slot_command,
    encode_status_update,
    identify_system_command,
    parse_frame,
    quote_conninfo_value,
    quote_identifier,
    start_replication_command,
    validate_slot_name,
)

_T = TypeVar("_T")

__all__ = [
    "INVALIDATED_SLOT_ADVICE",
    "WAL_POSITION",
    "CreatedSlot",
    "PublicationInfo",
    "ReplicationConnection",
    "ReplicationStream",
    "SlotState",
    "SystemInfo",
    "check_slot_state",
    "mask_dsn",
    "slot_state_from_row",
    "slot_state_query",
]


@dataclass(frozen=True)
class SystemInfo:
    """What ``IDENTIFY_SYSTEM`` reports."""

    system_id: str
    timeline: int
    xlogpos: LSN
    dbname: str | None


@dataclass(frozen=True)
class CreatedSlot:
    """What ``CREATE_REPLICATION_SLOT`` reports.

    ``snapshot_name`` is set only when the snapshot was exported; it stays
    importable (``SET TRANSACTION SNAPSHOT``) until the connection runs its
    next command.
    """

    name: str
    consistent_point: LSN
    snapshot_name: str | None
    plugin: str


@dataclass(frozen=True)
class SlotState:
    """What the server knows of a replication slot (``pg_replication_slots``).

    Fields the server version does not have are ``None``.
    """

    name: str
    slot_type: str
    plugin: str | None
    database: str | None
    temporary: bool
    active: bool
    active_pid: int | None
    restart_lsn: LSN | None
    confirmed_flush_lsn: LSN | None
    wal_status: str | None
    safe_wal_size: int | None
    two_phase: bool | None
    #: 16+: the slot conflicts with recovery (a standby's slot) and is unusable.
    conflicting: bool | None = None
    #: 17+: why the slot was invalidated (``"wal_removed"``, ``"rows_removed"``,
    #: ``"wal_level_insufficient"``, ``"idle_timeout"``), or None.
    invalidation_reason: str | None = None
    #: 17+: since when the slot has been inactive (a timezone-aware datetime).
    inactive_since: Any = None
    #: 17+: the slot is synchronised to standbys (a failover slot).
    failover: bool | None = None
    #: 17+: on a standby, the slot is a copy synchronised from the primary.
    synced: bool | None = None
    #: 18+: the position from which prepared transactions are decoded as such.
    two_phase_at: LSN | None = None

    @property
    def invalidated(self) -> str | None:
        """Why the slot can no longer be used, or None while it can.

        Any of, the most precise first: an ``invalidation_reason`` (17+),
        ``wal_status = 'lost'`` (13+), ``conflicting`` (16+).
        """
        if self.invalidation_reason:
            return self.invalidation_reason
        # 16 also reports conflicting for a slot whose WAL was removed; the
        # more precise reason comes first.
        if self.wal_status == "lost":
            return "wal_status lost"
        if self.conflicting:
            return "conflicting"
        return None

    @property
    def invalidation_cause(self) -> str | None:
        """What :attr:`invalidated` means in plain words, or None (valid, or a reason
        this version of replicant does not know)."""
        reason = self.invalidated
        return None if reason is None else _INVALIDATION_CAUSES.get(reason)


_INVALIDATION_CAUSES: Final = {
    "wal_removed": "the WAL it needed was removed (max_slot_wal_keep_size)",
    "wal_status lost": "the WAL it needed was removed (max_slot_wal_keep_size)",
    "rows_removed": "the primary removed rows it still needed (a standby's slot; "
    "turn on hot_standby_feedback with a physical slot)",
    "conflicting": "it conflicts with recovery on this standby (rows it needed were "
    "removed on the primary, or wal_level was lowered there)",
    "wal_level_insufficient": "the primary's wal_level is below logical",
    "idle_timeout": "it was idle longer than idle_replication_slot_timeout",
}

INVALIDATED_SLOT_ADVICE: Final = (
    "It can never stream again: drop it, create it anew and resynchronise the changes "
    "since its last confirmed position"
)
"""What to do about an invalidated slot, the same words wherever it is reported."""


def _check_slot_kind(state: SlotState, plugin: str | None, database: str | None) -> None:
    """Raise :class:`SlotError` unless the slot is logical, of ``plugin`` and of
    ``database`` (each when given)."""
    if state.slot_type != "logical":
        raise SlotError(f'replication slot "{state.name}" is a {state.slot_type} slot, not logical')
    if plugin is not None and state.plugin != plugin:
        raise SlotError(
            f'replication slot "{state.name}" uses plugin {state.plugin!r}, not '
            f"{plugin!r}: pass plugin={state.plugin!r} to stream it, or drop it or pick "
            "another slot name"
        )
    if database is not None and state.database is not None and state.database != database:
        raise SlotError(
            f'replication slot "{state.name}" belongs to database {state.database!r}, '
            f"not {database!r}"
        )


def check_slot_state(state: SlotState, *, plugin: str) -> None:
    """Raise :class:`SlotError` unless ``state`` is a slot a consumer of ``plugin`` can use.

    A pure check of what the server reported: the slot must be logical, use
    ``plugin``, and not be invalidated for any reason (an
    ``invalidation_reason`` on 17+, ``conflicting`` on 16+, ``wal_status =
    'lost'``). An invalidated slot never streams again: the message names the
    reason and says to drop, recreate and resynchronise.
    """
    _check_slot_kind(state, plugin, None)
    reason = state.invalidated
    if reason is not None:
        why = state.invalidation_cause
        detail = f" ({why})" if why else ""
        raise SlotError(
            f'replication slot "{state.name}" was invalidated: {reason}{detail}. '
            f"{INVALIDATED_SLOT_ADVICE}",
            sqlstate="55000",
        )


@dataclass(frozen=True)
class PublicationInfo:
    """A publication: its name, whether it covers all tables, and its tables."""

    name: str
    all_tables: bool
    tables: tuple[str, ...]


# --- slot state ---------------------------------------------------------------

# The columns of pg_replication_slots that came after 10, by the version that
# added them: an older server gets NULL in their place.
_SLOT_COLUMNS: Final = (
    ("wal_status", 130000),
    ("safe_wal_size", 130000),
    ("two_phase", 140000),
    ("conflicting", 160000),
    ("invalidation_reason", 170000),
    ("inactive_since", 170000),
    ("failover", 170000),
    ("synced", 170000),
    ("two_phase_at::text", 180000),
)

WAL_POSITION: Final = (
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()"
    " ELSE pg_catalog.pg_current_wal_lsn() END"
)
"""An SQL expression (``pg_lsn``): where the server's WAL is now; on a standby,
as far as it has replayed."""


def slot_state_query(server_version: int, name: str | None = None) -> tuple[str, tuple[str, ...]]:
    """The one query for slot state: ``(sql, params)`` for a cursor's ``execute``.

    Selects every slot (or only ``name``) ordered by name, with the columns
    :func:`slot_state_from_row` reads; columns ``server_version`` lacks are
    NULL. Works on any connection, replication or not.
    """
    optional = ", ".join(c if server_version >= v else "NULL" for c, v in _SLOT_COLUMNS)
    where = " WHERE slot_name = %s" if name is not None else ""
    sql = (
        "SELECT slot_name, slot_type, plugin, database, temporary, active, active_pid,"
        f" restart_lsn::text, confirmed_flush_lsn::text, {optional}"
        f" FROM pg_catalog.pg_replication_slots{where} ORDER BY slot_name"
    )
    return sql, (() if name is None else (name,))


def slot_state_from_row(row: Sequence[Any]) -> SlotState:
    """A :class:`SlotState` from one row of :func:`slot_state_query`."""
    (
        slot_name,
        slot_type,
        plugin,
        database,
        temporary,
        active,
        pid,
        restart,
        confirmed,
        wal_status,
        safe_size,
        has_two_phase,
        conflicting,
        reason,
        inactive_since,
        failover,
        synced,
        two_phase_at,
    ) = row
    return SlotState(
        name=slot_name,
        slot_type=slot_type,
        plugin=plugin,
        database=database,
        temporary=bool(temporary),
        active=bool(active),
        active_pid=pid,
        restart_lsn=LSN.parse(restart) if restart else None,
        confirmed_flush_lsn=LSN.parse(confirmed) if confirmed else None,
        wal_status=wal_status,
        safe_wal_size=None if safe_size is None else int(safe_size),
        two_phase=has_two_phase,
        conflicting=conflicting,
        invalidation_reason=reason,
        inactive_since=inactive_since,
        failover=failover,
        synced=synced,
        two_phase_at=LSN.parse(two_phase_at) if two_phase_at else None,
    )


# --- errors -----------------------------------------------------------------

# SQLSTATEs that mean the connection is gone or going, whatever the message:
# class 08 (connection exception) and the shutdown codes of class 57.
_CONNECTION_STATES = {"57P01", "57P02", "57P03"}
_SLOT_STATES = {"42704", "42710", "55006", "55000", "22023", "42602"}
_SLOT_WORDS = re.compile(r"replication slot|\bslot\b", re.IGNORECASE)
_PLUGIN_REFUSED = re.compile(r"may not be used as an output plugin", re.IGNORECASE)


def classify_server_error(
    message: str,
    sqlstate: str | None,
    detail: str | None = None,
    hint: str | None = None,
) -> ReplicantError:
    """The exception of our hierarchy for an error the server reported."""
    if sqlstate is not None and (sqlstate.startswith("08") or sqlstate in _CONNECTION_STATES):
        return ConnectionLost(message, sqlstate=sqlstate)
    if sqlstate in _SLOT_STATES and _SLOT_WORDS.search(message):
        return SlotError(message, sqlstate=sqlstate, detail=detail, hint=hint)
    if sqlstate == "42501" and _PLUGIN_REFUSED.search(message):
        # The minor releases of November 2026 (15.19+, 18.6+ and their peers)
        # load as output plugins only the libraries an administrator listed:
        # the server's own hint is easy to miss, so say it first.
        message = (
            f"{message}: the server accepts only the output plugins listed in its "
            '"output_plugin_libraries" setting (newer minor releases: 15.19, 18.6 '
            "and later); add this one there and reload the server configuration"
        )
    return ServerError(message, sqlstate=sqlstate, detail=detail, hint=hint)


# libpq reports these on a connection that broke; there is no SQLSTATE then.
_LOST_WORDS = re.compile(
    r"server closed the connection|connection (?:to server )?(?:was )?(?:lost|closed|reset)|"
    r"could not (?:receive|send) data|SSL SYSCALL|EOF detected|no connection to the server|"
    r"terminating connection|Connection refused|could not connect|timeout expired|"
    r"Broken pipe|the database system is (?:shutting down|starting up|in recovery)",
    re.IGNORECASE,
)


def _from_psycopg2(error: psycopg2.Error, action: str) -> ReplicantError:
    """Translate a psycopg2 exception raised while doing ``action``."""
    message = (error.diag.message_primary if error.pgcode else None) or str(error).strip()
    if error.pgcode:
        return classify_server_error(
            f"{action}: {message}",
            error.pgcode,
            error.diag.message_detail,
            error.diag.message_hint,
        )
    if isinstance(error, psycopg2.InterfaceError) or _LOST_WORDS.search(message):
        return ConnectionLost(f"{action}: {message}")
    return ServerError(f"{action}: {message}")


# Connection refusals that a retry cannot fix, by the words libpq reports
# (it gives no SQLSTATE before the connection is up).
_REFUSALS = (
    (
        "28P01",
        re.compile(
            r"password authentication failed|no password supplied|"
            r"password must be supplied|SCRAM|authentication failed",
            re.I,
        ),
    ),
    ("28000", re.compile(r"pg_hba\.conf|not permitted to log in|role .* does not exist", re.I)),
    # A role without the REPLICATION attribute (the wording before and from 16),
    # or without CONNECT on the database.
    (
        "42501",
        re.compile(
            r"superuser or replication role|permission denied to start WAL sender|"
            r"REPLICATION attribute|permission denied for database|CONNECT privilege",
            re.I,
        ),
    ),
    ("3D000", re.compile(r"database .* does not exist", re.I)),
    ("08006", re.compile(r"certificate|SSL error|server does not support SSL|sslmode", re.I)),
)


def _connect_error(error: psycopg2.Error) -> ReplicantError:
    """Translate a failure to connect.

    A server that cannot be reached (or is starting or stopping) is a
    :class:`ConnectionLost` a caller may retry; a refusal that a retry cannot
    fix (authentication, a missing database or role, TLS verification) is a
    :class:`ServerError`.
    """
    message = str(error).strip()
    for sqlstate, words in _REFUSALS:
        if words.search(message):
            return ServerError(f"could not connect: {message}", sqlstate=sqlstate)
    return ConnectionLost(f"could not connect: {message}")


# --- DSN handling -------------------------------------------------------------

_SECRET_KEYS = ("password", "sslpassword")


def mask_dsn(dsn: str | None = None, **params: Any) -> str:
    """The connection string with every secret replaced by ``***``.

    Safe to log or put in an exception message. Accepts what
    :meth:`ReplicationConnection.connect` accepts.
    """
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn or "")
    except psycopg2.Error:
        return "<unparsable connection string>"
    parsed.update({key: value for key, value in params.items() if value is not None})
    for key in _SECRET_KEYS:
        if key in parsed:
            parsed[key] = "***"
    return " ".join(f"{key}={quote_conninfo_value(str(value))}" for key, value in parsed.items())


# --- session settings ---------------------------------------------------------

PINNED_SETTINGS: Final = (
    ("datestyle", "ISO"),
    ("intervalstyle", "postgres"),
    ("extra_float_digits", "3"),
)
"""Settings every replication connection gets, whatever the server's defaults.

The plugins write values with the walsender's output functions, so these
decide the text replicant parses: ISO dates, postgres-style intervals and
floats with every digit (PostgreSQL's own subscriber pins the same)."""


def _option_words(options: str) -> str:
    """``-c name=value`` words for PINNED_SETTINGS, escaped as libpq's options want."""

    def escape(word: str) -> str:
        # libpq splits options at unescaped white space; a backslash escapes.
        return re.sub(r"([\\\s])", r"\\\1", word)

    return " ".join(f"-c {escape(f'{name}={value}')}" for name, value in PINNED_SETTINGS)


def _pin_session_settings(dsn: str | None, params: dict[str, Any]) -> bool:
    """Add PINNED_SETTINGS to the connection's ``options``; True: SET them after connecting.

    The user's own options are kept (from ``params``, else the DSN, else
    PGOPTIONS, as libpq chooses) and ours are appended, so ours win for
    these three settings only. When a service file may supply the options
    (``service`` or PGSERVICE, with no options given otherwise), they are
    left to libpq and the settings are SET on the open connection instead.
    """
    existing: str | None = params.get("options")
    parsed: dict[str, str] = {}
    if existing is None:
        try:
            parsed = psycopg2.extensions.parse_dsn(dsn or "")
        except psycopg2.Error:
            return False  # libpq reports the bad DSN when connecting
        existing = parsed.get("options")
    if existing is None:
        if params.get("service") or parsed.get("service") or os.environ.get("PGSERVICE"):
            return True
        existing = os.environ.get("PGOPTIONS")
    ours = _option_words(existing or "")
    params["options"] = f"{existing} {ours}" if existing and existing.strip() else ours
    return False


# --- the connection -----------------------------------------------------------


class ReplicationConnection:
    """A ``replication=database`` connection to one database.

    Use :meth:`connect` to open one; it is a context manager that closes the
    connection on exit. Replication commands run through psycopg2 while no
    stream is open; :meth:`start` opens the stream.
    """

    def __init__(self, raw: psycopg2.extensions.connection, *, description: str = "") -> None:
        self._raw = raw
        self._raw.autocommit = True
        self._description = description
        self._stream: ReplicationStream | None = None
        self._streamed = False
        self._in_snapshot_transaction = False

    @classmethod
    def connect(cls, dsn: str | None = None, **params: Any) -> ReplicationConnection:
        """Open a logical replication connection.

        Takes anything psycopg2 takes: a URI or key/value ``dsn``, keyword
        parameters (which win over the DSN), and the ``PG*`` environment
        variables, ``.pgpass`` and service files that libpq reads itself.
        Raises :class:`ConnectionLost` when the server cannot be reached and
        :class:`ServerError` when it refuses (authentication, missing
        database).
        """
        params = {key: value for key, value in params.items() if value is not None}
        params["replication"] = "database"
        pinned_by_set = _pin_session_settings(dsn, params)
        try:
            raw = psycopg2.connect(dsn or "", **params)
            if pinned_by_set:
                raw.autocommit = True
                with raw.cursor() as cur:
                    for name, value in PINNED_SETTINGS:
                        cur.execute(f"SET {name} = '{value}'")
        except psycopg2.Error as error:
            raise _connect_error(error) from None
        return cls(raw, description=mask_dsn(dsn, **params))

    # -- properties

    @property
    def raw(self) -> psycopg2.extensions.connection:
        """The underlying psycopg2 connection. Do not use it while streaming."""
        return self._raw

    @property
    def server_version(self) -> int:
        """The server's version as an integer, e.g. ``150004``."""
        return int(self._raw.server_version)

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by us or because it broke)."""
        return bool(self._raw.closed)

    @property
    def streaming(self) -> bool:
        """True while a stream from :meth:`start` is open."""
        return self._stream is not None and not self._stream.ended

    def __repr__(self) -> str:
        state = "closed" if self.closed else "streaming" if self.streaming else "idle"
        return f"<ReplicationConnection {self._description!r} {state}>"

    # -- queries

    def execute(self, command: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one command (replication command or SQL) and return its rows.

        Commands that return no rows give an empty list.
        """
        self._check_idle()
        try:
            with self._raw.cursor() as cursor:
                cursor.execute(command, params)
                if cursor.description is None:
                    return []
                return list(cursor.fetchall())
        except psycopg2.Error as error:
            raise _from_psycopg2(error, command.split(None, 1)[0]) from None

    def _check_idle(self) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        if self.streaming:
            raise UsageError("the connection is streaming: stop the stream first")

    def identify_system(self) -> SystemInfo:
        """``IDENTIFY_SYSTEM``: system id, timeline, current WAL position, database."""
        rows = self.execute(identify_system_command())
        system_id, timeline, xlogpos, dbname = rows[0]
        return SystemInfo(str(system_id), int(timeline), LSN.parse(xlogpos), dbname)

    def create_slot(
        self,
        name: str,
        plugin: str = "pgoutput",
        *,
        temporary: bool = False,
        snapshot: str = "nothing",
        two_phase: bool = False,
        failover: bool = False,
    ) -> CreatedSlot:
        """Create a logical replication slot.

        ``snapshot``: ``"nothing"`` (no snapshot), ``"export"`` (export one for
        other sessions to import; ``snapshot_name`` names it), or ``"use"``
        (this connection opens a read-only ``REPEATABLE READ`` transaction and reads
        with the slot's snapshot: query it with :meth:`execute`, then call
        :meth:`commit`). A temporary slot is dropped when the connection
        closes. Raises :class:`SlotError` if the slot exists.

        ``two_phase`` (14+) decodes prepared transactions at PREPARE; on 14,
        whose replication command lacks the option, the slot is made with
        ``pg_create_logical_replication_slot()``, so only without a snapshot.
        ``failover`` (17+) makes a slot that standbys synchronise.
        """
        version = self.server_version
        if failover and version < 170000:
            raise ConfigurationError(
                f"failover slots need PostgreSQL 17 or later; this server is {version // 10000}"
            )
        if two_phase and 140000 <= version < 150000:
            # 14 has two-phase slots, but its CREATE_REPLICATION_SLOT has no
            # TWO_PHASE keyword (a syntax error): only the SQL function takes
            # it, and that function cannot export or use a snapshot.
            if snapshot != "nothing":
                raise ConfigurationError(
                    "on PostgreSQL 14 a two_phase slot can only be created without a "
                    'snapshot (snapshot="nothing"); PostgreSQL 15 or later can do both'
                )
            validate_slot_name(name)
            rows = self.execute(
                "SELECT slot_name, lsn::text FROM "
                "pg_catalog.pg_create_logical_replication_slot(%s, %s, %s, true)",
                (name, plugin, temporary),
            )
            slot_name, consistent_point = rows[0]
            return CreatedSlot(slot_name, LSN.parse(consistent_point), None, plugin)
        command = create_slot_command(
            name,
            plugin,
            server_version=version,
            temporary=temporary,
            snapshot=snapshot,
            two_phase=two_phase,
        )
        if failover:
            # 17+ syntax only: a parenthesised option list.
            command = command[:-1] + ", FAILOVER true)"
        if snapshot == "use" and not self._in_snapshot_transaction:
            self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self._in_snapshot_transaction = True
        rows = self.execute(command)
        slot_name, consistent_point, snapshot_name, output_plugin = rows[0]
        return CreatedSlot(slot_name, LSN.parse(consistent_point), snapshot_name, output_plugin)

    def alter_slot(
        self, name: str, *, failover: bool | None = None, two_phase: bool | None = None
    ) -> None:
        """``ALTER_REPLICATION_SLOT`` (17+): change a slot's ``failover``/``two_phase``.

        Options left ``None`` stay as they are. The slot must not be in use.
        ``two_phase`` can be changed from 18 only. Raises
        :class:`ConfigurationError` on older servers or with nothing to change,
        :class:`SlotError` when the server refuses (no such slot, in use).
        """
        validate_slot_name(name)
        version = self.server_version
        options = []
        if failover is not None:
            options.append(f"FAILOVER {'true' if failover else 'false'}")
        if two_phase is not None:
            if version < 180000:
                raise ConfigurationError(
                    "changing two_phase of an existing slot needs PostgreSQL 18 or later"
                )
            options.append(f"TWO_PHASE {'true' if two_phase else 'false'}")
        if not options:
            raise ConfigurationError("alter_slot() needs failover= or two_phase=")
        if version < 170000:
            raise ConfigurationError(
                "ALTER_REPLICATION_SLOT needs PostgreSQL 17 or later; "
                f"this server is {version // 10000}"
            )
        self.execute(f"ALTER_REPLICATION_SLOT {quote_identifier(name)} ({', '.join(options)})")

    def publications(self, names: Iterable[str]) -> dict[str, PublicationInfo | None]:
        """Each named publication of this database, or None for one that does not exist.

        ``tables`` lists the schema-qualified tables the publication holds
        now (for ``FOR ALL TABLES`` too), sorted.
        """
        wanted = list(dict.fromkeys(names))
        result: dict[str, PublicationInfo | None] = dict.fromkeys(wanted)
        if not wanted:
            return result
        rows = self.execute(
            "SELECT p.pubname, p.puballtables, coalesce(array_agg("
            " quote_ident(t.schemaname) || '.' || quote_ident(t.tablename)"
            " ORDER BY t.schemaname, t.tablename) FILTER (WHERE t.tablename IS NOT NULL),"
            " '{}')"
            " FROM pg_catalog.pg_publication p"
            " LEFT JOIN pg_catalog.pg_publication_tables t ON t.pubname = p.pubname"
            " WHERE p.pubname = ANY(%s) GROUP BY p.pubname, p.puballtables",
            (wanted,),
        )
        for pubname, all_tables, tables in rows:
            result[pubname] = PublicationInfo(pubname, bool(all_tables), tuple(tables))
        return result

    def missing_publications(self, names: Iterable[str]) -> list[str]:
        """The named publications that do not exist in this database, in the order given."""
        return [name for name, info in self.publications(names).items() if info is None]

    def commit(self) -> None:
        """End the transaction that ``create_slot(snapshot="use")`` opened."""
        if self._in_snapshot_transaction:
            self.execute("COMMIT")
            self._in_snapshot_transaction = False

    def read_slot(self, name: str) -> SlotState | None:
        """What the server knows of slot ``name``, or ``None`` if it has none."""
        validate_slot_name(name)
        slots = self.read_slots(name)
        return slots[0] if slots else None

    def read_slots(self, name: str | None = None) -> list[SlotState]:
        """Every replication slot of the server (or only ``name``), sorted by name."""
        query, params = slot_state_query(self.server_version, name)
        return [slot_state_from_row(row) for row in self.execute(query, params)]

    def wal_position(self) -> LSN | None:
        """The server's current WAL position: its insert position, or on a standby
        the last position replayed (None while a standby has replayed nothing)."""
        rows = self.execute(f"SELECT ({WAL_POSITION})::text")
        return None if rows[0][0] is None else LSN.parse(rows[0][0])

    def drop_slot(self, name: str, *, wait: bool = False) -> None:
        """Drop slot ``name``. With ``wait``, wait while another connection uses it.

        Raises :class:`SlotError` if it does not exist or (without ``wait``)
        is in use.
        """
        self.execute(drop_slot_command(name, wait=wait))

    # -- streaming

    def start(
        self,
        slot: str,
        start_lsn: int | str | None = None,
        options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        *,
        plugin: str | None = None,
        timeout: float = 60.0,
    ) -> ReplicationStream:
        """``START_REPLICATION`` on a logical slot; returns the open stream.

        ``start_lsn`` ``None`` (or 0) resumes from the slot's confirmed
        position. ``options`` go to the output plugin. With ``plugin``, the
        slot's plugin is checked first and a slot of another plugin is a
        :class:`SlotError` rather than a confusing option error.
        ``timeout`` bounds the wait for the server to accept.
        """
        self._check_idle()
        if self._streamed:
            # The walsender ends a second logical stream on one connection
            # at once (seen on 15 and 16): say so instead of a ConnectionLost.
            raise UsageError(
                "this connection already streamed once; PostgreSQL needs a new "
                "connection for another logical stream"
            )
        lsn = LSN(0) if start_lsn is None else LSN(start_lsn)
        command = start_replication_command(slot, lsn, options)
        state = self.read_slot(slot)
        if state is None:
            raise SlotError(f'replication slot "{slot}" does not exist', sqlstate="42704")
        _check_slot_kind(state, plugin, self._raw.info.dbname)
        stream = ReplicationStream(self, command, timeout=timeout)
        self._stream = stream
        self._streamed = True
        return stream

    def _stream_closed(self, stream: ReplicationStream) -> None:
        if self._stream is stream:
            self._stream = None

    # -- lifetime

    def close(self) -> None:
        """Close the connection (abandoning any open stream). Idempotent."""
        stream = self._stream
        if stream is not None:
            stream._abandon()
        self._stream = None
        if not self._raw.closed:
            self._raw.close()

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- the stream -----------------------------------------------------------------


class _State(enum.Enum):
    """Where a :class:`ReplicationStream` is; it only moves along :data:`_MOVES`.

    - STARTING: START_REPLICATION sent, the server has not answered yet.
    - STREAMING: in COPY BOTH; frames come and status updates go.
    - STOPPING: we sent CopyDone; what still comes is discarded.
    - ENDED: the COPY is over: either side ended it, it failed, or it broke
      (what ended it, if anything went wrong, is the stream's ``_error``).
    - ABANDONED: the connection is closing or closed: touch the PGconn no more.
    """

    STARTING = "starting"
    STREAMING = "streaming"
    STOPPING = "stopping"
    ENDED = "ended"
    ABANDONED = "abandoned"


# The allowed moves. A move to the state a stream is in is no move; a stream
# abandoned is over, so ending it again leaves it abandoned.
_MOVES: dict[_State, frozenset[_State]] = {
    _State.STARTING: frozenset({_State.STREAMING, _State.ENDED, _State.ABANDONED}),
    _State.STREAMING: frozenset({_State.STOPPING, _State.ENDED, _State.ABANDONED}),
    _State.STOPPING: frozenset({_State.ENDED, _State.ABANDONED}),
    _State.ENDED: frozenset({_State.ABANDONED}),
    _State.ABANDONED: frozenset(),
}
_OVER = frozenset({_State.ENDED, _State.ABANDONED})


def _wait_socket(socket: int, timeout: float | None, *, write: bool) -> bool:
    """Wait up to ``timeout`` seconds for ``socket`` to be readable (or writable).

    True when it is, False when the time ran out; :class:`ConnectionLost` if
    the socket was closed under us. The one place a stream waits: never
    with the lock held.
    """
    try:
        if write:
            _, ready, _ = select.select([], [socket], [], timeout)
        else:
            ready, _, _ = select.select([socket], [], [], timeout)
    except (OSError, ValueError) as error:
        doing = "waiting to send to the server" if write else "waiting for the server"
        raise ConnectionLost(f"{doing}: {error}") from None
    return bool(ready)


class ReplicationStream:
    """An open COPY BOTH replication stream.

    Made by :meth:`ReplicationConnection.start`. :meth:`read` returns parsed
    frames; :meth:`send_status` reports progress (from any thread);
    :meth:`stop` ends the stream and leaves the connection usable.
    """

    # Frames pulled per lock acquisition at most, so that a status update
    # from another thread never waits behind a long drain.
    MAX_BATCH = 512

    def __init__(self, connection: ReplicationConnection, command: str, *, timeout: float) -> None:
        self._connection = connection
        pointer = connection.raw.pgconn_ptr
        if pointer is None:  # psycopg2's connection is closed
            raise ConnectionLost("the connection is closed")
        self._pgconn = libpq.PGconn(pointer)
        self._socket = self._pgconn.socket()
        # OpenSSL may hold decrypted bytes that libpq did not take (its input
        # buffer had less room than the TLS record): select() cannot see
        # them, so with TLS a drain reads again before it gives up.
        self._extra_reads = 2 if self._pgconn.ssl_in_use() else 0
        self._lock = threading.Lock()  # every libpq call on this PGconn
        self._read_lock = threading.Lock()  # one reader (read/stop) at a time
        self._drain_copy_data = libpq.drain
        self._state = _State.STARTING
        # What ended the stream, raised again by every later call: set when
        # the connection broke, the server failed it, or a frame was bad.
        self._error: ReplicantError | None = None
        self._begin(command, timeout)

    def _move(self, state: _State) -> None:
        """Go to ``state``, one of the moves :data:`_MOVES` allows."""
        current = self._state
        if state is current or (state is _State.ENDED and current is _State.ABANDONED):
            return
        if state not in _MOVES[current]:
            raise AssertionError(f"a replication stream cannot go from {current} to {state}")
        self._state = state

    # -- the one way to call libpq, and the one way to wait

    def _call(self, call: Callable[[libpq.PGconn], _T]) -> _T:
        """``call(pgconn)`` under the lock; a connection it finds lost ends the stream.

        Raises :class:`ConnectionLost` without calling when the connection
        was closed under the stream.
        """
        with self._lock:
            if self._state is _State.ABANDONED:
                raise ConnectionLost("the connection was closed")
            try:
                return call(self._pgconn)
            except ConnectionLost as error:
                self._end_lost(error)
                raise

    def _until(
        self, attempt: Callable[[], bool], deadline: float, *, write: bool, doing: str
    ) -> None:
        """Call ``attempt`` until it returns True, waiting for the socket between tries.

        Readable between tries, or writable with ``write``. Raises
        :class:`ConnectionLost` once ``deadline`` (a ``time.monotonic()``
        value) passes: every wait of the stream but :meth:`read`'s is this.
        """
        while not attempt():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = ": the server is not reading" if write else ""
                raise ConnectionLost(f"timed out {doing}{reason}")
            _wait_socket(self._socket, remaining, write=write)

    # -- setup

    def _begin(self, command: str, timeout: float) -> None:
        def send(pgconn: libpq.PGconn) -> None:
            pgconn.send_query(command, "could not send START_REPLICATION")
            # Non-blocking from here on: no libpq call may wait while we hold
            # the lock (a status update from the other thread would stall).
            pgconn.set_nonblocking(True, "could not switch the connection to non-blocking mode")

        self._call(send)
        error = self._collect_results(
            time.monotonic() + timeout, "waiting for START_REPLICATION", "START_REPLICATION failed"
        )
        if self._state is _State.STREAMING:
            return
        self._move(_State.ENDED)
        self._restore_blocking()
        self._connection._stream_closed(self)
        raise error or ConnectionLost("START_REPLICATION ended without starting a stream")

    def _collect_results(self, deadline: float, waiting: str, failed: str) -> ReplicantError | None:
        """Read results until libpq has no more (or, starting, the COPY BOTH
        begins); the first failure among them as our error, ``failed`` its prefix."""
        error: ReplicantError | None = None
        while True:
            self._until(
                lambda: self._call(lambda pgconn: pgconn.ready(waiting)),
                deadline,
                write=False,
                doing=waiting,
            )
            result = self._call(lambda pgconn: pgconn.get_result())
            if result is None:
                return error
            if result.status == libpq.PGRES_COPY_BOTH and self._state is _State.STARTING:
                self._move(_State.STREAMING)
                return None
            if result.failed and error is None:
                error = self._result_error(result, failed)

    # -- reading

    @property
    def ended(self) -> bool:
        """True once the stream is over (stopped, ended by the server, or broken)."""
        return self._state in _OVER

    def fileno(self) -> int:
        """The socket, for ``select()``."""
        return self._socket

    def read(self, timeout: float | None = None) -> list[Frame]:
        """Every frame available now, waiting up to ``timeout`` seconds for one.

        Returns an empty list when the timeout passes with nothing to read
        (``None`` waits as long as it takes). Raises :class:`ConnectionLost`
        when the connection breaks or the server ends the stream,
        :class:`ServerError` (or :class:`SlotError`) when the server reports
        an error, :class:`ProtocolError` for a malformed frame.
        """
        with self._read_lock:
            self._check_open()
            frames = self._drain()
            if frames or timeout == 0:
                return frames
            # libpq may already hold buffered bytes (TLS records, or input a
            # status update pulled in while flushing): drained above, so the
            # socket is the only place left to wait on.
            if _wait_socket(self._socket, timeout, write=False):
                frames = self._drain()
            return frames

    def _drain(self) -> list[Frame]:
        """Pull every complete frame out of libpq, reading the socket once.

        Frames that arrived before a failure (a bad frame, the server's
        error, a broken connection) are returned first; the failure is raised
        by the next call.
        """
        # The hot path: the lock and the drain directly, not through _call.
        with self._lock:
            if self._state is _State.ABANDONED:
                raise ConnectionLost("the connection was closed")
            items, raw, outcome = self._drain_copy_data(
                self._pgconn.handle, self.MAX_BATCH, self._extra_reads
            )
            if outcome == libpq.DRAIN_LOST:
                # Recorded in self._error: raised once these frames are out.
                self._end_lost(self._pgconn.lost("reading the replication stream"))
        frames: list[Any] = items  # Frame objects once the bytes are parsed, in place
        try:
            if raw:  # keepalives and anything malformed come as bytes
                for i, item in enumerate(items):
                    if type(item) is bytes:
                        try:
                            frames[i] = parse_frame(item)
                        except ReplicantError:
                            del frames[i:]  # the bad frame and the rest: never delivered
                            raise
            if outcome == libpq.DRAIN_END_OF_COPY:
                self._finish_copy()
        except ReplicantError as error:
            if self._error is None:
                self._error = error
                self._move(_State.ENDED)
        if self._error is not None and not frames:
            raise self._error
        return frames

    # -- writing

    def send_status(
        self,
        written: int,
        flushed: int,
        applied: int,
        *,
        reply: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Send a Standby Status Update. Safe while another thread reads.

        ``written``/``flushed``/``applied`` are LSNs; ``reply`` asks the
        server for a keepalive back. Raises :class:`ConnectionLost` if the
        connection is broken or the update cannot be sent within ``timeout``
        seconds.
        """
        message = encode_status_update(written, flushed, applied, reply=reply)
        self._send(message, timeout, "sending a status update")

    def _send(self, message: bytes, timeout: float, doing: str) -> None:
        queued = False

        def put(pgconn: libpq.PGconn) -> bool:
            nonlocal queued
            if not queued:
                self._check_open()
                # False: libpq's output buffer is full; wait until the socket takes more.
                queued = pgconn.put_copy_data(message, doing)
            return queued and pgconn.flush(doing)

        self._until(lambda: self._call(put), time.monotonic() + timeout, write=True, doing=doing)

    # -- ending

    def stop(self, timeout: float = 10.0) -> None:
        """End the stream gracefully and leave the connection usable.

        Sends CopyDone, discards whatever the server still sends until its
        own CopyDone, and reads the final results. Frames discarded here
        were never acknowledged, so the server sends them again next time.
        If the server does not finish within ``timeout`` seconds the
        connection is closed and :class:`ConnectionLost` raised.
        """
        deadline = time.monotonic() + timeout
        with self._read_lock:
            if self.ended:
                return
            self._move(_State.STOPPING)

            def queue_copy_done(pgconn: libpq.PGconn) -> bool:
                self._check_open()
                return pgconn.put_copy_end("sending CopyDone")

            def over() -> bool:
                # Frames still arriving were never acknowledged, so the
                # server sends them again next time: drop them.
                self._drain()
                return self._state in _OVER

            self._until(
                lambda: self._call(queue_copy_done), deadline, write=True, doing="sending CopyDone"
            )
            try:
                self._until(
                    lambda: self._call(lambda pgconn: pgconn.flush("sending CopyDone")),
                    deadline,
                    write=True,
                    doing="sending CopyDone",
                )
                self._until(
                    over,
                    deadline,
                    write=False,
                    doing="waiting for the server to end the stream",
                )
            except ConnectionLost:
                self._connection.close()
                raise

    def _finish_copy(self) -> None:
        """The COPY is over: collect the final results and restore the connection.

        Raises the server's error if it sent one, or :class:`ConnectionLost`
        if the server ended a stream we did not stop.
        """
        error = self._collect_results(
            time.monotonic() + 30.0, "finishing the replication stream", "replication stream failed"
        )
        stopping = self._state is _State.STOPPING
        self._move(_State.ENDED)
        self._restore_blocking()
        self._connection._stream_closed(self)
        if error is None and not stopping:
            # A CopyDone we did not ask for: the server is shutting down.
            error = ConnectionLost("the server ended the replication stream")
        if error is not None:
            self._error = error
            raise error

    def _restore_blocking(self) -> None:
        with self._lock:
            if self._state is not _State.ABANDONED:
                # A connection too broken to switch back is its owner's to close;
                # the stream's own outcome is already decided.
                with contextlib.suppress(ConnectionLost):
                    self._pgconn.set_nonblocking(False, "restoring blocking mode")

    def _abandon(self) -> None:
        """The connection is about to close: never touch the PGconn again."""
        with self._lock:
            self._move(_State.ABANDONED)

    # -- state

    def _check_open(self) -> None:
        if self._state is _State.ABANDONED:
            raise ConnectionLost("the connection was closed")
        if self._error is not None:
            raise self._error
        if self._state in _OVER:
            raise UsageError("the replication stream has ended")

    def _end_lost(self, error: ConnectionLost) -> None:
        """End the stream as lost with ``error``. Call with the lock held."""
        self._move(_State.ENDED)
        self._error = error

    def _result_error(self, result: libpq.Result, doing: str) -> ReplicantError:
        """The error a failed result reports."""
        message = result.message or "unknown error"
        with self._lock:
            broken = self._state is not _State.ABANDONED and self._pgconn.is_bad()
        if result.sqlstate is None and broken:
            # libpq's own report of a broken connection, not the server's.
            return ConnectionLost(f"{doing}: {message}")
        return classify_server_error(
            f"{doing}: {message}", result.sqlstate, result.detail, result.hint
        )
