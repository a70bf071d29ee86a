"""A fake PostgreSQL server that speaks just enough of the protocol for replicant.

It listens on 127.0.0.1 and serves each connection from a thread: it says no
to SSLRequest and GSSENCRequest, accepts any login (AuthenticationOk, the
usual ParameterStatus messages, BackendKeyData, ReadyForQuery), answers the
queries replicant sends before streaming with canned rows (the slot from
``pg_replication_slots``, IDENTIFY_SYSTEM, SHOW, SET), and answers
START_REPLICATION with CopyBothResponse and then a scripted sequence of
messages: good XLogData frames carrying pgoutput payloads, and whatever
malformed thing a test wants to send.

The ``n``-th connection is served by ``sessions[n]`` (a :class:`Session`);
connections beyond the list are closed as soon as they arrive. Every query
is recorded in ``queries``; a query it has no answer for gets an
ErrorResponse and lands in ``unexpected``. Bounded: each wait has a
timeout and the server stops by itself after ``lifetime`` seconds.

The builders (:func:`xlogdata`, :func:`begin`, :func:`relation`,
:func:`insert`, :func:`commit`, :func:`error_response`, ...) return wire
bytes; :func:`transaction` makes the frames of one whole transaction.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .listener import Listener

__all__ = [
    "Close",
    "FakeServer",
    "Pause",
    "Session",
    "SlotRow",
    "begin",
    "commit",
    "copy_data",
    "error_response",
    "insert",
    "keepalive",
    "relation",
    "transaction",
    "xlogdata",
]

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_PROTOCOL_3 = 196608
_TICK = 0.05

# Type OIDs for RowDescription.
TEXT, NAME, BOOL, INT4, INT8 = 25, 19, 16, 23, 20


# --- wire builders --------------------------------------------------------------------------


def message(kind: bytes, body: bytes = b"") -> bytes:
    """A backend message: type byte, int32 length (counting itself), body."""
    return kind + struct.pack("!I", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def copy_data(payload: bytes) -> bytes:
    """A CopyData message carrying ``payload``."""
    return message(b"d", payload)


def xlogdata(payload: bytes, wal_start: int, wal_end: int | None = None) -> bytes:
    """A CopyData message with an XLogData frame around a plugin ``payload``."""
    end = wal_start if wal_end is None else wal_end
    return copy_data(b"w" + struct.pack("!QQq", wal_start, end, 0) + payload)


def keepalive(wal_end: int, reply: bool = False) -> bytes:
    """A CopyData message with a Primary Keepalive frame."""
    return copy_data(b"k" + struct.pack("!QqB", wal_end, 0, 1 if reply else 0))


def begin(final_lsn: int, xid: int) -> bytes:
    """pgoutput Begin."""
    return b"B" + struct.pack("!QqI", final_lsn, 0, xid)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    """pgoutput Commit."""
    return b"C" + struct.pack("!BQQq", 0, commit_lsn, end_lsn, 0)


def relation(
    relid: int,
    table: str,
    columns: Sequence[tuple[str, int, bool]],
    schema: str = "public",
) -> bytes:
    """pgoutput Relation; ``columns`` are ``(name, type oid, part of the key)``."""
    body = b"R" + struct.pack("!I", relid) + _cstr(schema) + _cstr(table) + b"d"
    body += struct.pack("!H", len(columns))
    for name, oid, key in columns:
        body += struct.pack("!B", 1 if key else 0) + _cstr(name) + struct.pack("!Ii", oid, -1)
    return body


def insert(relid: int, values: Sequence[str | None]) -> bytes:
    """pgoutput Insert with text values (``None`` for NULL)."""
    body = b"I" + struct.pack("!IcH", relid, b"N", len(values))
    for value in values:
        if value is None:
            body += b"n"
        else:
            data = value.encode()
            body += b"t" + struct.pack("!I", len(data)) + data
    return body


def error_response(
    sqlstate: str, text: str, severity: str = "ERROR", detail: str | None = None
) -> bytes:
    """An ErrorResponse message."""
    fields = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate)
    fields += b"M" + _cstr(text)
    if detail is not None:
        fields += b"D" + _cstr(detail)
    return message(b"E", fields + b"\0")


def ready_for_query() -> bytes:
    return message(b"Z", b"I")


RELID = 16385
COLUMNS = (("id", INT4, True), ("v", TEXT, False))


def transaction(
    xid: int,
    lsn: int,
    rows: Sequence[tuple[int, str]],
    *,
    with_relation: bool = True,
    relid: int = RELID,
) -> list[bytes]:
    """The XLogData frames of one transaction inserting ``rows`` into table ``t``.

    Changes sit at ``lsn + 1``, ``lsn + 2``, ...; the commit ends at
    ``lsn + len(rows) + 2``.
    """
    end = lsn + len(rows) + 2
    frames = [xlogdata(begin(end - 1, xid), lsn, lsn)]
    if with_relation:
        frames.append(xlogdata(relation(relid, "t", COLUMNS), 0, lsn))
    for i, (key, value) in enumerate(rows, start=1):
        frames.append(xlogdata(insert(relid, [str(key), value]), lsn + i, lsn + i))
    frames.append(xlogdata(commit(end - 1, end), end, end))
    return frames


# --- scripts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Keep serving the client (reading its messages) for ``seconds`` before going on."""

    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection (an orderly FIN, or a reset with ``reset=True``)."""

    reset: bool = False


Action = bytes | Pause | Close


@dataclass(frozen=True)
class SlotRow:
    """What the fake ``pg_replication_slots`` says about the slot."""

    plugin: str = "pgoutput"
    active: bool = False
    active_pid: int | None = None
    restart_lsn: str | None = "0/1000000"
    confirmed_flush_lsn: str | None = "0/1000000"
    wal_status: str | None = "reserved"


@dataclass
class Session:
    """How one connection is served.

    ``slot``: the slot's row (``None``: the slot does not exist).
    ``start_error``: the ErrorResponse (from :func:`error_response`) to
    answer START_REPLICATION with, instead of streaming. ``script``: what
    to send once streaming. ``silent``: after the script, ignore the client
    entirely (no answer to anything) until it goes away.
    """

    script: Sequence[Action] = ()
    slot: SlotRow | None = field(default_factory=SlotRow)
    start_error: bytes | None = None
    silent: bool = False


class _Closed(Exception):
    """The client went away."""


class _Client:
    """Buffered reading of one client socket, with deadlines."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.buffer = b""
        self.stopping = stopping

    def _fill(self, timeout: float) -> bool:
        if self.stopping.is_set():
            raise _Closed
        try:
            readable, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            raise _Closed from None
        if not readable:
            return False
        try:
            data = self.sock.recv(65536)
        except OSError:
            raise _Closed from None
        if not data:
            raise _Closed
        self.buffer += data
        return True

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Closed
            self._fill(min(remaining, _TICK))
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def message(self, timeout: float) -> tuple[bytes, bytes] | None:
        """The next frontend message ``(type, body)``, or None when none came in time."""
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 5:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._fill(min(remaining, _TICK))
        (length,) = struct.unpack_from("!I", self.buffer, 1)
        body_deadline = time.monotonic() + 10
        while len(self.buffer) < 1 + length:
            if time.monotonic() > body_deadline:
                raise _Closed
            self._fill(_TICK)
        kind, body = self.buffer[:1], self.buffer[5 : 1 + length]
        self.buffer = self.buffer[1 + length :]
        return kind, body

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            raise _Closed from None


class FakeServer(Listener):
    """A scripted fake PostgreSQL server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        sessions: Sequence[Session],
        *,
        slot: str = "fake",
        dbname: str = "fake",
        server_version: str = "15.4",
        lifetime: float = 60.0,
    ) -> None:
        self.sessions = list(sessions)
        self.slot = slot
        self.dbname = dbname
        self.server_version = server_version
        self.connections = 0
        self.queries: list[tuple[int, str]] = []  # (connection number, query)
        self.unexpected: list[str] = []
        self.status_updates = 0
        self.copy_done = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        super().__init__(name="fakeserver", lifetime=lifetime)
        self.stopping = self.closing  # the name the serving code reads
        self._start_accepting()

    @property
    def dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user=fake dbname={self.dbname} "
            "sslmode=disable gssencmode=disable connect_timeout=5"
        )

    def start_commands(self) -> list[str]:
        """The START_REPLICATION commands received, in order."""
        with self._lock:
            return [q for _, q in self.queries if q.startswith("START_REPLICATION")]

    # -- serving (the listener calls these)

    def _accepted(self, sock: socket.socket) -> None:
        with self._lock:
            number = self.connections
            self.connections += 1
            self._sockets.append(sock)
        if number >= len(self.sessions):
            with contextlib.suppress(OSError):
                sock.close()
            return
        thread = threading.Thread(
            target=self._serve,
            args=(sock, number, self.sessions[number]),
            name=f"fakeserver-{number}",
            daemon=True,
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _serving_threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def _drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self, sock: socket.socket, number: int, session: Session) -> None:
        client = _Client(sock, self.stopping)
        try:
            self._startup(client)
            while not self.stopping.is_set():
                if self.expired:
                    break
                incoming = client.message(_TICK * 4)
                if incoming is None:
                    continue
                kind, body = incoming
                if kind == b"X":
                    break
                if kind != b"Q":
                    client.send(error_response("08P01", f"unexpected message {kind!r}"))
                    client.send(ready_for_query())
                    continue
                query = body.rstrip(b"\0").decode("utf-8", "replace")
                with self._lock:
                    self.queries.append((number, query))
                if query.lstrip().upper().startswith("START_REPLICATION"):
                    if session.start_error is not None:
                        client.send(session.start_error + ready_for_query())
                        continue
                    client.send(message(b"W", struct.pack("!bh", 0, 0)))
                    if not self._stream(client, session):
                        break
                    continue
                client.send(self._answer(query, session) + ready_for_query())
        except _Closed:
            pass
        except BaseException as error:  # a bug in the fake: make the test see it
            self.errors.append(error)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _startup(self, client: _Client) -> None:
        deadline = time.monotonic() + 10
        while True:
            (length,) = struct.unpack("!I", client.read_exact(4, deadline))
            body = client.read_exact(length - 4, deadline)
            (code,) = struct.unpack_from("!I", body)
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                client.send(b"N")
                continue
            if code == _CANCEL_REQUEST:
                raise _Closed
            if code != _PROTOCOL_3:
                raise _Closed
            break
        parameters = {
            "server_version": self.server_version,
            "server_encoding": "UTF8",
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "integer_datetimes": "on",
            "standard_conforming_strings": "on",
            "TimeZone": "UTC",
            "IntervalStyle": "postgres",
            "is_superuser": "on",
            "session_authorization": "fake",
            "application_name": "",
        }
        out = message(b"R", struct.pack("!I", 0))
        for key, value in parameters.items():
            out += message(b"S", _cstr(key) + _cstr(value))
        out += message(b"K", struct.pack("!II", 4242, 1234))
        out += ready_for_query()
        client.send(out)

    def _stream(self, client: _Client, session: Session) -> bool:
        """Run the script; False when the connection is to end."""
        for action in session.script:
            if isinstance(action, bytes):
                client.send(action)
            elif isinstance(action, Pause):
                if not self._serve_copy(client, action.seconds):
                    return True
            elif isinstance(action, Close):
                if action.reset:
                    with contextlib.suppress(OSError):
                        client.sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                return False
        if session.silent:
            while not self.stopping.is_set() and time.monotonic() < self._deadline:
                client.message(_TICK * 4)  # read and ignore, until the client goes away
            return False
        self._serve_copy(client, self._deadline - time.monotonic())
        return True

    def _serve_copy(self, client: _Client, seconds: float) -> bool:
        """Answer the client in COPY BOTH mode for ``seconds``; False once the COPY ended."""
        until = time.monotonic() + seconds
        while not self.stopping.is_set():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return True
            incoming = client.message(min(remaining, _TICK * 4))
            if incoming is None:
                continue
            kind, body = incoming
            if kind == b"d":
                if body[:1] == b"r":
                    with self._lock:
                        self.status_updates += 1
                continue
            if kind == b"c":
                with self._lock:
                    self.copy_done += 1
                client.send(message(b"c") + message(b"C", _cstr("COPY 0")) + ready_for_query())
                return False
            if kind == b"X":
                raise _Closed
        return False

    def _answer(self, query: str, session: Session) -> bytes:
        if "pg_replication_slots" in query:
            return self._slot_rows(query, session)
        if "pg_publication" in query:
            return self._publication_rows(query)
        upper = query.strip().upper()
        if upper.startswith("IDENTIFY_SYSTEM"):
            return rows(
                [("systemid", TEXT), ("timeline", INT4), ("xlogpos", TEXT), ("dbname", TEXT)],
                [["7000000000000000001", "1", "0/2000000", self.dbname]],
                "IDENTIFY_SYSTEM",
            )
        match = re.match(r"SHOW\s+(\w+)", query, re.IGNORECASE)
        if match:
            name = match.group(1)
            value = {"server_version_num": "150004", "wal_sender_timeout": "60s"}.get(
                name.lower(), ""
            )
            return rows([(name, TEXT)], [[value]], "SHOW")
        if upper.startswith("SET "):
            return message(b"C", _cstr("SET"))
        with self._lock:
            self.unexpected.append(query)
        return error_response("0A000", f"the fake server cannot answer: {query[:80]}")

    def _slot_rows(self, query: str, session: Session) -> bytes:
        columns = [
            ("slot_name", NAME),
            ("slot_type", TEXT),
            ("plugin", NAME),
            ("database", NAME),
            ("temporary", BOOL),
            ("active", BOOL),
            ("active_pid", INT4),
            ("restart_lsn", TEXT),
            ("confirmed_flush_lsn", TEXT),
            ("wal_status", TEXT),
            ("safe_wal_size", INT8),
            ("two_phase", BOOL),
            ("conflicting", BOOL),
            ("invalidation_reason", TEXT),
            ("inactive_since", TEXT),
            ("failover", BOOL),
            ("synced", BOOL),
            ("two_phase_at", TEXT),
        ]
        slot = session.slot
        data: list[list[str | None]] = []
        if slot is not None and f"'{self.slot}'" in query:
            data.append(
                [
                    self.slot,
                    "logical",
                    slot.plugin,
                    self.dbname,
                    "f",
                    "t" if slot.active else "f",
                    None if slot.active_pid is None else str(slot.active_pid),
                    slot.restart_lsn,
                    slot.confirmed_flush_lsn,
                    slot.wal_status,
                    None,
                    "f",
                    # The fake speaks as PostgreSQL 15: later columns are NULL.
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ]
            )
        return rows(columns, data, "SELECT")

    def _publication_rows(self, query: str) -> bytes:
        """Every publication asked for exists, and holds every table."""
        columns = [("pubname", NAME), ("puballtables", BOOL), ("tables", 1009)]  # text[]
        match = re.search(r"ARRAY\[(.*?)\]", query)
        names = re.findall(r"'((?:[^']|'')*)'", match.group(1)) if match else []
        data: list[list[str | None]] = [[n.replace("''", "'"), "t", "{}"] for n in names]
        return rows(columns, data, "SELECT")


def rows(
    columns: Sequence[tuple[str, int]], data: Sequence[Sequence[str | None]], tag: str
) -> bytes:
    """RowDescription, DataRows and CommandComplete for a text-format result."""
    out = struct.pack("!H", len(columns))
    for name, oid in columns:
        out += _cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, 0)
    result = message(b"T", out)
    for row in data:
        body = struct.pack("!H", len(row))
        for value in row:
            if value is None:
                body += struct.pack("!i", -1)
            else:
                encoded = value.encode()
                body += struct.pack("!i", len(encoded)) + encoded
        result += message(b"D", body)
    count = f" {len(data)}" if tag == "SELECT" else ""
    return result + message(b"C", _cstr(tag + count))
