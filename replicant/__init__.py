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
from replicant.runtime import Consumer, Progress, Stats, WalProgress, run
from replicant.values import PgArray, PgValue

__all__ = [
    "LSN",
    "ConfigurationError",
    "ConnectionLost",
    "Consumer",
    "DecodeError",
    "PgArray",
    "PgValue",
    "Progress",
    "ProtocolError",
    "ReplicantError",
    "ServerError",
    "SlotError",
    "Stats",
    "WalProgress",
    "__version__",
    "run",
]
