"""The exception hierarchy.

Every error replicant raises on its own account is a :class:`ReplicantError`.
A user's callback exception is never wrapped: it comes out as it was raised.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionLost",
    "DecodeError",
    "ProtocolError",
    "RecordingError",
    "ReplicantError",
    "ServerError",
    "SlotError",
    "UsageError",
]


class ReplicantError(Exception):
    """Root of every error replicant raises itself."""


class ConfigurationError(ReplicantError, ValueError):
    """Bad arguments: a malformed LSN, an invalid slot name, a missing option."""


class ProtocolError(ReplicantError):
    """The server (or something pretending to be it) sent bytes we cannot parse.

    ``position`` is the byte offset inside the offending payload where parsing
    failed, when known.
    """

    def __init__(self, message: str, *, position: int | None = None) -> None:
        if position is not None:
            message = f"{message} (at byte {position})"
        super().__init__(message)
        self.position = position


class DecodeError(ProtocolError):
    """An output plugin's payload could not be turned into events."""


class RecordingError(ProtocolError):
    """A recording file (``replicant record``) cannot be read: not a recording,
    a format version this replicant does not know, or a damaged record.

    ``position`` is the byte offset in the file where the problem lies.
    """


class ServerError(ReplicantError):
    """The server answered with an error.

    Carries the SQLSTATE and the fields of the server's ErrorResponse so that
    callers can act on them without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.sqlstate:
            text = f"{text} [SQLSTATE {self.sqlstate}]"
        if self.detail:
            text = f"{text}\nDETAIL: {self.detail}"
        if self.hint:
            text = f"{text}\nHINT: {self.hint}"
        return text


class ConnectionLost(ReplicantError):
    """The connection to the server broke (reset, closed, timed out, shut down).

    ``sqlstate`` is set when the server said why before it went (for example
    ``57P01`` when an administrator terminated the connection).
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SlotError(ServerError):
    """The replication slot is missing, in use, invalidated or of the wrong kind."""


class UsageError(ReplicantError, RuntimeError):
    """Misuse: a call out of order, which no retry fixes.

    A consumer started twice or joined before it was started, a stream read
    after it ended. Also a :class:`RuntimeError`.
    """
