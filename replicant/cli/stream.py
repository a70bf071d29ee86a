"""``replicant stream``: a slot's decoded changes, one line per event, safely acknowledged.

The lines go through a :class:`~replicant.sinks.JsonLinesSink` driven by a
:class:`~replicant.sinks.SinkWriter`: an event is acknowledged only once its
line is written and, for a file, fsynced. The main thread handles signals
(Ctrl-C and SIGTERM stop, SIGHUP reopens the file) and, with ``-v``,
reports progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from replicant.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    PROG,
    CommandError,
    Commands,
    UsageError,
    count_arg,
    explain,
    lsn_arg,
    option_arg,
    seconds_arg,
)
from replicant.decoders import needs_publication
from replicant.errors import ConfigurationError, ReplicantError
from replicant.formatting import format_json, format_text, human_bytes
from replicant.runtime import Consumer
from replicant.sinks import JsonLinesSink, SinkWriter

__all__ = ["register"]

logger = logging.getLogger("replicant")

EPILOG = """\
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

# How often -v reports progress (more often when status updates are), and
# how often the main thread looks up from waiting for a signal.
_PROGRESS_INTERVAL = 5.0
_TICK = 0.2


def register(commands: Commands) -> None:
    """Declare ``replicant stream`` and its options."""
    stream = commands.add(
        "stream",
        handler=run,
        help="stream decoded changes of a slot, one line per event",
        description="Stream the decoded changes of a logical replication slot, one line per "
        "event: JSON Lines (each event's to_dict()) or a compact text.",
        epilog=EPILOG,
        slot=True,
    )
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
        type=option_arg,
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
        type=lsn_arg,
        metavar="LSN",
        help="skip transactions that committed before LSN (X/Y)",
    )
    stream.add_argument(
        "--end",
        type=lsn_arg,
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
        type=seconds_arg(allow_zero=True),
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
        type=seconds_arg(allow_zero=False),
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
        type=count_arg,
        metavar="N",
        help="give up after N failed reconnection attempts in a row (default: never)",
    )
    stream.add_argument(
        "--snapshot",
        choices=("never", "initial", "initial_only"),
        default="never",
        help="initial: when the slot is created, first write every existing row of the "
        'publication\'s tables ("op": "read"), then stream; initial_only: stop after them '
        "(implies --create-slot; default never)",
    )
    stream.add_argument(
        "--snapshot-workers",
        type=count_arg,
        default=1,
        metavar="N",
        help="connections reading the snapshot in parallel (default 1)",
    )
    stream.add_argument(
        "--resnapshot",
        action="append",
        metavar="TABLE",
        help="on SIGUSR1, read TABLE again while streaming (an incremental snapshot; "
        "repeatable; turns on pgoutput messages, PostgreSQL 14+)",
    )
    stream.add_argument(
        "--relations",
        action="store_true",
        help="also write relation events (table descriptions with column types)",
    )


class _Signals:
    """Signal handling for ``stream``: Ctrl-C/SIGTERM stop, SIGHUP reopens."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop_signal: int | None = None
        self.reopen = False
        self.resnapshot = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reopen = True
        elif signum == signal.SIGUSR1:
            self.resnapshot = True
        elif self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
        else:
            self.stop_signal = signum
        self.wake.set()


def run(args: argparse.Namespace) -> int:
    """``replicant stream``: stream until ``--end``, a signal or a failure."""
    publications: list[str] = args.publication or []
    # The decoders layer owns the rule; the command words it as a usage error.
    if needs_publication(args.plugin) and not publications:
        raise UsageError(f"--publication is required with the {args.plugin} plugin")
    if not needs_publication(args.plugin) and publications:
        raise UsageError(f"--publication is a pgoutput option; {args.plugin} does not take it")
    path = None if args.file in (None, "-") else args.file
    # A file is fsynced every --fsync-interval seconds and acknowledged as far
    # as each fsync reached; standard output (or -F 0) is acknowledged at
    # every transaction end, once its lines are handed to the system.
    fsync = path is not None and args.fsync_interval > 0
    try:
        sink = JsonLinesSink(
            path,
            fsync=fsync,
            formatter=format_json if args.format == "json" else format_text,
            relations=args.relations,
        )
    except OSError as error:
        raise CommandError(f"cannot open {args.file}: {error.strerror}") from None
    writer = SinkWriter(sink, flush_interval=args.fsync_interval if fsync else 0)
    options = dict(args.option or [])
    if args.resnapshot:
        options.setdefault("messages", "true")  # the incremental snapshot's watermarks
    try:
        consumer = writer.consumer(
            args.dsn,
            slot=args.slot,
            plugin=args.plugin,
            publication=publications or None,
            options=options,
            create_slot=args.create_slot or args.temporary or args.snapshot != "never",
            temporary=args.temporary,
            start_lsn=args.start,
            end_lsn=args.end,
            status_interval=args.status_interval,
            reconnect=not args.no_reconnect,
            max_retries=args.max_retries,
            snapshot=args.snapshot,
            snapshot_workers=max(args.snapshot_workers, 1),
        )
    except ConfigurationError as error:
        writer.close()
        raise UsageError(str(error)) from None

    signals = _Signals()
    if threading.current_thread() is threading.main_thread():
        signals.install()
    started = time.monotonic()
    broken: BaseException | None = None  # the output failed
    try:
        consumer.start()
        _stream_loop(
            consumer, writer, signals, verbose=args.verbose > 0, resnapshot=args.resnapshot
        )
        consumer.stop()
        consumer.join()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted again; not waiting for a clean stop", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except BaseException as error:
        if error is not writer.failure:
            raise
        broken = error  # a write or a flush of the output failed and ended the stream
    finally:
        signals.restore()
        try:
            writer.close()
        except OSError as error:
            broken = broken or error
    if broken is not None:
        if isinstance(broken, BrokenPipeError):
            return _quiet_broken_pipe()
        raise CommandError(f"writing the output failed: {explain(broken)}")
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


def _stream_loop(
    consumer: Consumer,
    writer: SinkWriter,
    signals: _Signals,
    *,
    verbose: bool,
    resnapshot: list[str] | None = None,
) -> None:
    """Run the main thread's chores until the consumer ends or a signal stops it.

    The writer flushes (fsyncs) and acknowledges on its own timer; this loop
    only reopens the file on SIGHUP and reports progress.
    """
    interval = min(_PROGRESS_INTERVAL, consumer.status_interval)
    next_progress = time.monotonic() + interval
    last_events, last_time = 0, time.monotonic()
    while consumer.running:
        signals.wake.wait(_TICK)
        signals.wake.clear()
        if signals.reopen:
            signals.reopen = False
            if not _reopen(writer):
                return
        if signals.stop_signal is not None:
            return  # the final write-out happens before the final status update
        if signals.resnapshot:
            signals.resnapshot = False
            if not resnapshot:
                print(f"{PROG}: SIGUSR1: no --resnapshot tables; ignored", file=sys.stderr)
            else:
                try:
                    consumer.snapshot(resnapshot)
                except ReplicantError as error:
                    print(f"{PROG}: cannot re-read {resnapshot}: {error}", file=sys.stderr)
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


def _reopen(writer: SinkWriter) -> bool:
    """SIGHUP: a new file at the same path, once the old one is written out (and fsynced).

    Returns False when the output broke: the stream is to end, and
    ``join()`` raises the failure (the consumer's final flush does).
    """
    sink = writer.sink
    assert isinstance(sink, JsonLinesSink)
    if sink.path is None:
        return True
    sink.reopen()
    try:
        writer.flush()  # now, rather than at the next timed flush
    except Exception:
        if writer.failure is None:
            raise
        return False
    return True
