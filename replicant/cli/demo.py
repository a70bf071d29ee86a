"""``replicant demo``: the library's demo (:mod:`replicant.demo`) as a command."""

from __future__ import annotations

import argparse
import sys

from replicant.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Commands, seconds_arg

__all__ = ["register"]

EPILOG = """\
examples:
  replicant demo
  replicant demo --format json

The server comes from the PostgreSQL installed on this machine, or from the
pgserver package (pip install 'replicant[embedded]'). It runs in a temporary
directory that is removed at the end.
"""


def register(commands: Commands) -> None:
    """Declare ``replicant demo`` and its options."""
    demo = commands.add(
        "demo",
        handler=run,
        help="stream changes from a throwaway PostgreSQL, to see how it works",
        description="Start a throwaway PostgreSQL, make a table and a publication, run a short "
        "workload and show the decoded events as they arrive; then clean everything up.",
        epilog=EPILOG,
        dsn=False,
    )
    demo.add_argument(
        "--format", choices=("text", "json"), default="text", help="how to show events"
    )
    demo.add_argument("--bindir", metavar="DIR", help="PostgreSQL binaries to use (default: found)")
    demo.add_argument(
        "--pause",
        type=seconds_arg(allow_zero=True),
        default=0.5,
        metavar="SECONDS",
        help="pause between the workload's steps (default 0.5)",
    )


def run(args: argparse.Namespace) -> int:
    """``replicant demo``: 0 when it ran through, 1 when it failed, 130 on Ctrl-C.

    A failure or an interruption inside the demo was already told on its
    output; a server that cannot be started is an error like any other.
    """
    from replicant.demo import DemoFailed, run_demo  # the demo pulls in the cluster machinery

    try:
        run_demo(
            out=sys.stdout,
            bindir=args.bindir,
            json_lines=args.format == "json",
            pause=args.pause,
        )
    except DemoFailed:
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
