"""Helpers shared by the test modules: waiting, thread checks, recording callbacks.

A test module imports what it needs from here (``from tests.helpers import
wait_for, Recorder, running``); no test module imports another.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from replicant import Commit, Consumer, Event, Insert
from replicant.lsn import LSN

__all__ = [
    "Recorder",
    "assert_no_threads_left",
    "confirmed_flush",
    "replicant_threads",
    "running",
    "wait_for",
]


def wait_for(
    condition: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Return once ``condition()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def replicant_threads() -> list[threading.Thread]:
    """The threads replicant started that are still alive (all are named ``replicant-...``)."""
    return [t for t in threading.enumerate() if t.name.startswith("replicant-")]


def assert_no_threads_left(timeout: float = 5.0) -> None:
    """Fail unless every replicant thread has ended within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while replicant_threads():
        assert time.monotonic() < deadline, f"threads left: {replicant_threads()}"
        time.sleep(0.02)


def confirmed_flush(db: Any, slot: str) -> LSN | None:
    """The slot's ``confirmed_flush_lsn`` as the server reports it, or None."""
    rows = db.query(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", slot
    )
    return LSN(rows[0][0]) if rows and rows[0][0] else None


class Recorder:
    """A callback that records every event and acknowledges as it goes.

    By default every event is acknowledged; ``commits_only`` acknowledges
    only at each Commit. ``stop_after(event)`` returning true stops the
    consumer attached as ``recorder.consumer`` (after that event is recorded).
    """

    def __init__(
        self,
        *,
        commits_only: bool = False,
        stop_after: Callable[[Event], bool] | None = None,
    ) -> None:
        self.events: list[Event] = []
        self.acknowledged: LSN | None = None
        self.consumer: Consumer | None = None
        self.commits_only = commits_only
        self._stop_after = stop_after
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> LSN | None:
        with self._lock:
            self.events.append(event)
        if self._stop_after is not None and self._stop_after(event) and self.consumer:
            self.consumer.stop(timeout=0)
        if self.commits_only and not isinstance(event, Commit):
            return None
        self.acknowledged = event.lsn
        return event.lsn

    def kinds(self) -> list[str]:
        """The class names of the events recorded, in order."""
        return [type(e).__name__ for e in self.events]

    def of(self, kind: type[Event]) -> list[Any]:
        """The recorded events of one class, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def inserted_ids(self, column: str = "id") -> list[Any]:
        """``column`` of every Insert recorded, in order."""
        return [e.new[column] for e in self.events if isinstance(e, Insert)]

    def commits(self) -> list[Commit]:
        """The Commit events recorded, in order."""
        return self.of(Commit)


@contextlib.contextmanager
def running(consumer: Consumer, timeout: float = 30.0) -> Iterator[Consumer]:
    """Start ``consumer``; on leaving, stop it and wait for its threads to end.

    The consumer's failure, if any, is raised on leaving (unless the body
    itself raised), so a test cannot pass over a failed stream.
    """
    consumer.start()
    try:
        yield consumer
    except BaseException:
        consumer.stop(timeout)
        raise
    consumer.stop(timeout)
    consumer.join(timeout)
