"""The one native boundary: ctypes bindings to the libpq that psycopg2 links.

psycopg2 opens the connection, so every libpq feature (DSNs, ``.pgpass``,
``sslmode``, SCRAM, GSSAPI, multiple hosts) works as users expect. Once the
stream starts, we drive the COPY BOTH protocol ourselves through these
bindings on ``connection.pgconn_ptr``, because psycopg2's own replication
loop hides keepalives and acknowledges positions on its own.

The library is loaded through ``psycopg2._psycopg``'s own handle: symbol
look-up through it reaches exactly the libpq psycopg2 was built against (the
wheel bundles its own). Loading the system libpq instead would read
psycopg2's ``PGconn`` with a different layout. The import refuses to go on
if the versions differ.

Every function is declared with its full signature: a wrong one is a
segfault, not an exception. ctypes releases the GIL around each call, so
callers must serialise calls on one ``PGconn`` themselves.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import POINTER, c_char, c_char_p, c_int, c_void_p
from typing import Any, Final, NamedTuple, TypeAlias

import psycopg2
import psycopg2._psycopg
import psycopg2.extensions

from replicant import _accel
from replicant.errors import ConnectionLost, ReplicantError
from replicant.lsn import LSN
from replicant.protocol import XLogData

__all__ = [
    "CONNECTION_BAD",
    "CONNECTION_OK",
    "DRAIN_END_OF_COPY",
    "DRAIN_LOST",
    "DRAIN_MORE",
    "PGRES_COMMAND_OK",
    "PGRES_COPY_BOTH",
    "PGRES_COPY_IN",
    "PGRES_COPY_OUT",
    "PGRES_FATAL_ERROR",
    "PGRES_TUPLES_OK",
    "PG_DIAG_MESSAGE_DETAIL",
    "PG_DIAG_MESSAGE_HINT",
    "PG_DIAG_MESSAGE_PRIMARY",
    "PG_DIAG_SQLSTATE",
    "Drain",
    "PGconn",
    "Result",
    "drain",
    "lib",
    "library_version",
]

# ConnStatusType
CONNECTION_OK = 0
CONNECTION_BAD = 1

# ExecStatusType
PGRES_EMPTY_QUERY = 0
PGRES_COMMAND_OK = 1
PGRES_TUPLES_OK = 2
PGRES_COPY_OUT = 3
PGRES_COPY_IN = 4
PGRES_BAD_RESPONSE = 5
PGRES_NONFATAL_ERROR = 6
PGRES_FATAL_ERROR = 7
PGRES_COPY_BOTH = 8

# Error field codes for PQresultErrorField (postgres_ext.h)
PG_DIAG_SEVERITY = ord("S")
PG_DIAG_SQLSTATE = ord("C")
PG_DIAG_MESSAGE_PRIMARY = ord("M")
PG_DIAG_MESSAGE_DETAIL = ord("D")
PG_DIAG_MESSAGE_HINT = ord("H")

PGconn_p = c_void_p
PGresult_p = c_void_p


def _load() -> ctypes.CDLL:
    handle = ctypes.CDLL(psycopg2._psycopg.__file__)
    signatures: dict[str, tuple[list[type], type | None]] = {
        "PQlibVersion": ([], c_int),
        "PQstatus": ([PGconn_p], c_int),
        "PQsocket": ([PGconn_p], c_int),
        "PQserverVersion": ([PGconn_p], c_int),
        "PQerrorMessage": ([PGconn_p], c_char_p),
        "PQsetnonblocking": ([PGconn_p, c_int], c_int),
        "PQisnonblocking": ([PGconn_p], c_int),
        "PQisBusy": ([PGconn_p], c_int),
        "PQconsumeInput": ([PGconn_p], c_int),
        "PQflush": ([PGconn_p], c_int),
        "PQsendQuery": ([PGconn_p, c_char_p], c_int),
        "PQgetResult": ([PGconn_p], PGresult_p),
        "PQresultStatus": ([PGresult_p], c_int),
        "PQresultErrorMessage": ([PGresult_p], c_char_p),
        "PQresultErrorField": ([PGresult_p, c_int], c_char_p),
        "PQclear": ([PGresult_p], None),
        "PQgetCopyData": ([PGconn_p, POINTER(POINTER(c_char)), c_int], c_int),
        "PQputCopyData": ([PGconn_p, c_char_p, c_int], c_int),
        "PQputCopyEnd": ([PGconn_p, c_char_p], c_int),
        "PQfreemem": ([c_void_p], None),
        "PQsslInUse": ([PGconn_p], c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(handle, name)
        function.argtypes = argtypes
        function.restype = restype
    return handle


lib = _load()


def library_version() -> int:
    """The version of the libpq in use, as ``PQlibVersion()`` reports it."""
    return int(lib.PQlibVersion())


def _check_version() -> None:
    ours = library_version()
    theirs = psycopg2.extensions.libpq_version()
    if ours != theirs:
        raise ReplicantError(
            f"libpq found through psycopg2 is version {ours}, but psycopg2 was built "
            f"against {theirs}: refusing to drive its connection with a different "
            "library. Reinstall psycopg2 (or psycopg2-binary) cleanly."
        )


_check_version()


# -- one connection as an object ------------------------------------------------


class Result(NamedTuple):
    """One result libpq reported (already freed): its status and, for a failed
    one, the server's error fields (``message`` falls back on libpq's own text)."""

    status: int
    message: str | None = None
    sqlstate: str | None = None
    detail: str | None = None
    hint: str | None = None

    @property
    def failed(self) -> bool:
        """True unless the command succeeded or a COPY began."""
        return self.status not in _SUCCESS


_SUCCESS: Final = frozenset(
    {PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_COPY_OUT, PGRES_COPY_IN, PGRES_COPY_BOTH}
)


class PGconn:
    """The libpq calls replicant makes on one ``PGconn``, as methods.

    Every method is one libpq call (two for :meth:`ready`). Where libpq
    signals a broken connection by its return value, the method raises
    :class:`~replicant.errors.ConnectionLost` with libpq's message, prefixed
    by ``doing``; nothing else raises. The caller serialises calls (libpq
    allows one thread in a connection at a time) and never waits inside one
    while the connection is non-blocking.
    """

    __slots__ = ("handle",)

    def __init__(self, pointer: int) -> None:
        self.handle: Final = c_void_p(pointer)
        """The ``PGconn *`` as ctypes passes it (for :data:`drain`)."""

    def socket(self) -> int:
        """The connection's socket, for ``select()``."""
        return int(lib.PQsocket(self.handle))

    def ssl_in_use(self) -> bool:
        """True when the connection runs over TLS."""
        return bool(lib.PQsslInUse(self.handle))

    def is_bad(self) -> bool:
        """True once libpq considers the connection broken (``CONNECTION_BAD``)."""
        return bool(lib.PQstatus(self.handle) == CONNECTION_BAD)

    def lost(self, doing: str) -> ConnectionLost:
        """The :class:`ConnectionLost` for a failure while ``doing``, in libpq's words."""
        message = (lib.PQerrorMessage(self.handle) or b"").decode("utf-8", "replace").strip()
        return ConnectionLost(f"{doing}: {message or 'connection lost'}")

    def send_query(self, command: str, doing: str) -> None:
        """``PQsendQuery``: send ``command`` without waiting for its results."""
        if not lib.PQsendQuery(self.handle, command.encode()):
            raise self.lost(doing)

    def set_nonblocking(self, on: bool, doing: str) -> None:
        """``PQsetnonblocking``: in non-blocking mode no call waits for the socket."""
        if lib.PQsetnonblocking(self.handle, 1 if on else 0) != 0:
            raise self.lost(doing)

    def ready(self, doing: str) -> bool:
        """Read what the socket holds; True once a whole result is buffered.

        (``PQconsumeInput`` then ``PQisBusy``.) At end of file the server's
        last words (a FATAL ErrorResponse) may already be buffered: then True
        too, for :meth:`get_result` to report them; otherwise the connection
        is lost.
        """
        if not lib.PQisBusy(self.handle):
            return True
        if not lib.PQconsumeInput(self.handle) and lib.PQisBusy(self.handle):
            raise self.lost(doing)
        return not lib.PQisBusy(self.handle)

    def get_result(self) -> Result | None:
        """``PQgetResult``: the next result, read and freed; None when there is no more.

        Waits for input unless :meth:`ready` said a result is buffered.
        """
        result = lib.PQgetResult(self.handle)
        if not result:
            return None
        try:
            status = int(lib.PQresultStatus(result))
            if status in _SUCCESS:
                return Result(status)

            def field(code: int) -> str | None:
                value = lib.PQresultErrorField(result, code)
                return None if value is None else bytes(value).decode("utf-8", "replace")

            message = field(PG_DIAG_MESSAGE_PRIMARY)
            if message is None:
                raw = lib.PQresultErrorMessage(result) or b""
                message = bytes(raw).decode("utf-8", "replace").strip() or "unknown error"
            return Result(
                status,
                message,
                field(PG_DIAG_SQLSTATE),
                field(PG_DIAG_MESSAGE_DETAIL),
                field(PG_DIAG_MESSAGE_HINT),
            )
        finally:
            lib.PQclear(result)

    def put_copy_data(self, data: bytes, doing: str) -> bool:
        """``PQputCopyData``: True when queued, False when libpq's buffer is full."""
        queued = lib.PQputCopyData(self.handle, data, len(data))
        if queued < 0:
            raise self.lost(doing)
        return bool(queued)

    def put_copy_end(self, doing: str) -> bool:
        """``PQputCopyEnd`` (CopyDone): True when queued, False when the buffer is full."""
        queued = lib.PQputCopyEnd(self.handle, None)
        if queued < 0:
            raise self.lost(doing)
        return bool(queued)

    def flush(self, doing: str) -> bool:
        """``PQflush``: True once everything queued is sent, False while some waits."""
        pending = int(lib.PQflush(self.handle))
        if pending < 0:
            raise self.lost(doing)
        return pending == 0


# -- draining the COPY stream ----------------------------------------------------

DRAIN_MORE: Final = 0
"""Drain outcome: nothing more is buffered for now (or the batch is full)."""
DRAIN_END_OF_COPY: Final = 1
"""Drain outcome: the server ended the COPY; collect the results."""
DRAIN_LOST: Final = 2
"""Drain outcome: the connection is broken; the items are what came before."""

Drain: TypeAlias = Callable[[c_void_p, int, int], tuple[list[XLogData | bytes], int, int]]
"""``drain(pgconn, limit, extra_reads) -> (items, raw, outcome)``.

Pulls up to ``limit`` complete CopyData messages out of libpq without
waiting (one read of the socket, plus ``extra_reads`` more when libpq finds
nothing: with TLS, OpenSSL may hold bytes the socket no longer shows). Each
item is an :class:`~replicant.protocol.XLogData`, or a message's bytes for
the caller to parse (keepalives, anything malformed); ``raw`` counts the
bytes items. ``outcome`` is one of the ``DRAIN_*`` values. The caller holds
the lock that serialises calls on the connection, in non-blocking mode.
"""


def _drain_python(pgconn: c_void_p, limit: int, extra_reads: int) -> tuple[list[Any], int, int]:
    """The reference :data:`Drain`: every item is bytes, parsed by the caller."""
    get, free, consume = lib.PQgetCopyData, lib.PQfreemem, lib.PQconsumeInput
    string_at = ctypes.string_at
    buffer = POINTER(c_char)()
    ref = ctypes.byref(buffer)
    payloads: list[Any] = []
    outcome = DRAIN_MORE
    broken = False
    size = 0
    while len(payloads) < limit:
        if size == 0 and not broken and not consume(pgconn):
            broken = True  # EOF: take what is buffered, then report it
        size = get(pgconn, ref, 1)
        if size > 0:
            payloads.append(string_at(buffer, size))
            free(buffer)
        elif size == 0:
            if broken or extra_reads <= 0:
                break
            extra_reads -= 1
        elif size == -1:
            outcome = DRAIN_END_OF_COPY
            break
        else:
            broken = True
            break
    if broken and outcome != DRAIN_END_OF_COPY:
        outcome = DRAIN_LOST
    return payloads, len(payloads), outcome


def _address(function: Any) -> int:
    address = ctypes.cast(function, c_void_p).value
    assert address is not None
    return address


def _compiled_drain(native: Any) -> Drain:
    """The compiled :data:`Drain`: ``native.drain`` with libpq's function addresses bound."""
    compiled_drain = native.drain
    functions = (
        _address(lib.PQconsumeInput),
        _address(lib.PQgetCopyData),
        _address(lib.PQfreemem),
    )

    def drain(pgconn: c_void_p, limit: int, extra_reads: int) -> tuple[list[Any], int, int]:
        assert pgconn.value is not None
        result: tuple[list[Any], int, int] = compiled_drain(
            pgconn.value, *functions, limit, extra_reads, XLogData, LSN
        )
        return result

    return drain


# Chosen once, with every other fast path (see replicant._accel).
drain: Final[Drain] = _drain_python if _accel.compiled is None else _compiled_drain(_accel.compiled)
"""The :data:`Drain` in use: compiled when the process runs compiled."""
