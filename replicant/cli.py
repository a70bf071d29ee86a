"""The ``replicant`` command: stream decoded changes, manage slots, check a server.

``replicant stream`` writes one line per event (JSON Lines, or a compact
text), acknowledging an event only once its line is written and, for a
file, fsynced. ``replicant slot`` creates, drops, lists and describes slots,
``replicant check`` says what stands in the way of logical replication, and
``replicant demo`` shows it all on a throwaway server.

Exit codes: 0 done, 1 error, 2 usage, 130 interrupted (Ctrl-C), 143 stopped
by SIGTERM. Errors are one line on stderr; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import IO, Any

import psycopg2
import psycopg2.extensions

from replicant import __version__
from replicant.changes import (
    Commit,
    CommitPrepared,
    Event,
    Message,
    Prepare,
    RawChange,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStop,
)
from replicant.connection import ReplicationConnection, mask_dsn
from replicant.errors import ConfigurationError, ReplicantError, SlotError
from replicant.formatting import format_json, format_text, human_bytes
from replicant.lsn import LSN
from replicant.runtime import Consumer

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

logger = logging.getLogger("replicant")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

PROG = "replicant"


# --- argument types ------------------------------------------------------------------


def _lsn_arg(text: str) -> LSN:
    try:
        return LSN.parse(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _option_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, not {text!r}")
    return key.strip(), value


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more: {text!r}")
    return value


def _seconds_arg(allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero) or value != value:
            raise argparse.ArgumentTypeError(
                f"must be {'zero or more' if allow_zero else 'more than zero'}: {text!r}"
            )
        return value

    return parse


# --- errors --------------------------------------------------------------------------


class _Usage(Exception):
    """A usage problem found after parsing (exit 2)."""


def _one_line(error: BaseException) -> str:
    if isinstance(error, psycopg2.Error):
        text = (error.pgerror or str(error) or type(error).__name__).strip()
    else:
        text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def _explain(error: BaseException) -> str:
    """The message for ``error``, reworded where the library speaks of Python arguments."""
    text = _one_line(error)
    if isinstance(error, SlotError) and "create_slot=True" in text:
        text = text.replace(
            "(pass create_slot=True to create it)",
            "(add --create-slot, or run: replicant slot create --slot NAME)",
        )
    filename = error.filename if isinstance(error, OSError) else None
    if filename is not None and str(filename) not in text:
        text = f"{filename}: {text}"
    return text


# --- stream ----------------------------------------------------------------------------

# After these events no transaction is open (or the event stands alone): a
# good moment to push the lines out.
_BOUNDARIES = (
    Commit,
    StreamCommit,
    StreamStop,
    StreamAbort,
    Prepare,
    StreamPrepare,
    CommitPrepared,
    RollbackPrepared,
    RawChange,
)


class _Output:
    """Where ``stream`` writes its lines, and how far it may acknowledge.

    The callback (reader thread) writes each line and pushes the buffer out
    at transaction ends; the main thread pushes it out on a timer too. A
    line is acknowledged once it is written to standard output, or, for a
    file, once it is also fsynced (every ``fsync_interval`` seconds; 0 never
    fsyncs and acknowledges once written, as pg_recvlogical does).
    """

    def __init__(
        self,
        path: str | None,
        *,
        fsync_interval: float,
        formatter: Callable[[Event], str],
        relations: bool,
    ) -> None:
        self.path = path
        self.fsync_interval = fsync_interval
        self._format = formatter
        self._relations = relations
        self._lock = threading.Lock()
        self._file: IO[bytes] = self._open() if path is not None else sys.stdout.buffer
        self._dirty = False  # bytes in our buffer
        self._buffered = LSN(0)  # the highest LSN whose line is in our buffer
        self._written = LSN(0)  # ... handed to the operating system
        self._synced = LSN(0)  # ... fsynced (files only)
        self._last_sync = time.monotonic()
        self.lines = 0
        self.broken: BaseException | None = None  # a write that failed at the end

    @property
    def syncs(self) -> bool:
        """True when lines are acknowledged only after an fsync."""
        return self.path is not None and self.fsync_interval > 0

    def _open(self) -> IO[bytes]:
        assert self.path is not None
        return open(self.path, "ab")  # kept open until close()

    # -- the reader thread

    def __call__(self, event: Event) -> LSN | None:
        """The change callback: write the line; return what may be acknowledged."""
        if type(event) is Relation and not self._relations:
            line = None
        else:
            line = (self._format(event) + "\n").encode("utf-8")
        with self._lock:
            if line is not None:
                self._file.write(line)
                self.lines += 1
                self._dirty = True
            if event.lsn > self._buffered:
                self._buffered = event.lsn
            if isinstance(event, _BOUNDARIES) or (
                isinstance(event, Message) and not event.transactional
            ):
                self._push()
                if not self.syncs:
                    return self._written
        return None

    def _push(self) -> None:
        # Under the lock.
        if self._dirty:
            self._file.flush()
            self._dirty = False
        self._written = self._buffered

    # -- the main thread

    def tick(self) -> LSN | None:
        """Push the buffer out and fsync when due; return what may now be acknowledged."""
        with self._lock:
            self._push()
            if not self.syncs:
                return self._written
            if time.monotonic() - self._last_sync < self.fsync_interval:
                return None
            target, fd = self._written, self._file.fileno()
        # fsync outside the lock: it may take a while and the reader must not
        # wait for it. It covers everything written before it was called.
        if target > self._synced:
            os.fsync(fd)
            self._synced = max(self._synced, target)
        self._last_sync = time.monotonic()
        return self._synced

    def sync_all(self) -> LSN | None:
        """Write out and fsync every line so far; return what may be acknowledged.

        Called before each final status update, when the reader has stopped.

        Returns None when the output broke: nothing more is acknowledged.
        """
        try:
            with self._lock:
                self._push()
                if not self.syncs:
                    return self._written
                os.fsync(self._file.fileno())
                self._synced = max(self._synced, self._written)
                return self._synced
        except OSError as error:
            self.broken = error
            return None

    def reopen(self) -> None:
        """Start a new file at the same path (after log rotation): SIGHUP."""
        if self.path is None:
            return
        new = self._open()
        with self._lock:
            self._push()
            old, self._file = self._file, new
            in_old = self._written  # later lines go to the new file, not yet synced
        if self.fsync_interval > 0:
            os.fsync(old.fileno())
            self._synced = max(self._synced, in_old)
            self._last_sync = time.monotonic()
        old.close()
        logger.info("reopened %s", self.path)

    def close(self) -> None:
        """Close the file (standard output stays open)."""
        if self.path is not None:
            try:
                self._file.close()
            except OSError as error:
                self.broken = self.broken or error


class _Signals:
    """Signal handling for ``stream``: Ctrl-C/SIGTERM stop, SIGHUP reopens."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop_signal: int | None = None
        self.reopen = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reopen = True
        elif self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
        else:
            self.stop_signal = signum
        self.wake.set()


_PROGRESS_INTERVAL = 5.0
_TICK = 0.2


def _cmd_stream(args: argparse.Namespace) -> int:
    publications: list[str] = args.publication or []
    if args.plugin == "pgoutput" and not publications:
        raise _Usage("--publication is required with the pgoutput plugin")
    if args.plugin != "pgoutput" and publications:
        raise _Usage(f"--publication is a pgoutput option; {args.plugin} does not take it")
    formatter = format_json if args.format == "json" else format_text
    path = None if args.file in (None, "-") else args.file
    try:
        output = _Output(
            path,
            fsync_interval=args.fsync_interval,
            formatter=formatter,
            relations=args.relations,
        )
    except OSError as error:
        raise ReplicantError(f"cannot open {args.file}: {error.strerror}") from None

    consumer_box: list[Consumer] = []

    def before_final_status() -> None:
        lsn = output.sync_all()
        if lsn is not None and consumer_box:
            consumer_box[0].acknowledge(lsn)

    try:
        consumer = Consumer(
            args.dsn,
            slot=args.slot,
            callback=output,
            plugin=args.plugin,
            publication=publications or None,
            options=dict(args.option or []),
            create_slot=args.create_slot or args.temporary,
            temporary=args.temporary,
            start_lsn=args.start,
            end_lsn=args.end,
            status_interval=args.status_interval,
            reconnect=not args.no_reconnect,
            max_retries=args.max_retries,
            on_stop=before_final_status,
        )
    except ConfigurationError as error:
        output.close()
        raise _Usage(str(error)) from None
    consumer_box.append(consumer)

    signals = _Signals()
    if threading.current_thread() is threading.main_thread():
        signals.install()
    started = time.monotonic()
    try:
        consumer.start()
        _stream_loop(consumer, output, signals, verbose=args.verbose > 0)
        consumer.stop()
        consumer.join()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted again; not waiting for a clean stop", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()
    finally:
        signals.restore()
        output.close()
    if output.broken is not None:
        if isinstance(output.broken, BrokenPipeError):
            return _quiet_broken_pipe()
        raise ReplicantError(f"writing the output failed: {_explain(output.broken)}")
    summary = _summary(consumer, time.monotonic() - started)
    if signals.stop_signal is not None:
        name = "interrupted" if signals.stop_signal == signal.SIGINT else "terminated"
        print(f"{PROG}: {name}; {summary}", file=sys.stderr)
        return EXIT_INTERRUPTED if signals.stop_signal == signal.SIGINT else EXIT_TERMINATED
    if args.verbose:
        print(f"{PROG}: done; {summary}", file=sys.stderr)
    return EXIT_OK


def _quiet_broken_pipe() -> int:
    # The reader of our standard output went away (``| head``): that is how
    # such pipelines end. Point stdout at /dev/null so the interpreter's own
    # final flush does not complain.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK


def _summary(consumer: Consumer, elapsed: float) -> str:
    stats = consumer.stats
    flushed = consumer.progress.flushed
    return (
        f"acknowledged up to {flushed}; {stats.events} events in "
        f"{stats.transactions} transactions, {human_bytes(stats.bytes)} in {elapsed:.1f} s"
    )


def _stream_loop(consumer: Consumer, output: _Output, signals: _Signals, *, verbose: bool) -> None:
    """Run the main thread's chores until the consumer ends or a signal stops it."""
    # Every few seconds; more often when status updates are more frequent.
    interval = min(_PROGRESS_INTERVAL, consumer.status_interval)
    next_progress = time.monotonic() + interval
    last_events, last_time = 0, time.monotonic()
    while consumer.running:
        signals.wake.wait(_TICK)
        signals.wake.clear()
        if signals.reopen:
            signals.reopen = False
            try:
                output.reopen()
            except OSError as error:
                logger.error("cannot reopen %s: %s; still writing the old file", output.path, error)
        if signals.stop_signal is not None:
            return  # the final write-out happens before the final status update
        acknowledged = output.tick()
        if acknowledged is not None:
            consumer.acknowledge(acknowledged)
        now = time.monotonic()
        if verbose and now >= next_progress:
            stats, progress = consumer.stats, consumer.progress
            rate = (stats.events - last_events) / max(now - last_time, 1e-6)
            lag = max(0, progress.received - progress.flushed)
            print(
                f"{PROG}: {stats.events} events ({rate:.0f}/s), {stats.transactions} "
                f"transactions, {human_bytes(stats.bytes)} received; acknowledged "
                f"{progress.flushed}, {human_bytes(lag)} behind the server",
                file=sys.stderr,
                flush=True,
            )
            last_events, last_time = stats.events, now
            next_progress = now + interval


# --- slot --------------------------------------------------------------------------------


def _slot_rows(conn: ReplicationConnection, name: str | None) -> list[dict[str, Any]]:
    version = conn.server_version
    wal = "s.wal_status, s.safe_wal_size" if version >= 130000 else "NULL, NULL"
    two_phase = "s.two_phase" if version >= 140000 else "NULL"
    where = "WHERE s.slot_name = %s" if name is not None else ""
    rows = conn.execute(
        "SELECT s.slot_name, s.slot_type, s.plugin, s.database, s.temporary, s.active,"
        " s.active_pid, s.restart_lsn::text, s.confirmed_flush_lsn::text,"
        f" {wal}, {two_phase}, w.lsn::text,"
        " pg_catalog.pg_wal_lsn_diff(w.lsn, COALESCE(s.confirmed_flush_lsn, s.restart_lsn))"
        "::bigint,"
        " pg_catalog.pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint"
        " FROM pg_catalog.pg_replication_slots s, (SELECT CASE WHEN pg_catalog.pg_is_in_recovery()"
        " THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END"
        f" AS lsn) w {where} ORDER BY s.slot_name",
        (name,) if name is not None else None,
    )
    keys = (
        "slot",
        "slot_type",
        "plugin",
        "database",
        "temporary",
        "active",
        "active_pid",
        "restart_lsn",
        "confirmed_flush_lsn",
        "wal_status",
        "safe_wal_size",
        "two_phase",
        "current_wal_lsn",
        "lag_bytes",
        "retained_bytes",
    )
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _yes(value: Any) -> str:
    return "-" if value is None else "yes" if value else "no"


def _active(row: dict[str, Any]) -> str:
    if not row["active"]:
        return "no"
    return f"yes ({row['active_pid']})" if row["active_pid"] else "yes"


def _safe_size(row: dict[str, Any]) -> str:
    if row["safe_wal_size"] is not None:
        return human_bytes(row["safe_wal_size"])
    if row["wal_status"] in (None, "lost"):
        return "-"
    return "unlimited"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    for line in [headers, *rows]:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        out.write("\n")


def _connect(dsn: str | None) -> ReplicationConnection:
    return ReplicationConnection.connect(dsn)


def _cmd_slot_list(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        rows = _slot_rows(conn, None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no replication slots")
        return EXIT_OK
    headers = [
        "SLOT",
        "PLUGIN",
        "DATABASE",
        "ACTIVE (PID)",
        "RESTART_LSN",
        "CONFIRMED_FLUSH",
        "LAG",
        "WAL_STATUS",
        "SAFE_WAL_SIZE",
    ]
    table = [
        [
            r["slot"],
            r["plugin"] or r["slot_type"],
            r["database"] or "-",
            _active(r),
            r["restart_lsn"] or "-",
            r["confirmed_flush_lsn"] or "-",
            human_bytes(r["lag_bytes"]),
            r["wal_status"] or "-",
            _safe_size(r),
        ]
        for r in rows
    ]
    _print_table(headers, table, sys.stdout)
    return EXIT_OK


def _cmd_slot_info(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        rows = _slot_rows(conn, args.slot)
    if not rows:
        raise SlotError(f'replication slot "{args.slot}" does not exist', sqlstate="42704")
    row = rows[0]
    if args.json:
        print(json.dumps(row, indent=2))
        return EXIT_OK
    lines = [
        ("slot", row["slot"]),
        ("type", row["slot_type"] + (" (temporary)" if row["temporary"] else "")),
        ("plugin", row["plugin"] or "-"),
        ("database", row["database"] or "-"),
        ("two_phase", _yes(row["two_phase"])),
        ("active", _active(row)),
        ("restart_lsn", row["restart_lsn"] or "-"),
        ("confirmed_flush_lsn", row["confirmed_flush_lsn"] or "-"),
        ("current WAL", row["current_wal_lsn"] or "-"),
        ("lag", _lag_words(row["lag_bytes"], "behind the current WAL")),
        ("WAL retained", _lag_words(row["retained_bytes"], "kept for this slot")),
        ("wal_status", row["wal_status"] or "-"),
        ("safe_wal_size", _safe_size(row)),
    ]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return EXIT_OK


def _lag_words(size: int | None, what: str) -> str:
    if size is None:
        return "-"
    return f"{human_bytes(size)} ({size} bytes) {what}"


def _cmd_slot_create(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        existing = conn.read_slot(args.slot)
        if existing is not None:
            if args.if_not_exists:
                print(f"slot {args.slot} exists already (plugin {existing.plugin})")
                return EXIT_OK
            raise SlotError(f'replication slot "{args.slot}" already exists', sqlstate="42710")
        created = conn.create_slot(args.slot, args.plugin, two_phase=args.two_phase)
    print(f"created slot {created.name} (plugin {created.plugin}) at {created.consistent_point}")
    return EXIT_OK


def _cmd_slot_drop(args: argparse.Namespace) -> int:
    with _connect(args.dsn) as conn:
        if conn.read_slot(args.slot) is None:
            if args.if_exists:
                print(f"no slot {args.slot}; nothing to drop")
                return EXIT_OK
            raise SlotError(f'replication slot "{args.slot}" does not exist', sqlstate="42704")
        conn.drop_slot(args.slot, wait=args.wait)
    print(f"dropped slot {args.slot}")
    return EXIT_OK


# --- check ---------------------------------------------------------------------------------


class _Report:
    """The findings of ``check``: one line each, ``ok``, ``WARN`` or ``FAIL``."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.failures = 0
        self.warnings = 0

    def ok(self, text: str) -> None:
        self.out.write(f"  ok    {text}\n")

    def warn(self, text: str, fix: str | None = None) -> None:
        self.warnings += 1
        self._problem("WARN", text, fix)

    def fail(self, text: str, fix: str | None = None) -> None:
        self.failures += 1
        self._problem("FAIL", text, fix)

    def _problem(self, label: str, text: str, fix: str | None) -> None:
        self.out.write(f"  {label}  {text}\n")
        if fix:
            self.out.write(f"        fix: {fix}\n")


def _quote_ident(name: str) -> str:
    if name.replace("_", "a").isalnum() and name.islower() and not name[:1].isdigit():
        return name
    return '"' + name.replace('"', '""') + '"'


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        conn = psycopg2.connect(args.dsn or "", connect_timeout=10)
    except psycopg2.Error as error:
        raise ReplicantError(f"could not connect: {_one_line(error)}") from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            report = _Report(sys.stdout)
            _run_checks(cur, args, report, conn.server_version)
    finally:
        conn.close()
    if report.failures:
        print(
            f"{report.failures} problem{'s' if report.failures != 1 else ''} to fix"
            + (
                f", {report.warnings} warning{'s' if report.warnings != 1 else ''}"
                if report.warnings
                else ""
            )
            + "."
        )
        return EXIT_ERROR
    tail = f" ({report.warnings} warning{'s' if report.warnings != 1 else ''})"
    print("Ready for logical replication" + (tail if report.warnings else "") + ".")
    return EXIT_OK


def _setting(cur: psycopg2.extensions.cursor, name: str) -> tuple[str, str | None, bool] | None:
    cur.execute(
        "SELECT setting, unit, pending_restart FROM pg_catalog.pg_settings WHERE name = %s",
        (name,),
    )
    row = cur.fetchone()
    return None if row is None else (str(row[0]), row[1], bool(row[2]))


def _check_capacity(
    cur: psycopg2.extensions.cursor,
    report: _Report,
    setting: str,
    count_sql: str,
    *,
    when_zero: str,
    when_full: str,
    restart: str,
) -> None:
    """Report whether ``setting`` leaves room beyond what ``count_sql`` counts in use."""
    cur.execute(count_sql)
    used = int(cur.fetchone()[0])  # type: ignore[index]
    value = _setting(cur, setting)
    if value is None:
        return
    limit = int(value[0])
    if limit == 0:
        report.fail(f"{setting} = 0: {when_zero}", f"ALTER SYSTEM SET {setting} = 10; {restart}")
    elif used >= limit:
        report.fail(f"{setting} = {limit} and all {used} are in use", when_full)
    else:
        report.ok(f"{setting} = {limit} ({used} in use)")


def _run_checks(
    cur: psycopg2.extensions.cursor,
    args: argparse.Namespace,
    report: _Report,
    server_version: int,
) -> None:
    cur.execute("SELECT current_user, current_database(), version()")
    user, database, version_text = cur.fetchone()  # type: ignore[misc]
    print(f"Checking {mask_dsn(args.dsn)} (database {database}, role {user})")
    print(f"  {version_text.split(',')[0]}")
    restart = "then restart PostgreSQL"

    if server_version < 100000:
        report.fail("PostgreSQL 10 or later is needed for logical replication with pgoutput")

    wal_level = _setting(cur, "wal_level")
    if wal_level is not None:
        value, _, pending = wal_level
        if value == "logical":
            report.ok("wal_level = logical")
        else:
            note = " (a change is set but waits for a restart)" if pending else ""
            report.fail(
                f"wal_level = {value}{note}: logical decoding needs wal_level = logical",
                f"ALTER SYSTEM SET wal_level = logical; {restart}",
            )

    _check_capacity(
        cur,
        report,
        "max_replication_slots",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots",
        when_zero="no replication slot can be created",
        when_full=f"drop unused slots (replicant slot list) or raise max_replication_slots; "
        f"{restart}",
        restart=restart,
    )
    _check_capacity(
        cur,
        report,
        "max_wal_senders",
        "SELECT count(*) FROM pg_catalog.pg_stat_replication",
        when_zero="no replication connection is accepted",
        when_full=f"raise max_wal_senders; {restart}",
        restart=restart,
    )

    cur.execute(
        "SELECT rolreplication, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    can_replicate, superuser = cur.fetchone()  # type: ignore[misc]
    if superuser:
        report.ok(f"role {user} is a superuser (REPLICATION included)")
    elif can_replicate:
        report.ok(f"role {user} has REPLICATION")
    else:
        report.fail(
            f"role {user} lacks the REPLICATION attribute: it cannot open a replication "
            "connection or create a slot",
            f"as a superuser: ALTER ROLE {_quote_ident(user)} REPLICATION;",
        )
    if superuser or can_replicate:
        _check_replication_connection(args.dsn, report)

    _check_publications(cur, args.publication or [], database, report)

    if server_version >= 130000:
        keep = _setting(cur, "max_slot_wal_keep_size")
        if keep is not None:
            value, unit, _ = keep
            if value == "-1":
                report.warn(
                    "max_slot_wal_keep_size = -1 (unlimited): a slot whose consumer stops "
                    "keeps WAL until the disk is full",
                    "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf(); "
                    "and watch slot lag (replicant slot list)",
                )
            else:
                size = int(value) * (1024 * 1024 if unit == "MB" else 1)
                report.ok(
                    f"max_slot_wal_keep_size = {human_bytes(size)}: a slot further behind is "
                    "invalidated rather than filling the disk"
                )

    timeout = _setting(cur, "wal_sender_timeout")
    if timeout is not None:
        value, unit, _ = timeout
        if value == "0":
            report.warn(
                "wal_sender_timeout = 0: the server never notices a dead replication client",
                "ALTER SYSTEM SET wal_sender_timeout = '60s'; SELECT pg_reload_conf();",
            )
        else:
            shown = f"{int(value) / 1000:g} s" if unit == "ms" else f"{value}{unit or ''}"
            report.ok(f"wal_sender_timeout = {shown}")

    _check_slots(cur, server_version, report)


def _check_replication_connection(dsn: str | None, report: _Report) -> None:
    try:
        with ReplicationConnection.connect(dsn) as conn:
            conn.identify_system()
    except ReplicantError as error:
        report.fail(
            f"a replication connection is refused: {_one_line(error)}",
            "allow it in pg_hba.conf (logical replication connections match the "
            "database name, not the 'replication' keyword)",
        )
    else:
        report.ok("a replication connection is accepted")


def _check_publications(
    cur: psycopg2.extensions.cursor, wanted: Sequence[str], database: str, report: _Report
) -> None:
    cur.execute(
        "SELECT pubname, puballtables, pubupdate, pubdelete FROM pg_catalog.pg_publication"
        " ORDER BY pubname"
    )
    publications = {row[0]: row for row in cur.fetchall()}
    names = list(wanted)
    for name in names:
        if name not in publications:
            report.fail(
                f"publication {name} does not exist in database {database}",
                f"CREATE PUBLICATION {_quote_ident(name)} FOR TABLE <tables>;"
                " (or FOR ALL TABLES, as a superuser)",
            )
    if not names:
        if not publications:
            report.warn(
                f"database {database} has no publication; the pgoutput plugin needs one",
                "CREATE PUBLICATION app_pub FOR TABLE <tables>;",
            )
            return
        names = list(publications)
    for name in names:
        if name in publications:
            _check_publication(cur, publications[name], report)


def _check_publication(
    cur: psycopg2.extensions.cursor, publication: tuple[Any, ...], report: _Report
) -> None:
    name, all_tables, publishes_update, publishes_delete = publication
    cur.execute(
        "SELECT n.nspname, c.relname, c.relreplident,"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid"
        "         AND i.indisreplident)"
        " FROM pg_catalog.pg_publication_tables p"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename"
        " WHERE p.pubname = %s ORDER BY 1, 2",
        (name,),
    )
    tables = cur.fetchall()
    scope = "all tables" if all_tables else f"{len(tables)} table{'s' if len(tables) != 1 else ''}"
    if not tables:
        report.warn(
            f"publication {name} ({scope}) publishes no table yet: it sends no row changes",
            f"ALTER PUBLICATION {_quote_ident(name)} ADD TABLE <tables>;",
        )
        return
    listed = ", ".join(f"{schema}.{table}" for schema, table, *_ in tables[:8])
    if len(tables) > 8:
        listed += f", ... ({len(tables) - 8} more)"
    report.ok(f"publication {name} publishes {scope}: {listed}")
    for schema, table, identity, has_primary_key, has_identity_index in tables:
        usable = (
            identity == "f"
            or (identity == "d" and has_primary_key)
            or (identity == "i" and has_identity_index)
        )
        if usable:
            continue
        why = {
            "d": "no primary key",
            "n": "REPLICA IDENTITY NOTHING",
            "i": "its replica identity index is gone",
        }.get(identity, f"replica identity {identity!r}")
        qualified = f"{_quote_ident(schema)}.{_quote_ident(table)}"
        fix = (
            f"ALTER TABLE {qualified} ADD PRIMARY KEY (<columns>); or, to send whole old "
            f"rows, ALTER TABLE {qualified} REPLICA IDENTITY FULL;"
        )
        if publishes_update or publishes_delete:
            report.fail(
                f"table {schema}.{table} has no usable replica identity ({why}): while "
                f"publication {name} publishes UPDATE and DELETE, the server refuses them on "
                "this table, and their events would carry no old key",
                fix,
            )
        else:
            report.ok(
                f"table {schema}.{table} has no replica identity ({why}); publication "
                f"{name} sends only inserts, so that is fine"
            )


def _check_slots(cur: psycopg2.extensions.cursor, server_version: int, report: _Report) -> None:
    wal_status = "wal_status" if server_version >= 130000 else "NULL"
    cur.execute(
        f"SELECT slot_name, active, {wal_status}, pg_catalog.pg_wal_lsn_diff("
        " CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()"
        " ELSE pg_catalog.pg_current_wal_lsn() END, restart_lsn)::bigint"
        " FROM pg_catalog.pg_replication_slots ORDER BY slot_name"
    )
    for slot, active, status, retained in cur.fetchall():
        if status == "lost":
            report.fail(
                f"slot {slot} was invalidated (wal_status lost): the WAL it needs is gone",
                f"replicant slot drop --slot {slot}; then recreate it and resynchronise",
            )
        elif not active and retained is not None and retained > 1024**3:
            report.warn(
                f"slot {slot} is inactive and keeps {human_bytes(retained)} of WAL",
                f"start its consumer, or drop it: replicant slot drop --slot {slot}",
            )


# --- demo ------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from replicant.demo import DemoFailed, run_demo  # the demo pulls in the cluster machinery

    try:
        run_demo(
            out=sys.stdout,
            bindir=args.bindir,
            json_lines=args.format == "json",
            pause=args.pause,
        )
    except DemoFailed:
        return EXIT_ERROR  # the demo said what went wrong
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


# --- the parser --------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


_MAIN_EPILOG = """\
examples:
  replicant demo                                   watch changes stream from a throwaway server
  replicant check "dbname=app" --publication app_pub
  replicant stream "dbname=app" --slot app --publication app_pub --create-slot
  replicant slot list "host=db1 dbname=app user=repl"

The connection string (DSN) is a libpq key/value string or URI; when left
out, libpq's PG* environment variables apply (PGHOST, PGDATABASE, ...).

exit codes: 0 done, 1 error, 2 usage, 130 interrupted, 143 terminated (SIGTERM)
"""

_STREAM_EPILOG = """\
examples:
  # every change of publication app_pub as JSON Lines, creating the slot if needed
  replicant stream "dbname=app" --slot app --publication app_pub --create-slot

  # human-readable, for a look at what is happening
  replicant stream "dbname=app" --slot app --publication app_pub --format text

  # into a file (fsynced every 10 s; SIGHUP reopens it after log rotation)
  replicant stream "dbname=app" --slot app --publication app_pub --file changes.jsonl -v

  # up to a given position, then exit: for scripts and tests
  replicant stream "dbname=app" --slot app --publication app_pub --end 0/1A2B3C4

  # wal2json, or any plugin (raw payloads)
  replicant stream "dbname=app" --slot w2j --plugin wal2json -o add-tables=public.orders

An event is acknowledged to the server only once its line is written (and,
for a file, fsynced), so a restart resumes right after the last line that
reached the output: nothing is lost, and only lines written after the last
acknowledgement can come twice. Ctrl-C stops cleanly.
"""

_SLOT_EPILOG = """\
examples:
  replicant slot list "dbname=app"
  replicant slot list "dbname=app" --json
  replicant slot info "dbname=app" --slot app
  replicant slot create "dbname=app" --slot app
  replicant slot drop "dbname=app" --slot app
"""

_CHECK_EPILOG = """\
examples:
  replicant check "dbname=app"
  replicant check "host=db1 dbname=app user=repl" --publication app_pub

Exits 1 when something must be fixed before logical replication can work.
"""

_DEMO_EPILOG = """\
examples:
  replicant demo
  replicant demo --format json

The server comes from the PostgreSQL installed on this machine, or from the
pgserver package (pip install 'replicant[embedded]'). It runs in a temporary
directory that is removed at the end.
"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="say more on stderr (progress, tracebacks on errors); -vv for debug logging",
    )


def _add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dsn",
        nargs="?",
        metavar="DSN",
        help="libpq connection string or URI (default: the PG* environment variables)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``replicant`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Consume PostgreSQL logical replication: decoded, typed, safely acknowledged.",
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=_version_text())
    _add_common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    stream = commands.add_parser(
        "stream",
        help="stream decoded changes of a slot, one line per event",
        description="Stream the decoded changes of a logical replication slot, one line per "
        "event: JSON Lines (each event's to_dict()) or a compact text.",
        epilog=_STREAM_EPILOG,
        formatter_class=_Formatter,
    )
    _add_dsn(stream)
    stream.add_argument("--slot", required=True, metavar="NAME", help="replication slot name")
    stream.add_argument(
        "--publication",
        action="append",
        metavar="P",
        help="publication to stream (pgoutput; repeat for several)",
    )
    stream.add_argument(
        "--plugin",
        default="pgoutput",
        metavar="NAME",
        help="output plugin: pgoutput (default), wal2json, or any other (raw payloads)",
    )
    stream.add_argument(
        "-o",
        "--option",
        action="append",
        type=_option_arg,
        metavar="KEY=VALUE",
        help="extra plugin option, passed as is (repeatable), e.g. -o messages=true",
    )
    stream.add_argument("--create-slot", action="store_true", help="create the slot if missing")
    stream.add_argument(
        "--temporary",
        action="store_true",
        help="create a temporary slot, dropped when the stream ends (implies --create-slot)",
    )
    stream.add_argument(
        "--start",
        type=_lsn_arg,
        metavar="LSN",
        help="skip transactions that committed before LSN (X/Y)",
    )
    stream.add_argument(
        "--end",
        type=_lsn_arg,
        metavar="LSN",
        help="stop once the stream reaches LSN (X/Y), then exit 0",
    )
    stream.add_argument(
        "-f",
        "--file",
        metavar="PATH",
        help="append to PATH instead of standard output ('-' is standard output)",
    )
    stream.add_argument(
        "-F",
        "--fsync-interval",
        type=_seconds_arg(allow_zero=True),
        default=10.0,
        metavar="SECONDS",
        help="fsync the file this often, acknowledging what it holds (default 10; "
        "0: never fsync, acknowledge once written)",
    )
    stream.add_argument(
        "--format",
        choices=("json", "text"),
        default="json",
        help="json: JSON Lines (default); text: compact, for people",
    )
    stream.add_argument(
        "-s",
        "--status-interval",
        type=_seconds_arg(allow_zero=False),
        default=10.0,
        metavar="SECONDS",
        help="seconds between status updates to the server (default 10)",
    )
    stream.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit with an error when the connection is lost, instead of reconnecting",
    )
    stream.add_argument(
        "--max-retries",
        type=_count_arg,
        metavar="N",
        help="give up after N failed reconnection attempts in a row (default: never)",
    )
    stream.add_argument(
        "--relations",
        action="store_true",
        help="also write relation events (table descriptions with column types)",
    )
    _add_common(stream)
    stream.set_defaults(handler=_cmd_stream)

    slot = commands.add_parser(
        "slot",
        help="create, drop, list and describe replication slots",
        description="Manage replication slots and see how far behind they are.",
        epilog=_SLOT_EPILOG,
        formatter_class=_Formatter,
    )
    slot_commands = slot.add_subparsers(dest="slot_command", metavar="ACTION")
    slot_list = slot_commands.add_parser(
        "list",
        help="every slot: plugin, database, active, LSNs, lag, WAL status",
        description="List every replication slot of the server with its lag behind the "
        "current WAL.",
        epilog=_SLOT_EPILOG,
        formatter_class=_Formatter,
    )
    _add_dsn(slot_list)
    slot_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_common(slot_list)
    slot_list.set_defaults(handler=_cmd_slot_list)

    slot_info = slot_commands.add_parser(
        "info",
        help="one slot in detail",
        description="Show one replication slot in detail.",
        epilog=_SLOT_EPILOG,
        formatter_class=_Formatter,
    )
    _add_dsn(slot_info)
    slot_info.add_argument("--slot", required=True, metavar="NAME", help="replication slot name")
    slot_info.add_argument("--json", action="store_true", help="print JSON")
    _add_common(slot_info)
    slot_info.set_defaults(handler=_cmd_slot_info)

    slot_create = slot_commands.add_parser(
        "create",
        help="create a logical replication slot",
        description="Create a logical replication slot. It keeps WAL from now on until a "
        "consumer confirms it: drop slots you no longer use.",
        epilog=_SLOT_EPILOG,
        formatter_class=_Formatter,
    )
    _add_dsn(slot_create)
    slot_create.add_argument("--slot", required=True, metavar="NAME", help="replication slot name")
    slot_create.add_argument(
        "--plugin", default="pgoutput", metavar="NAME", help="output plugin (default pgoutput)"
    )
    slot_create.add_argument(
        "--two-phase", action="store_true", help="decode prepared transactions (PostgreSQL 15+)"
    )
    slot_create.add_argument(
        "--if-not-exists", action="store_true", help="do nothing if the slot exists"
    )
    _add_common(slot_create)
    slot_create.set_defaults(handler=_cmd_slot_create)

    slot_drop = slot_commands.add_parser(
        "drop",
        help="drop a replication slot",
        description="Drop a replication slot; the WAL it kept can then be recycled.",
        epilog=_SLOT_EPILOG,
        formatter_class=_Formatter,
    )
    _add_dsn(slot_drop)
    slot_drop.add_argument("--slot", required=True, metavar="NAME", help="replication slot name")
    slot_drop.add_argument(
        "--wait", action="store_true", help="wait while another connection uses the slot"
    )
    slot_drop.add_argument("--if-exists", action="store_true", help="do nothing if it is missing")
    _add_common(slot_drop)
    slot_drop.set_defaults(handler=_cmd_slot_drop)

    check = commands.add_parser(
        "check",
        help="preflight: is this server ready for logical replication?",
        description="Check a server and database for logical replication, and say in plain "
        "words what is wrong and how to fix it.",
        epilog=_CHECK_EPILOG,
        formatter_class=_Formatter,
    )
    _add_dsn(check)
    check.add_argument(
        "--publication",
        action="append",
        metavar="P",
        help="publication to check (repeatable; default: every publication of the database)",
    )
    _add_common(check)
    check.set_defaults(handler=_cmd_check)

    demo = commands.add_parser(
        "demo",
        help="stream changes from a throwaway PostgreSQL, to see how it works",
        description="Start a throwaway PostgreSQL, make a table and a publication, run a short "
        "workload and show the decoded events as they arrive; then clean everything up.",
        epilog=_DEMO_EPILOG,
        formatter_class=_Formatter,
    )
    demo.add_argument(
        "--format", choices=("text", "json"), default="text", help="how to show events"
    )
    demo.add_argument("--bindir", metavar="DIR", help="PostgreSQL binaries to use (default: found)")
    demo.add_argument(
        "--pause",
        type=_seconds_arg(allow_zero=True),
        default=0.5,
        metavar="SECONDS",
        help="pause between the workload's steps (default 0.5)",
    )
    _add_common(demo)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _version_text() -> str:
    libpq = psycopg2.extensions.libpq_version()
    driver = str(getattr(psycopg2, "__version__", "?")).split()[0]
    return f"{PROG} {__version__} (psycopg2 {driver}, libpq {libpq // 10000}.{libpq % 10000})"


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    root = logging.getLogger("replicant")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)


def _merged_verbosity(argv: Sequence[str]) -> Iterator[int]:
    # -v may come before or after the command; count both.
    for arg in argv:
        if arg == "--verbose":
            yield 1
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) == {"v"}:
            yield len(arg) - 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``replicant`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code: 0 done, 1 error, 2 usage, 130 interrupted, 143
    terminated.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    verbose = sum(_merged_verbosity(args_list))
    args.verbose = verbose
    if getattr(args, "handler", None) is None:
        if args.command == "slot":
            _subparser(parser, "slot").print_usage(sys.stderr)
            print(
                f"{PROG} slot: error: choose an action: list, info, create, drop", file=sys.stderr
            )
        else:
            parser.print_usage(sys.stderr)
            print(f"{PROG}: error: choose a command: stream, slot, check, demo", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(verbose)
    command = args.command + (f" {args.slot_command}" if args.command == "slot" else "")
    try:
        code: int = args.handler(args)
        return code
    except _Usage as error:
        print(f"{PROG} {command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ReplicantError, psycopg2.Error, OSError) as error:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: error: {_explain(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # a bug: still one line, the traceback with -v
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(
            f"{PROG}: internal error: {type(error).__name__}: {_one_line(error)} "
            "(run with -v for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)
