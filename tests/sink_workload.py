"""The workload and the kill loop the database sink tests share.

Every source transaction inserts one ``txlog`` row (its number): a trigger
on the target copies each applied ``txlog`` row into an append-only
``audit`` table, so the audit shows how many times each source transaction
was applied. Around that, many small transactions on ``items``, a few large
ones (thousands of rows), updates of ``docs`` that leave its TOASTed
``body`` alone, deletes and truncates.

:func:`kill_loop` runs a consumer subprocess into a sink, SIGKILLs it at
random moments while the workload runs, starts it again each time, and
finally lets it catch up and stops it with SIGINT.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2

from replicant.lsn import LSN

__all__ = ["SOURCE_DDL", "Workload", "kill_loop", "kills"]

ROOT = Path(__file__).resolve().parent.parent

SOURCE_DDL = """
CREATE TABLE items (id int PRIMARY KEY, payload text, n int);
CREATE TABLE docs (id int PRIMARY KEY, body text, version int);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE txlog (id bigint PRIMARY KEY, kind text);
"""


def kills(default: int) -> int:
    """How many kills a kill test makes: ``REPLICANT_KILLS``, else ``default``."""
    return int(os.environ.get("REPLICANT_KILLS", default))


class Workload(threading.Thread):
    """Source transactions of mixed kinds, in a thread, each with a txlog row.

    At least ``count`` of them, and on until :meth:`finish`: the kill loop
    ends it after its last kill, so every kill falls in the middle of it.
    """

    def __init__(self, dsn: str, count: int, seed: int) -> None:
        super().__init__(name="sink-workload", daemon=True)
        self.dsn = dsn
        self.count = count
        self.random = random.Random(seed)
        self.done = 0
        self.failure: BaseException | None = None
        self._finish = threading.Event()

    def finish(self) -> None:
        """End once ``count`` transactions are done."""
        self._finish.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:
            self.failure = error

    def _run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        rnd = self.random
        next_item = 1
        with conn, conn.cursor() as cur:
            number = 0
            while number < self.count or not self._finish.is_set():
                number += 1
                pick = rnd.random()
                if number == 1:
                    kind = "docs"
                    cur.execute(
                        "INSERT INTO docs SELECT g, repeat(md5(g::text), 1000), 0 "
                        "FROM generate_series(1, 5) g"
                    )
                elif pick < 0.03:
                    kind = "large"
                    size = rnd.randint(1000, 3000)
                    cur.execute(
                        "INSERT INTO items SELECT g, md5(g::text), 0 "
                        "FROM generate_series(%s, %s) g",
                        (next_item, next_item + size - 1),
                    )
                    next_item += size
                elif pick < 0.05:
                    kind = "bulk-update"
                    cur.execute("UPDATE items SET n = n + 1 WHERE id %% 7 = %s", (number % 7,))
                elif pick < 0.06:
                    kind = "truncate"
                    cur.execute("TRUNCATE items")
                elif pick < 0.14:
                    kind = "toast"  # body unchanged: not sent, must be kept
                    cur.execute(
                        "UPDATE docs SET version = version + 1 WHERE id = %s", (rnd.randint(1, 5),)
                    )
                elif pick < 0.22:
                    kind = "delete"
                    cur.execute(
                        "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY random() "
                        "LIMIT 3)"
                    )
                else:
                    kind = "small"
                    for _ in range(rnd.randint(1, 3)):
                        cur.execute(
                            "INSERT INTO items VALUES (%s, %s, 0)", (next_item, f"small {number}")
                        )
                        next_item += 1
                    cur.execute(
                        "UPDATE items SET n = n + 1, payload = payload || '+' WHERE id = %s",
                        (next_item - 1,),
                    )
                cur.execute("INSERT INTO txlog VALUES (%s, %s)", (number, kind))
                conn.commit()
                self.done = number
                time.sleep(rnd.uniform(0, 0.01))  # a pace the kill loop can interrupt
        conn.close()


def _consumer(code: str, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_loop(
    code: str,
    args: list[str],
    *,
    workload: Workload,
    position: Callable[[], LSN],
    source_end: Callable[[], LSN],
    count: int,
    seed: int,
    timeout: float = 120.0,
) -> int:
    """Run ``code`` (a consumer into a sink) as a subprocess; SIGKILL it ``count`` times.

    Each run is killed at a random moment soon after the target's
    ``position()`` moved past where it was when the run started (so every
    run does some work and dies at a different point of it: in a batch, in
    a large transaction, between commits). Then a last run catches up with
    the finished workload and is stopped with SIGINT. Returns how many runs
    were killed.
    """
    rnd = random.Random(seed)
    killed = 0
    deadline = time.monotonic() + timeout
    workload.start()
    while killed < count:
        start = position()
        proc = _consumer(code, *args)
        # Wait for progress (or the end of the workload), then a little more.
        while position() <= start and workload.is_alive() and proc.poll() is None:
            assert time.monotonic() < deadline, "no progress in the kill loop"
            time.sleep(0.01)
        if proc.poll() is not None:
            raise AssertionError(f"the consumer exited {proc.returncode}: {_stderr(proc)}")
        time.sleep(rnd.uniform(0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed += 1
    workload.finish()
    workload.join(timeout)
    assert workload.failure is None, workload.failure
    end = source_end()
    proc = _consumer(code, *args)
    try:
        while position() < end:
            if proc.poll() is not None:
                raise AssertionError(f"the consumer exited {proc.returncode}: {_stderr(proc)}")
            assert time.monotonic() < deadline + 60, "the last run did not catch up"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    return killed


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode(errors="replace")[-3000:]
