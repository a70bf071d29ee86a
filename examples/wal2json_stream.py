"""Streaming with wal2json instead of pgoutput.

wal2json is a separate server extension (Debian: ``postgresql-15-wal2json``).
It needs no publication: it decodes every table, unless told otherwise with
its own options (``add-tables``, ``filter-tables``, ...), which replicant
passes through. The events are the same as with pgoutput: ``Insert``,
``Update``, ``Delete`` with typed values, framed by ``Begin`` and ``Commit``.
Servers from the minor releases of November 2026 on (15.19, 18.6, ...) also
need it listed in ``output_plugin_libraries`` (``postgresql.conf``:
``output_plugin_libraries = 'pgoutput, test_decoding, wal2json'``, then reload).

    CREATE TABLE notes (id serial PRIMARY KEY, body text);

    python examples/wal2json_stream.py "dbname=app"

The first run creates the slot ``wal2json_example``, which keeps WAL on the
server until it is dropped; when you are done:

    replicant slot drop "dbname=app" --slot wal2json_example
"""

from __future__ import annotations

import sys

import replicant
from replicant import LSN, Delete, Event, Insert, Update


def on_change(event: Event) -> LSN:
    if isinstance(event, (Insert, Update)):
        print(f"{event.kind} {event.schema}.{event.table}: {dict(event.new)}", flush=True)
    elif isinstance(event, Delete):
        print(f"{event.kind} {event.schema}.{event.table}: key {dict(event.key)}", flush=True)
    else:
        print(event, flush=True)
    return event.lsn


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else ""
    replicant.run(
        dsn,
        slot="wal2json_example",
        plugin="wal2json",
        # wal2json's own options, passed as they are: only the public schema.
        options={"add-tables": "public.*"},
        callback=on_change,
    )
