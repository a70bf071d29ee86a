"""Sinks: destinations for events, and the writer that acknowledges only what they made durable.

:class:`Sink` is the protocol a destination implements (``write``,
``flush``, ``close``); :class:`SinkWriter` drives one for a consumer: it
owns the flush timer and the acknowledgement watermarks, so a new
destination is one class. :class:`JsonLinesSink` writes JSON Lines (or
text) to a file or standard output; it is what ``replicant stream`` uses.
For example::

    from replicant.sinks import JsonLinesSink, SinkWriter

    with SinkWriter(JsonLinesSink("changes.jsonl"), flush_interval=10) as writer:
        writer.consumer("dbname=app", slot="app", publication="app_pub").run()
"""

from __future__ import annotations

from replicant.sinks.base import Sink, SinkError, SinkWriter, is_boundary, resume_lsn
from replicant.sinks.jsonlines import JsonLinesSink
from replicant.sinks.postgres import PostgresSink
from replicant.sinks.sqlite import SQLiteSink

__all__ = [
    "JsonLinesSink",
    "PostgresSink",
    "SQLiteSink",
    "Sink",
    "SinkError",
    "SinkWriter",
    "is_boundary",
    "resume_lsn",
]
