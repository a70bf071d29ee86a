"""replicant: consume PostgreSQL logical replication streams from plain Python.

What a callback needs is here: :func:`run` and :class:`Consumer`, the
events and :class:`Row` (from :mod:`replicant.changes`), :data:`UNCHANGED`,
:class:`LSN` and every error.
"""

from __future__ import annotations

__version__ = "0.1.0"

from replicant.changes import (
    UNCHANGED,
    Begin,
    BeginPrepare,
    Column,
    Commit,
    CommitPrepared,
    Delete,
    Event,
    Insert,
    Message,
    Origin,
    Prepare,
    RawChange,
    Read,
    Relation,
    RollbackPrepared,
    Row,
    SnapshotBegin,
    SnapshotEnd,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from replicant.errors import (
    ConfigurationError,
    ConnectionLost,
    DecodeError,
    ProtocolError,
    RecordingError,
    ReplicantError,
    ServerError,
    SlotError,
    UsageError,
)
from replicant.health import Health
from replicant.lsn import LSN
from replicant.recording import Recorder, record, replay
from replicant.runtime import Consumer, Progress, Stats, run
from replicant.values import PgArray, PgValue

__all__ = [
    "LSN",
    "UNCHANGED",
    "Begin",
    "BeginPrepare",
    "Column",
    "Commit",
    "CommitPrepared",
    "ConfigurationError",
    "ConnectionLost",
    "Consumer",
    "DecodeError",
    "Delete",
    "Event",
    "Health",
    "Insert",
    "Message",
    "Origin",
    "PgArray",
    "PgValue",
    "Prepare",
    "Progress",
    "ProtocolError",
    "RawChange",
    "Read",
    "Recorder",
    "RecordingError",
    "Relation",
    "ReplicantError",
    "RollbackPrepared",
    "Row",
    "ServerError",
    "SlotError",
    "SnapshotBegin",
    "SnapshotEnd",
    "Stats",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Update",
    "UsageError",
    "__version__",
    "record",
    "replay",
    "run",
]
