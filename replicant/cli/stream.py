"""``replicant stream``: a slot's decoded changes, one line per event, safely acknowledged.

The lines go through a :class:`~replicant.sinks.JsonLinesSink` driven by a
:class:`~replicant.sinks.SinkWriter`: an event is acknowledged only once its
line is written and, for a file, fsynced. The main thread handles signals
(Ctrl-C and SIGTERM stop, SIGHUP reopens the file) and, with ``-v``,
reports progress.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
import time
from typing import Any

import psycopg2
import psycopg2.extensions

from replicant._signals import StopSignals
from replicant.changes import Event, Relation
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
    quiet_broken_pipe,
    seconds_arg,
)
from replicant.connection import ReplicationConnection
from replicant.decoders import make_decoder, needs_publication
from replicant.errors import ConfigurationError, ReplicantError
from replicant.formatting import format_json, format_text, human_bytes
from replicant.lsn import LSN
from replicant.metrics import MetricsServer, serve
from replicant.progress import BacklogProgress
from replicant.runtime import Consumer
from replicant.sinks import LINES, JsonLinesSink, Sink, SinkWriter, open_sink, sink_scheme

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

  # pg_recvlogical's options: -d -h -p -U -W -S -P -o -E -f -F -s -n -v -V
  # (pg_recvlogical --start -I 0/1A2B3C4 is --start 0/1A2B3C4)
  replicant stream -d app -h db1 -U repl -S app -P wal2json -E 0/1A2B3C4 -f out.jsonl

An event is acknowledged to the server only once its line is written (and,
for a file, fsynced), so a restart resumes right after the last line that
reached the output: nothing is lost, and only lines written after the last
acknowledgement can come twice. Ctrl-C stops cleanly.
"""

# How often -v reports progress (more often when status updates are), and
# how often the main thread looks up from waiting for a signal.
_PROGRESS_INTERVAL = 5.0
_TICK = 0.2

# How often the command reads the server's WAL end and the slot's state (on
# an ordinary connection of its own), for the lag it reports.
_HEALTH_INTERVAL = 5.0


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
        short_help=False,
        slot_flags=("-S", "--slot"),
    )
    connection = stream.add_argument_group(
        "connection (as pg_recvlogical and libpq clients: these win over the DSN)"
    )
    connection.add_argument(
        "-d",
        "--dbname",
        metavar="DBNAME",
        help="database name or connection string (instead of DSN)",
    )
    connection.add_argument("-h", "--host", metavar="HOST", help="server host or socket directory")
    connection.add_argument("-p", "--port", metavar="PORT", help="server port")
    connection.add_argument("-U", "--username", metavar="USER", help="user name")
    connection.add_argument(
        "-W",
        "--password",
        action="store_true",
        help="ask for the password (from the terminal, or one line of standard input)",
    )
    stream.add_argument(
        "--publication",
        action="append",
        metavar="P",
        help="publication to stream (pgoutput; repeat for several)",
    )
    stream.add_argument(
        "-P",
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
        metavar="NAME[=VALUE]",
        help="extra plugin option, passed as is (repeatable; a bare NAME means NAME=on), "
        "e.g. -o messages",
    )
    stream.add_argument("--create-slot", action="store_true", help="create the slot if missing")
    stream.add_argument(
        "--if-not-exists",
        action="store_true",
        help="with --create-slot, use a slot that exists already (what --create-slot does "
        "anyway; accepted as pg_recvlogical takes it)",
    )
    stream.add_argument(
        "--drop-slot",
        action="store_true",
        help="drop the slot at exit, once the stream ended cleanly (--end, Ctrl-C, SIGTERM); "
        "a slot is kept after a failure",
    )
    stream.add_argument(
        "--two-phase",
        action="store_true",
        help="create the slot with two-phase decoding, and decode prepared transactions "
        "(PostgreSQL 15+ with pgoutput; 14+ for other plugins)",
    )
    stream.add_argument(
        "--failover",
        action="store_true",
        help="create the slot as a failover slot, synchronised to standbys (PostgreSQL 17+)",
    )
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
        "-E",
        "--end",
        "--endpos",
        dest="end",
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
        "--to",
        metavar="URL",
        help="write the changes there instead: postgresql://... or sqlite:///PATH (each "
        "transaction applied exactly once, committed in batches every second), "
        "kafka://HOST:PORT/PREFIX (at least once), a path or -",
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
        "-n",
        "--no-reconnect",
        "--no-loop",
        dest="no_reconnect",
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
        "--retry-first-connect",
        action="store_true",
        help="keep retrying when the first connection fails (default: exit 1, as retries "
        "apply once a stream has run)",
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
    stream.add_argument(
        "--metrics",
        metavar="ADDRESS:PORT",
        help="serve Prometheus metrics at http://ADDRESS:PORT/metrics (port 0: any free "
        "one; needs the metrics extra: pip install 'replicant[metrics]')",
    )
    stream.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress on stderr (warnings, errors and the line saying why it stopped "
        "still come)",
    )


class _Signals(StopSignals):
    """Signal handling for ``stream``: Ctrl-C/SIGTERM stop, SIGHUP reopens."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.reopen = False
        self.resnapshot = False
        super().__init__(
            lambda signum: self.wake.set(),
            others={signal.SIGHUP: self._reopen, signal.SIGUSR1: self._resnapshot},
        )

    def _reopen(self, signum: int) -> None:
        self.reopen = True

    def _resnapshot(self, signum: int) -> None:
        self.resnapshot = True
        self.wake.set()


def run(args: argparse.Namespace) -> int:
    """``replicant stream``: stream until ``--end``, a signal or a failure."""
    publications: list[str] = args.publication or []
    # The decoders layer owns the rule; the command words it as a usage error.
    if needs_publication(args.plugin) and not publications:
        raise UsageError(f"--publication is required with the {args.plugin} plugin")
    if not needs_publication(args.plugin) and publications:
        raise UsageError(f"--publication is a pgoutput option; {args.plugin} does not take it")
    dsn, params = connection_of(args)
    if args.failover and args.temporary:
        raise UsageError("a temporary slot cannot be a failover slot")
    if (args.failover or args.two_phase) and not (args.create_slot or args.temporary):
        raise UsageError(
            f"{'--failover' if args.failover else '--two-phase'} says how to create the slot: "
            "add --create-slot"
        )
    if args.two_phase and args.temporary and args.plugin != "pgoutput":
        raise UsageError("--two-phase with --temporary needs the pgoutput plugin")
    to = args.to if args.to is not None else (args.file or "-")
    if args.to is not None and args.file is not None:
        raise UsageError("--to and --file name two outputs; give one")
    try:
        lines = sink_scheme(to) == LINES
    except ConfigurationError as error:
        raise UsageError(str(error)) from None
    if not lines and (args.format != "json" or args.relations):
        raise UsageError("--to writes into a sink: --format and --relations do not apply")
    consumer_args = _decoding_args(args, publications)
    if args.failover or (args.two_phase and args.plugin != "pgoutput"):
        # The slot is made here, with what the consumer itself cannot ask for.
        _create_slot(args, dsn, params)
    path = None if to == "-" else to
    # A file is fsynced every --fsync-interval seconds and acknowledged as far
    # as each fsync reached; standard output (or -F 0) is acknowledged at
    # every transaction end, once its lines are handed to the system. A
    # database or a broker commits (flushes) a batch every second.
    fsync = lines and path is not None and args.fsync_interval > 0
    formatter = format_json if args.format == "json" else format_text
    options: dict[str, Any] = {}
    if lines:
        options = {"fsync": fsync, "formatter": formatter, "relations": args.relations}
    try:
        sink: Sink = open_sink(to, slot=args.slot, **options)
    except OSError as error:
        raise CommandError(f"cannot open {to}: {error.strerror}") from None
    except ConfigurationError as error:
        raise UsageError(str(error)) from None
    except ReplicantError as error:  # a sink that cannot be made or reached
        raise CommandError(str(error)) from None
    if not lines:
        sink = _CountedSink(sink)
    interval = (args.fsync_interval if fsync else 0) if lines else 1.0
    writer = SinkWriter(sink, flush_interval=interval)
    if args.resnapshot:
        if "options" not in consumer_args:
            raise UsageError("--resnapshot and --two-phase cannot be combined yet")
        # The incremental snapshot's watermarks come as pgoutput messages.
        consumer_args["options"].setdefault("messages", "true")
    try:
        consumer = writer.consumer(
            dsn,
            slot=args.slot,
            **consumer_args,
            create_slot=args.create_slot or args.temporary or args.snapshot != "never",
            temporary=args.temporary,
            start_lsn=args.start,
            end_lsn=args.end,
            status_interval=args.status_interval,
            reconnect=not args.no_reconnect,
            max_retries=args.max_retries,
            retry_first_connect=args.retry_first_connect,
            health_interval=_HEALTH_INTERVAL,
            **params,
            snapshot=args.snapshot,
            snapshot_workers=max(args.snapshot_workers, 1),
        )
    except ConfigurationError as error:
        writer.close()
        raise UsageError(str(error)) from None

    metrics: MetricsServer | None = None
    if args.metrics is not None:
        try:
            metrics = serve(consumer, args.metrics)
        except ConfigurationError as error:
            writer.close()
            raise UsageError(str(error)) from None
        except OSError as error:
            writer.close()
            raise CommandError(
                f"cannot serve metrics at {args.metrics}: {error.strerror}"
            ) from None
        if not args.quiet:
            print(f"{PROG}: metrics at {metrics.url}", file=sys.stderr, flush=True)

    signals = _Signals()
    if threading.current_thread() is threading.main_thread():
        signals.install()
    started = time.monotonic()
    broken: BaseException | None = None  # the output failed
    try:
        consumer.start()
        _stream_loop(
            consumer,
            writer,
            signals,
            verbose=args.verbose > 0 and not args.quiet,
            backlog=None if args.quiet else BacklogProgress(sys.stderr, prefix=f"{PROG}: "),
            resnapshot=args.resnapshot,
        )
        consumer.stop()
        consumer.join()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted again; not waiting for a clean stop", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        broken = BrokenPipeError()
    except BaseException as error:
        if error is not writer.failure:
            raise
        broken = error  # a write or a flush of the output failed and ended the stream
    finally:
        signals.restore()
        if metrics is not None:
            metrics.close()
        try:
            writer.close()
        except OSError as error:
            broken = broken or error
    if broken is not None:
        if isinstance(broken, BrokenPipeError):
            _drop_at_exit(args, dsn, params, consumer)
            return quiet_broken_pipe()
        raise CommandError(f"writing the output failed: {explain(broken)}")
    summary = _summary(consumer, _written(writer.sink), time.monotonic() - started)
    if signals.stop_signal is not None:
        name = "interrupted" if signals.stop_signal == signal.SIGINT else "terminated"
        print(f"{PROG}: {name}; {summary}", file=sys.stderr)
        _drop_at_exit(args, dsn, params, consumer)
        return EXIT_INTERRUPTED if signals.stop_signal == signal.SIGINT else EXIT_TERMINATED
    if args.verbose and not args.quiet:
        print(f"{PROG}: done; {summary}", file=sys.stderr)
    _drop_at_exit(args, dsn, params, consumer)
    return EXIT_OK


def connection_of(args: argparse.Namespace) -> tuple[str | None, dict[str, str]]:
    """The connection string and libpq keywords of ``-d``/DSN, ``-h``, ``-p``, ``-U``, ``-W``.

    As libpq clients do: ``-d`` is a database name or a whole connection
    string, and the other options win over what it says; what neither says
    comes from the PG* environment variables. ``-W`` asks for the password
    on the terminal (or reads one line of standard input when that is not a
    terminal). Also sets ``args.hint_dsn``, the connection without its
    password, for the hints of error messages.
    """
    if args.dsn is not None and args.dbname is not None:
        raise UsageError("give the connection once: a DSN or -d/--dbname, not both")
    base = args.dsn if args.dsn is not None else args.dbname
    params: dict[str, str] = {}
    dsn: str | None = base
    if base is not None and "=" not in base and "://" not in base:
        dsn, params["dbname"] = None, base  # a database name, not a connection string
    for key, value in (("host", args.host), ("port", args.port), ("user", args.username)):
        if value is not None:
            params[key] = value
    try:
        args.hint_dsn = psycopg2.extensions.make_dsn(dsn or "", **params) if params else dsn
    except psycopg2.Error:
        args.hint_dsn = dsn
    if args.password:
        params["password"] = _ask_password()
    return dsn, params


def _ask_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    line = sys.stdin.readline()
    if not line:
        raise UsageError("-W: no password on standard input")
    return line.rstrip("\r\n")


def _decoding_args(args: argparse.Namespace, publications: list[str]) -> dict[str, Any]:
    """The consumer's plugin arguments: a pgoutput decoder of its own for --two-phase."""
    options = dict(args.option or [])
    if args.two_phase and args.plugin == "pgoutput":
        try:
            return {
                "decoder": make_decoder(
                    "pgoutput", publication=publications, options=options, two_phase=True
                )
            }
        except ConfigurationError as error:
            raise UsageError(str(error)) from None
    return {"plugin": args.plugin, "publication": publications or None, "options": options}


def _create_slot(args: argparse.Namespace, dsn: str | None, params: dict[str, str]) -> None:
    """Create the slot (if missing) with --failover / --two-phase, as the consumer cannot."""
    with ReplicationConnection.connect(dsn, **params) as conn:
        if conn.read_slot(args.slot) is not None:
            return
        try:
            created = conn.create_slot(
                args.slot, args.plugin, two_phase=args.two_phase, failover=args.failover
            )
        except ConfigurationError as error:
            raise CommandError(str(error)) from None
    logger.info("created slot %s at %s", created.name, created.consistent_point)


def _drop_at_exit(
    args: argparse.Namespace, dsn: str | None, params: dict[str, str], consumer: Consumer
) -> None:
    """--drop-slot: the stream ended cleanly, so the slot goes (waiting for its walsender)."""
    if not args.drop_slot or args.temporary or consumer.stats.streams == 0:
        return
    with ReplicationConnection.connect(dsn, **params) as conn:
        if conn.read_slot(args.slot) is not None:
            conn.drop_slot(args.slot, wait=True)
    if not args.quiet:
        print(f"{PROG}: dropped slot {args.slot}", file=sys.stderr)


class _CountedSink:
    """A sink passing every event on, counting those the JSON Lines output would write."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.lines = 0

    def write(self, event: Event) -> None:
        self._sink.write(event)
        if type(event) is not Relation:
            self.lines += 1

    def flush(self) -> LSN | None:
        return self._sink.flush()

    def close(self) -> None:
        self._sink.close()


def _written(sink: Sink) -> int:
    """How many events the output took (relations count only when written)."""
    return int(getattr(sink, "lines", 0))


def plural(count: int, word: str) -> str:
    """``1 transaction``, ``2 transactions``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _summary(consumer: Consumer, written: int, elapsed: float) -> str:
    stats = consumer.stats
    if stats.streams == 0:
        return f"never streamed; nothing acknowledged ({elapsed:.1f} s)"
    flushed = consumer.progress.flushed
    return (
        f"acknowledged up to {flushed}; {plural(written, 'event')} written from "
        f"{plural(stats.transactions, 'transaction')}, {human_bytes(stats.bytes)} received "
        f"in {elapsed:.1f} s"
    )


def _stream_loop(
    consumer: Consumer,
    writer: SinkWriter,
    signals: _Signals,
    *,
    verbose: bool,
    backlog: BacklogProgress | None,
    resnapshot: list[str] | None = None,
) -> None:
    """Run the main thread's chores until the consumer ends or a signal stops it.

    The writer flushes (fsyncs) and acknowledges on its own timer; this loop
    only reopens the file on SIGHUP, starts an incremental snapshot of the
    ``resnapshot`` tables on SIGUSR1, and reports progress: through a backlog
    (``backlog``), and with ``verbose`` a line every few seconds.
    """
    try:
        _chores(consumer, writer, signals, verbose=verbose, backlog=backlog, resnapshot=resnapshot)
    finally:
        if backlog is not None:
            # A backlog drained between two ticks, or before the first, is still reported.
            backlog.update(consumer.health())
            backlog.close()


def _chores(
    consumer: Consumer,
    writer: SinkWriter,
    signals: _Signals,
    *,
    verbose: bool,
    backlog: BacklogProgress | None,
    resnapshot: list[str] | None,
) -> None:
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
        if backlog is not None and not backlog.finished:
            backlog.update(consumer.health())
        if verbose and now >= next_progress:
            health = consumer.health()
            rate = (health.events - last_events) / max(now - last_time, 1e-6)
            if backlog is not None:
                backlog.clear()
            print(
                f"{PROG}: {plural(health.events, 'event')} ({rate:.0f}/s), "
                f"{plural(health.transactions, 'transaction')}, {human_bytes(health.bytes)} "
                f"received; acknowledged {health.acknowledged_lsn}, "
                f"{_behind(health.bytes_behind)} behind the server",
                file=sys.stderr,
                flush=True,
            )
            last_events, last_time = health.events, now
            next_progress = now + interval


def _behind(size: int | None) -> str:
    return "? bytes" if size is None else human_bytes(size)


def _reopen(writer: SinkWriter) -> bool:
    """SIGHUP: a new file at the same path, once the old one is written out (and fsynced).

    Returns False when the output broke: the stream is to end, and
    ``join()`` raises the failure (the consumer's final flush does).
    """
    sink = writer.sink
    if not isinstance(sink, JsonLinesSink) or sink.path is None:
        return True
    sink.reopen()
    try:
        writer.flush()  # now, rather than at the next timed flush
    except Exception:
        if writer.failure is None:
            raise
        return False
    return True
