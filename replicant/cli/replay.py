"""``replicant replay``: decode a recording offline, as ``replicant stream`` prints a live one.

The same decoders, the same lines (JSON Lines or the compact text), no
server: what ``replicant stream`` printed while the recording was made.
"""

from __future__ import annotations

import argparse
import os
import sys

from replicant.changes import Event
from replicant.cli.common import EXIT_OK, PROG, CommandError, Commands
from replicant.formatting import format_json, format_text, human_bytes
from replicant.lsn import LSN
from replicant.recording import Position, RecordedFrame, Recording, Session, Stop, replay
from replicant.sinks import JsonLinesSink

__all__ = ["register"]

EPILOG = """\
examples:
  replicant replay app.rpl                      every event as JSON Lines
  replicant replay app.rpl --format text        the compact text form
  replicant replay app.rpl --file events.jsonl  into a file
  replicant replay app.rpl --info               what the recording holds

The lines are those `replicant stream` writes for the same stream (with the
same --format and --relations). A recording cut by a crash is replayed up to
its last complete record, with a warning; a damaged one is an error.
"""


def register(commands: Commands) -> None:
    """Declare ``replicant replay`` and its options."""
    parser = commands.add(
        "replay",
        handler=run,
        help="decode a recording made by `replicant record`, without a server",
        description="Decode a recording made by `replicant record` through the same decoders "
        "and print its events as `replicant stream` does.",
        epilog=EPILOG,
        dsn=False,
    )
    parser.add_argument("recording", metavar="FILE", help="the recording to replay")
    parser.add_argument(
        "--format",
        choices=("json", "text"),
        default="json",
        help="json: JSON Lines (default); text: compact, for people",
    )
    parser.add_argument(
        "--relations",
        action="store_true",
        help="also write relation events (table descriptions with column types)",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="PATH",
        help="append to PATH instead of standard output ('-' is standard output)",
    )
    parser.add_argument(
        "--info",
        action="store_true",
        help="describe the recording (header, sessions, frames, how it ends) instead",
    )


def run(args: argparse.Namespace) -> int:
    """``replicant replay``: 0 when the recording was replayed to its end."""
    if args.info:
        _info(args.recording)
        return EXIT_OK
    path = None if args.file in (None, "-") else args.file
    try:
        sink = JsonLinesSink(
            path,
            fsync=False,
            formatter=format_json if args.format == "json" else format_text,
            relations=args.relations,
        )
    except OSError as error:
        raise CommandError(f"cannot open {args.file}: {error.strerror}") from None

    def write(event: Event) -> None:
        sink.write(event)

    try:
        summary = replay(args.recording, write)
        sink.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_OK
    finally:
        try:
            sink.close()
        except BrokenPipeError:
            _quiet_broken_pipe()
    if summary.truncated is not None:
        print(
            f"{PROG}: warning: {args.recording}: the last record is incomplete "
            f"({summary.truncated}), as a crash leaves it: ignored",
            file=sys.stderr,
        )
    if args.verbose:
        print(
            f"{PROG}: {summary.events} events from {summary.frames} frames in "
            f"{summary.sessions} sessions, up to {summary.position}",
            file=sys.stderr,
        )
    return EXIT_OK


def _quiet_broken_pipe() -> None:
    # The reader of our standard output went away (``| head``): point stdout
    # at /dev/null so the interpreter's final flush does not complain.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _info(path: str) -> None:
    with Recording(path) as recording:
        header = recording.header
        frames = sessions = positions = 0
        payload = 0
        first: LSN | None = None
        last = header.start
        stopped: Stop | None = None
        for entry in recording.entries():
            stopped = None
            if type(entry) is RecordedFrame:
                frames += 1
                payload += len(entry.data)
                first = entry.data_start if first is None else min(first, entry.data_start)
                last = max(last, entry.wal_end)
            elif type(entry) is Session:
                sessions += 1
            elif type(entry) is Position:
                positions += 1
                last = max(last, entry.lsn)
            elif type(entry) is Stop:
                stopped = entry
                last = max(last, entry.acknowledged)
        major, minor = divmod(header.server_version, 10000)
        publication = ", ".join(header.publication) if header.publication else None
        plugin = header.plugin + (f", publication {publication}" if publication else "")
        options = " ".join(f"{k}={v}" for k, v in sorted(header.start_options.items()))
        if recording.truncated is not None:
            ending = f"cut by a crash: {recording.truncated}, ignored"
        elif stopped is not None:
            ending = f"stopped cleanly, acknowledged up to {stopped.acknowledged}"
        else:
            ending = "no clean stop (the recorder was killed, or is still recording)"
        rows = [
            (
                "recording",
                f"{path} (format {header.format_version}, {human_bytes(recording.size)})",
            ),
            ("slot", f"{header.slot} (plugin {plugin})"),
            ("options", options or "-"),
            (
                "server",
                f"PostgreSQL {major if major >= 10 else header.server_version // 100}"
                f"{'.' + str(minor) if major >= 10 else ''} ({header.server_version})",
            ),
            ("recorded", f"{header.created} by replicant {header.replicant_version}"),
            ("start", str(header.start)),
            ("sessions", str(sessions)),
            (
                "frames",
                f"{frames} ({human_bytes(payload)} of payload)"
                + (f", from {first}" if first is not None else ""),
            ),
            ("positions", str(positions)),
            ("covers up to", str(last)),
            ("end", ending),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
