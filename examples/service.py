"""A service that consumes in a background thread and stops cleanly on SIGTERM.

The consumer runs in its own threads (``Consumer.start()``); the main thread
stays free for the service's own work, here a health line every few
seconds. SIGTERM (what ``systemctl stop``, ``docker stop`` and Kubernetes
send) or Ctrl-C stops it gracefully: the change in hand is finished, the
server is told how far the service got, and the process exits 0. If the
consumer fails, the service exits with the error instead of running on
without it.

    CREATE TABLE notes (id serial PRIMARY KEY, body text);
    CREATE PUBLICATION notes_pub FOR TABLE notes;

    python examples/service.py "dbname=app"

The first run creates the slot ``service``; it keeps WAL on the server for
as long as it exists. When the service is retired, drop it:

    replicant slot drop "dbname=app" --slot service
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
from types import FrameType

import replicant
from replicant import LSN, Delete, Event, Insert, Update


class ChangeCounter:
    """The change callback: counts changes per table (a stand-in for real work)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, event: Event) -> LSN:
        # Runs in the consumer's reader thread, one event at a time, in order.
        if isinstance(event, (Insert, Update, Delete)):
            self.counts[f"{event.kind} {event.schema}.{event.table}"] += 1
            print(
                f"service: {event.kind} {event.schema}.{event.table} {event.key.to_dict()}",
                flush=True,
            )
        return event.lsn


def main(dsn: str) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the main loop below does the stopping

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    counter = ChangeCounter()
    consumer = replicant.Consumer(dsn, slot="service", publication="notes_pub", callback=counter)
    consumer.start()
    print("service: started", flush=True)
    try:
        # The service's own work. Waking up every few seconds also notices
        # a consumer that ended on its own (a failure).
        while consumer.running and not stop.wait(2.0):
            progress = consumer.progress
            print(
                f"service: healthy; {consumer.stats.events} events, "
                f"acknowledged up to {progress.flushed}",
                flush=True,
            )
    finally:
        consumer.stop(timeout=30)
    consumer.join()  # raises the failure that ended the consumer, if any
    print(
        f"service: stopped cleanly at {consumer.progress.flushed}; {dict(counter.counts)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
