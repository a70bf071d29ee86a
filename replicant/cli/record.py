"""``replicant record``: a slot's raw stream into a recording file, for offline replay.

The file (see :mod:`replicant.recording` for its format) holds every frame
the server sent, with the plugin and its options; ``replicant replay``
decodes it later without a server. The server is told only what the file
holds and has fsynced, so running the same command again continues the
file where it ends, with nothing missing and nothing twice.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from replicant._signals import StopSignals
from replicant.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    PROG,
    Commands,
    UsageError,
    count_arg,
    lsn_arg,
    option_arg,
    seconds_arg,
)
from replicant.decoders import needs_publication
from replicant.errors import ConfigurationError
from replicant.formatting import human_bytes
from replicant.recording import Recorder

__all__ = ["register"]

EPILOG = """\
examples:
  # record publication app_pub's stream, creating the slot if needed
  replicant record "dbname=app" --slot rec --publication app_pub --create-slot --out app.rpl

  # with streamed transactions and logical messages, up to a position
  replicant record "dbname=app" --slot rec --publication app_pub \\
      -o streaming=on -o messages=true --end 0/1A2B3C4 --out app.rpl

  # then, anywhere, without a server
  replicant replay app.rpl
  replicant replay app.rpl --info

An existing FILE is continued, not overwritten: it must be a recording of
the same slot, plugin, publication and options. A transaction cut short at
its end (after a crash) is dropped and comes again from the server, so the
file holds every transaction once. The server is told only what the file
holds and has fsynced (every --fsync-interval seconds), so a slot that has
moved past the end of the file is refused (that would leave a gap).
"""

_PROGRESS_INTERVAL = 5.0
_TICK = 0.2


def register(commands: Commands) -> None:
    """Declare ``replicant record`` and its options."""
    record = commands.add(
        "record",
        handler=run,
        help="record a slot's raw stream into a file, for replay without a server",
        description="Record the raw stream of a logical replication slot (every frame, with "
        "the plugin, its options and the server version) into a compact file that "
        "`replicant replay` decodes offline: for bug reports and golden tests.",
        epilog=EPILOG,
        slot=True,
    )
    record.add_argument(
        "--out", required=True, metavar="FILE", help="the recording (continued if it exists)"
    )
    record.add_argument(
        "--publication",
        action="append",
        metavar="P",
        help="publication to stream (pgoutput; repeat for several)",
    )
    record.add_argument(
        "--plugin",
        default="pgoutput",
        metavar="NAME",
        help="output plugin: pgoutput (default), wal2json, or any other (raw payloads)",
    )
    record.add_argument(
        "-o",
        "--option",
        action="append",
        type=option_arg,
        metavar="KEY=VALUE",
        help="extra plugin option, passed as is (repeatable), e.g. -o streaming=on",
    )
    record.add_argument("--create-slot", action="store_true", help="create the slot if missing")
    record.add_argument(
        "--start",
        type=lsn_arg,
        metavar="LSN",
        help="a new recording: skip transactions that committed before LSN (X/Y)",
    )
    record.add_argument(
        "--end",
        type=lsn_arg,
        metavar="LSN",
        help="stop once the stream reaches LSN (X/Y), then exit 0",
    )
    record.add_argument(
        "-F",
        "--fsync-interval",
        type=seconds_arg(allow_zero=True),
        default=10.0,
        metavar="SECONDS",
        help="fsync the file this often, acknowledging what it holds (default 10; "
        "0: never fsync, acknowledge at every transaction end once written)",
    )
    record.add_argument(
        "-s",
        "--status-interval",
        type=seconds_arg(allow_zero=False),
        default=10.0,
        metavar="SECONDS",
        help="seconds between status updates to the server (default 10)",
    )
    record.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit with an error when the connection is lost, instead of reconnecting",
    )
    record.add_argument(
        "--max-retries",
        type=count_arg,
        metavar="N",
        help="give up after N failed reconnection attempts in a row (default: never)",
    )


class _Signals(StopSignals):
    """Ctrl-C and SIGTERM stop the recorder gracefully; a second Ctrl-C gives up."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        super().__init__(lambda signum: self.wake.set())


def run(args: argparse.Namespace) -> int:
    """``replicant record``: record until ``--end``, a signal or a failure."""
    publications: list[str] = args.publication or []
    if needs_publication(args.plugin) and not publications:
        raise UsageError(f"--publication is required with the {args.plugin} plugin")
    if not needs_publication(args.plugin) and publications:
        raise UsageError(f"--publication is a pgoutput option; {args.plugin} does not take it")
    try:
        recorder = Recorder(
            args.out,
            args.dsn,
            slot=args.slot,
            plugin=args.plugin,
            publication=publications or None,
            options=dict(args.option or []),
            create_slot=args.create_slot,
            start_lsn=args.start,
            end_lsn=args.end,
            fsync_interval=args.fsync_interval,
            status_interval=args.status_interval,
            reconnect=not args.no_reconnect,
            max_retries=args.max_retries,
        )
    except ConfigurationError as error:
        raise UsageError(str(error)) from None
    signals = _Signals()
    if threading.current_thread() is threading.main_thread():
        signals.install()
    started = time.monotonic()
    try:
        recorder.start()
        _wait(recorder, signals, verbose=args.verbose > 0)
        recorder.stop()
        recorder.join()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted again; not waiting for a clean stop", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signals.restore()
        recorder.close()
    summary = _summary(recorder, time.monotonic() - started)
    if signals.stop_signal is not None:
        name = "interrupted" if signals.stop_signal == signal.SIGINT else "terminated"
        print(f"{PROG}: {name}; {summary}", file=sys.stderr)
        return EXIT_INTERRUPTED if signals.stop_signal == signal.SIGINT else EXIT_TERMINATED
    if args.verbose:
        print(f"{PROG}: done; {summary}", file=sys.stderr)
    return EXIT_OK


def _summary(recorder: Recorder, elapsed: float) -> str:
    return (
        f"{recorder.frames} frames recorded in {elapsed:.1f} s; {recorder.path} holds "
        f"{human_bytes(recorder.size)}, acknowledged up to {recorder.acknowledged}"
    )


def _wait(recorder: Recorder, signals: _Signals, *, verbose: bool) -> None:
    """Wait in the main thread (for signals) until the recorder ends; report with -v."""
    consumer = recorder.consumer
    next_progress = time.monotonic() + _PROGRESS_INTERVAL
    while consumer.running:
        signals.wake.wait(_TICK)
        signals.wake.clear()
        if signals.stop_signal is not None:
            return
        now = time.monotonic()
        if verbose and now >= next_progress:
            print(
                f"{PROG}: {recorder.frames} frames, {human_bytes(recorder.size)} in "
                f"{recorder.path}; acknowledged {recorder.acknowledged}",
                file=sys.stderr,
                flush=True,
            )
            next_progress = now + _PROGRESS_INTERVAL
