"""replicant: consume PostgreSQL logical replication streams from plain Python."""

from __future__ import annotations

__version__ = "0.1.0"

from replicant.errors import (
    ConfigurationError,
    ConnectionLost,
    DecodeError,
    ProtocolError,
    ReplicantError,
    ServerError,
    SlotError,
)
from replicant.lsn import LSN

__all__ = [
    "LSN",
    "ConfigurationError",
    "ConnectionLost",
    "DecodeError",
    "ProtocolError",
    "ReplicantError",
    "ServerError",
    "SlotError",
    "__version__",
]
