"""The simplest consumer: print every change, and resume after the last one on restart.

Set up a table and a publication first (in psql):

    CREATE TABLE notes (id serial PRIMARY KEY, body text);
    CREATE PUBLICATION notes_pub FOR TABLE notes;

Then run it, make some changes in psql, and stop it with Ctrl-C:

    python examples/print_changes.py "dbname=app"

Run it again: it resumes right after the last change it printed. The slot
(``print_changes``) is created on the first run; drop it when you are done
(``replicant slot drop "dbname=app" --slot print_changes``): an abandoned slot
keeps WAL on the server.
"""

from __future__ import annotations

import sys

import replicant
from replicant import LSN, Event


def on_change(event: Event) -> LSN:
    print(event, flush=True)
    return event.lsn  # "everything up to here is processed"


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else ""  # "" means: the PG* environment variables
    replicant.run(dsn, slot="print_changes", publication="notes_pub", callback=on_change)
