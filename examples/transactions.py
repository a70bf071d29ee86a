"""A transaction-at-a-time consumer: handle each committed transaction as a whole.

Events arrive one by one (``Begin``, the changes, ``Commit``). Many
consumers want whole transactions instead: to write them into another store
atomically, or to act only on what committed together. ``Transactions``
collects the changes between ``Begin`` and ``Commit`` and hands them over at
the commit; the commit's LSN is acknowledged only once the handler has
returned, so a crash in the middle of a transaction re-delivers all of it.

    CREATE TABLE notes (id serial PRIMARY KEY, body text);
    CREATE PUBLICATION notes_pub FOR TABLE notes;

    python examples/transactions.py "dbname=app"

The first run creates the slot ``transactions``, which keeps WAL on the
server until it is dropped; when you are done:

    replicant slot drop "dbname=app" --slot transactions
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable

import replicant
from replicant import LSN, Begin, Commit, Event, Message, Relation

Handler = Callable[[Commit, list[Event]], None]


class Transactions:
    """A change callback that calls ``handler(commit, changes)`` once per transaction."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._changes: list[Event] = []

    def __call__(self, event: Event) -> LSN | None:
        if isinstance(event, Begin):
            self._changes = []
            return None
        if isinstance(event, Commit):
            changes, self._changes = self._changes, []
            self._handler(event, changes)
            return event.lsn  # the whole transaction is done
        if isinstance(event, Message) and not event.transactional:
            return event.lsn  # a message outside any transaction: nothing to collect
        if not isinstance(event, Relation):  # table descriptions are not changes
            self._changes.append(event)
        return None  # nothing is done until the commit


def show(commit: Commit, changes: list[Event]) -> None:
    kinds = collections.Counter(change.kind for change in changes)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    print(f"transaction {commit.xid} committed at {commit.commit_time}: {summary}", flush=True)
    for change in changes:
        print(f"  {change}", flush=True)


if __name__ == "__main__":
    dsn = sys.argv[1] if len(sys.argv) > 1 else ""
    replicant.run(dsn, slot="transactions", publication="notes_pub", callback=Transactions(show))
