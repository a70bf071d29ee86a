"""A reusable write workload and an in-memory mirror of the tables it writes.

:class:`Workload` runs in a thread of its own: many small transactions
(one insert, update or delete on ``w_small``) with a large one every so often
(thousands of inserts into ``w_large``, bulk updates, bulk deletes, a
TRUNCATE). For every transaction it knows to have committed it records the
transaction id and how many row changes it made; a transaction whose COMMIT
got no answer (the server went away) is recorded as uncertain. It survives
server restarts: it reconnects and goes on.

:class:`Mirror` is a change callback: it collects each transaction's events
between Begin and Commit and applies them at Commit to dictionaries keyed by
primary key. A Begin that arrives while a transaction is still open means
the stream was cut in the middle of one and it comes again from its start;
the half is thrown away and counted in ``restarted``. At the end,
:func:`verify` compares the mirror with ``SELECT * FROM table ORDER BY id``
and with the workload's record: every committed transaction delivered, with
all of its changes, and the tables alike.

:func:`record_result` keeps a small report of each fault tried (recovery
time, lost changes) in a file, printed at the end of the fault modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from replicant.changes import UNCHANGED, Begin, Commit, Delete, Event, Insert, Truncate, Update
from replicant.lsn import LSN

__all__ = [
    "PUBLICATION",
    "TABLES",
    "FaultResult",
    "Mirror",
    "Verdict",
    "Workload",
    "format_report",
    "record_result",
    "report_path",
    "server_tables",
    "setup_schema",
    "verify",
]

TABLES = ("w_small", "w_large")
PUBLICATION = "w_pub"

SCHEMA = (
    "CREATE TABLE w_small (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL)",
    "CREATE TABLE w_large (id bigint PRIMARY KEY, payload text NOT NULL)",
    f"CREATE PUBLICATION {PUBLICATION} FOR TABLE w_small, w_large",
)

Connect = Callable[[], psycopg2.extensions.connection]


def setup_schema(execute: Callable[[str], Any]) -> None:
    """Create the workload's tables and the publication ``w_pub`` through ``execute``."""
    for statement in SCHEMA:
        execute(statement)


# --- the workload -------------------------------------------------------------------------


class Workload:
    """Writes transactions from a thread until stopped.

    ``connect`` opens a new psycopg2 connection to the database.
    ``large_every``: one large transaction after that many small ones;
    ``large_rows``: rows per bulk insert; ``pause``: seconds between
    transactions; ``max_transactions`` bounds the whole run.

    After :meth:`stop`: ``expected`` maps the (32-bit) xid of every
    transaction that surely committed to its number of row changes
    (a TRUNCATE counts as one); ``uncertain`` holds xids whose COMMIT got no
    answer; ``committed`` counts the sure ones.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        seed: int = 0,
        large_every: int = 40,
        large_rows: int = 1500,
        pause: float = 0.0,
        max_transactions: int = 20000,
    ) -> None:
        self._connect = connect
        self._random = random.Random(seed)
        self.large_every = large_every
        self.large_rows = large_rows
        self.pause = pause
        self.max_transactions = max_transactions
        self.expected: dict[int, int] = {}
        self.uncertain: set[int] = set()
        self.committed = 0
        self.large_committed = 0
        self.reconnects = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live_small: list[int] = []
        self._next_small = 1
        self._next_large = 1
        self._large_kind = 0
        self._conn: psycopg2.extensions.connection | None = None

    # -- control

    def start(self) -> Workload:
        self._thread = threading.Thread(target=self._run, name="test-workload", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the transaction in flight; re-raise a failure of the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the workload did not stop")
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        if self.failure is not None:
            raise self.failure

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_committed(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` transactions have committed (or the writer ended)."""
        deadline = time.monotonic() + timeout
        while self.committed < count and self.running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.committed} of {count} transactions committed")
            time.sleep(0.01)

    def wait_large(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` large transactions have committed."""
        deadline = time.monotonic() + timeout
        while self.large_committed < count and self.running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.large_committed} large transactions committed")
            time.sleep(0.01)

    def run_transactions(self, count: int) -> None:
        """Write ``count`` transactions in the calling thread (no restarts expected)."""
        for _ in range(count):
            self._one_transaction(self._connection())

    # -- the writer thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.committed < self.max_transactions:
                try:
                    conn = self._connection()
                except psycopg2.OperationalError:
                    # The server is restarting: try again shortly.
                    self._stop.wait(0.05)
                    continue
                try:
                    self._one_transaction(conn)
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    self._drop_connection()
                    self.reconnects += 1
                    continue
                if self.pause:
                    self._stop.wait(self.pause)
        except BaseException as error:
            self.failure = error

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._conn.autocommit = False
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _one_transaction(self, conn: psycopg2.extensions.connection) -> None:
        large = self.large_every > 0 and (self.committed + 1) % (self.large_every + 1) == 0
        with conn.cursor() as cur:
            try:
                changes, after = self._large(cur) if large else self._small(cur)
                cur.execute("SELECT pg_current_xact_id()::text")
                row = cur.fetchone()
                assert row is not None
                xid = int(row[0]) & 0xFFFFFFFF
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                raise
            except psycopg2.Error:
                conn.rollback()
                return
        try:
            conn.commit()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if changes:
                self.uncertain.add(xid)
            raise
        if changes:
            self.expected[xid] = changes
        after()
        self.committed += 1
        if large:
            self.large_committed += 1

    def _small(self, cur: psycopg2.extensions.cursor) -> tuple[int, Callable[[], None]]:
        rnd = self._random
        choice = rnd.random()
        live = self._live_small
        if choice < 0.5 or len(live) < 20:
            new_id = self._next_small
            cur.execute(
                "INSERT INTO w_small VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                (new_id, f"row {new_id} " + "x" * rnd.randrange(0, 200)),
            )

            def inserted() -> None:
                self._next_small = new_id + 1
                live.append(new_id)

            return cur.rowcount, inserted
        index = rnd.randrange(len(live))
        target = live[index]
        if choice < 0.8:
            cur.execute(
                "UPDATE w_small SET v = %s, n = n + 1 WHERE id = %s",
                (f"updated {rnd.random():.6f}", target),
            )
            return cur.rowcount, _nothing
        cur.execute("DELETE FROM w_small WHERE id = %s", (target,))

        def deleted() -> None:
            with contextlib.suppress(ValueError):
                live.remove(target)

        return cur.rowcount, deleted

    def _large(self, cur: psycopg2.extensions.cursor) -> tuple[int, Callable[[], None]]:
        kind = self._large_kind % 6
        first = self._next_large
        rows = self.large_rows
        if kind in (0, 1, 3, 4):
            cur.execute(
                "INSERT INTO w_large SELECT g, repeat(md5(g::text), 3) "
                "FROM generate_series(%s::bigint, %s::bigint) g ON CONFLICT DO NOTHING",
                (first, first + rows - 1),
            )
            changes = cur.rowcount
            if kind == 1:
                cur.execute("UPDATE w_small SET n = n + 1 WHERE id %% 7 = %s", (first % 7,))
                changes += cur.rowcount
            if kind == 4:
                cur.execute("DELETE FROM w_large WHERE id < %s AND id %% 3 = 0", (first,))
                changes += cur.rowcount
        elif kind == 2:
            cur.execute("UPDATE w_large SET payload = 'bulk ' || id WHERE id % 5 = 1")
            changes = cur.rowcount
        else:
            cur.execute("TRUNCATE w_large")
            changes = 1

        def done() -> None:
            self._large_kind += 1
            if kind in (0, 1, 3, 4):
                self._next_large = first + rows

        return changes, done


def _nothing() -> None:
    return None


# --- the mirror ---------------------------------------------------------------------------


class Mirror:
    """A change callback that keeps an in-memory copy of the replicated tables.

    Changes are applied at Commit, a transaction at a time; the callback
    acknowledges each Commit's LSN. ``commits`` lists ``(xid, changes,
    lsn)`` for every Commit seen (repeats included); ``restarted`` counts
    transactions cut in the middle and begun again; ``orphans`` counts
    changes that arrived outside any transaction (there must be none).
    ``generation`` (optional) is called on every event and its value noted
    with the time of the first event that saw it: with
    ``lambda: consumer.stats.reconnects`` that tells when the first event
    after each reconnect arrived.
    """

    def __init__(self, generation: Callable[[], int] | None = None) -> None:
        self.tables: dict[str, dict[Any, dict[str, Any]]] = {name: {} for name in TABLES}
        self.commits: list[tuple[int | None, int, LSN]] = []
        self.restarted = 0
        self.orphans = 0
        self.events = 0
        self.generation = generation
        self.first_event_of: dict[int, float] = {}
        self.last_event_at = 0.0
        self._open: tuple[int | None, list[Event]] | None = None
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> LSN | None:
        now = time.monotonic()
        with self._lock:
            self.events += 1
            self.last_event_at = now
            if self.generation is not None:
                self.first_event_of.setdefault(self.generation(), now)
            kind = type(event)
            if kind is Begin:
                if self._open is not None:
                    self.restarted += 1
                self._open = (event.xid, [])
                return None
            if kind in (Insert, Update, Delete, Truncate):
                if self._open is None:
                    self.orphans += 1
                else:
                    self._open[1].append(event)
                return None
            if kind is Commit:
                if self._open is None:
                    self.orphans += 1
                    return event.lsn
                xid, changes = self._open
                self._open = None
                for change in changes:
                    self._apply(change)
                self.commits.append((xid, len(changes), event.lsn))
                return event.lsn
            return None

    def _apply(self, event: Event) -> None:
        if isinstance(event, Insert):
            self.tables.setdefault(event.relation.table, {})[event.new["id"]] = dict(event.new)
        elif isinstance(event, Update):
            table = self.tables.setdefault(event.relation.table, {})
            key = event.new["id"] if event.old is None else event.old["id"]
            previous = table.pop(key, {})
            row = {
                name: previous.get(name) if value is UNCHANGED else value
                for name, value in event.new.items()
            }
            table[event.new["id"]] = row
        elif isinstance(event, Delete):
            self.tables.setdefault(event.relation.table, {}).pop(event.old["id"], None)
        elif isinstance(event, Truncate):
            for relation in event.relations:
                self.tables.setdefault(relation.table, {}).clear()

    def committed_xids(self) -> set[int | None]:
        with self._lock:
            return {xid for xid, _, _ in self.commits}

    def snapshot(self) -> dict[str, dict[Any, dict[str, Any]]]:
        with self._lock:
            return {name: dict(rows) for name, rows in self.tables.items()}

    def recovered_at(self, generation: int) -> float | None:
        """When the first event of a generation above ``generation`` arrived."""
        with self._lock:
            times = [t for g, t in self.first_event_of.items() if g > generation]
        return min(times) if times else None


def server_tables(
    conn: psycopg2.extensions.connection, tables: Iterable[str] = TABLES
) -> dict[str, dict[Any, dict[str, Any]]]:
    """Each table's rows, ``SELECT * FROM table ORDER BY id``, keyed by id."""
    result: dict[str, dict[Any, dict[str, Any]]] = {}
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [column.name for column in cur.description or ()]
            result[table] = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    conn.rollback()
    return result


@dataclass
class Verdict:
    """What :func:`verify` found."""

    lost_transactions: int = 0  # committed, never delivered
    lost_changes: int = 0  # their changes, plus rows that differ at the end
    half_transactions: int = 0  # delivered with a change count other than committed
    differing_rows: int = 0
    repeated_transactions: int = 0  # delivered more than once
    orphans: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost_transactions
            or self.lost_changes
            or self.half_transactions
            or self.differing_rows
            or self.orphans
        )


def verify(mirror: Mirror, workload: Workload, conn: psycopg2.extensions.connection) -> Verdict:
    """Compare the mirror with the server's tables and with what the workload committed."""
    verdict = Verdict(orphans=mirror.orphans)
    with mirror._lock:
        commits = list(mirror.commits)
    seen: dict[int | None, list[int]] = {}
    for xid, changes, _lsn in commits:
        seen.setdefault(xid, []).append(changes)
    for xid, expected in workload.expected.items():
        counts = seen.get(xid)
        if counts is None:
            verdict.lost_transactions += 1
            verdict.lost_changes += expected
            if len(verdict.examples) < 5:
                verdict.examples.append(f"xid {xid} ({expected} changes) never delivered")
            continue
        wrong = [c for c in counts if c != expected]
        if wrong:
            verdict.half_transactions += 1
            if len(verdict.examples) < 5:
                verdict.examples.append(f"xid {xid}: {wrong} changes delivered, {expected} made")
    verdict.repeated_transactions = sum(1 for counts in seen.values() if len(counts) > 1)
    actual = server_tables(conn)
    mine = mirror.snapshot()
    for table, rows in actual.items():
        copy = mine.get(table, {})
        for key in rows.keys() | copy.keys():
            if rows.get(key) != copy.get(key):
                verdict.differing_rows += 1
                if len(verdict.examples) < 5:
                    verdict.examples.append(
                        f"{table} id {key}: server {rows.get(key)!r}, mirror {copy.get(key)!r}"
                    )
    verdict.lost_changes += verdict.differing_rows
    return verdict


def wait_converged(
    mirror: Mirror,
    workload: Workload,
    connect: Connect,
    timeout: float = 60.0,
) -> Verdict:
    """Wait until the mirror matches the server (or ``timeout``); return the last verdict."""
    deadline = time.monotonic() + timeout
    conn = connect()
    try:
        while True:
            committed = mirror.committed_xids()
            if all(xid in committed for xid in workload.expected):
                verdict = verify(mirror, workload, conn)
                if verdict.ok or time.monotonic() > deadline:
                    return verdict
            elif time.monotonic() > deadline:
                return verify(mirror, workload, conn)
            time.sleep(0.1)
    finally:
        conn.close()


# --- the report ---------------------------------------------------------------------------


@dataclass
class FaultResult:
    """One fault tried: how long until events flowed again, and what was lost."""

    fault: str
    server: str
    recovery_s: float | None  # fault cleared -> first event on a new connection
    outage_s: float | None  # fault injected -> first event on a new connection
    reconnects: int
    lost_changes: int
    transactions: int
    repeated: int
    restarted: int
    note: str = ""


def report_path() -> Path:
    """Where the fault report is kept (``$REPLICANT_FAULT_REPORT`` or the temp dir)."""
    configured = os.environ.get("REPLICANT_FAULT_REPORT")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "replicant-fault-report.jsonl"


_report_lock = threading.Lock()


def record_result(result: FaultResult) -> None:
    """Add (or replace, by fault name) a row of the fault report."""
    path = report_path()
    with _report_lock:
        rows: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows[row["fault"]] = row
        rows[result.fault] = asdict(result)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows.values()))


def format_report() -> str:
    """The fault report as a text table."""
    try:
        lines = report_path().read_text().splitlines()
    except OSError:
        return "(no faults recorded)"
    rows = [json.loads(line) for line in lines if line.strip()]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = (
        f"{'fault':<42} {'server':<6} {'recovery s':>10} {'outage s':>9} {'reconn':>6} "
        f"{'txns':>6} {'repeat':>6} {'cut':>4} {'lost':>5}  note"
    )
    out = [header, "-" * len(header)]
    for row in rows:
        out.append(
            f"{row['fault']:<42} {row['server']:<6} {seconds(row['recovery_s']):>10} "
            f"{seconds(row['outage_s']):>9} {row['reconnects']:>6} {row['transactions']:>6} "
            f"{row['repeated']:>6} {row['restarted']:>4} {row['lost_changes']:>5}  {row['note']}"
        )
    return "\n".join(out)
