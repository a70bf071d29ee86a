"""Helpers shared by the test modules: waiting, thread checks, recording callbacks.

Also what more than one module needs: running the command line
(:func:`run_cli`), comparing decoded values (:func:`same`) and reading a
slot's raw frames (:func:`drain_slot`).

A test module imports what it needs from here (``from tests.helpers import
wait_for, Recorder, running``); no test module imports another.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from replicant import Commit, Consumer, Event, Insert
from replicant.connection import ReplicationConnection
from replicant.lsn import LSN
from replicant.protocol import XLogData

__all__ = [
    "ROOT",
    "Background",
    "Recorder",
    "assert_no_threads_left",
    "cli_env",
    "confirmed_flush",
    "drain_slot",
    "replicant_threads",
    "run_cli",
    "running",
    "same",
    "wait_for",
    "wait_until",
]

#: The repository's root (what the command line runs from).
ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    condition: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Return once ``condition()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds pass; return its last value.

    For a test that asserts with its own message (``assert wait_until(...), why``).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(0.01)
    return True


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


# --- the command line


def cli_env() -> dict[str, str]:
    """The environment for ``python -m replicant``: this checkout importable, no PG* variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Connection defaults must come from the command line, not the caller.
    for key in [k for k in env if k.startswith("PG")]:
        del env[key]
    return env


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m replicant ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "replicant", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=ROOT,
        check=False,
    )


# --- values and frames


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type; NaNs equal; Decimals with the same digits and scale."""
    if isinstance(a, list) and isinstance(b, list):
        if getattr(a, "lower_bounds", ()) != getattr(b, "lower_bounds", ()):
            return False
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)) and a.tzinfo is not None:
        return a == b and b.tzinfo is not None
    return bool(a == b)


def drain_slot(dsn: str, slot: str, commits: int) -> list[list[Any]]:
    """Every XLogData of ``slot`` up to its ``commits``-th Commit: data (hex), start, sent."""
    frames: list[list[Any]] = []
    seen = 0
    options = {"proto_version": "1", "publication_names": '"pub"'}
    with ReplicationConnection.connect(dsn) as connection:
        stream = connection.start(slot, 0, options, plugin="pgoutput")
        deadline = time.monotonic() + 60
        while seen < commits:
            assert time.monotonic() < deadline, f"{len(frames)} frames, {seen} commits"
            for frame in stream.read(0.5):
                if type(frame) is XLogData:
                    assert type(frame.wal_start) is LSN and type(frame.wal_end) is LSN
                    frames.append([frame.data.hex(), int(frame.wal_start), frame.send_time > 0])
                    seen += frame.data[:1] == b"C"
        stream.stop()
    return frames


class Background:
    """``python -m replicant ARGS`` in the background; stderr collected, stdout as asked."""

    def __init__(self, *args: str, read_stdout: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "replicant", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=ROOT,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        streams = [(self.proc.stderr, self.stderr)]
        if read_stdout:
            streams.append((self.proc.stdout, self.stdout))
        self._threads = [
            threading.Thread(target=self._collect, args=pair, daemon=True) for pair in streams
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
