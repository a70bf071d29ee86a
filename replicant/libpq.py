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
from typing import Any, Final, TypeAlias

import psycopg2
import psycopg2._psycopg
import psycopg2.extensions

from replicant import _accel
from replicant.errors import ReplicantError
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
