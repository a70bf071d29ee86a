"""The ``replicant`` command: stream decoded changes, manage slots, check a server.

``replicant stream`` writes one line per event (JSON Lines, or a compact
text), acknowledging an event only once its line is written and, for a
file, fsynced. ``replicant slot`` creates, drops, lists and describes slots,
``replicant check`` says what stands in the way of logical replication, and
``replicant demo`` shows it all on a throwaway server.

Exit codes: 0 done, 1 error, 2 usage, 130 interrupted (Ctrl-C), 143 stopped
by SIGTERM. Errors are one line on stderr; ``-v`` adds the traceback.

Each command lives in its own module (``replicant/cli/stream.py``,
``slot.py``, ``check.py``, ``demo.py``) with a ``register(commands)`` that
declares it; this module assembles the parser and runs ``main()``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence

import psycopg2
import psycopg2.extensions

from replicant import __version__
from replicant.cli import check, demo, record, replay, slot, snapshot, stream
from replicant.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PROG,
    CommandError,
    Commands,
    HelpFormatter,
    UsageError,
    add_common,
    explain,
    one_line,
    quiet_broken_pipe,
)
from replicant.errors import ConfigurationError, ReplicantError
from replicant.protocol import validate_slot_name

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "CommandError",
    "UsageError",
    "build_parser",
    "main",
]

# The commands, in the order --help lists them.
_COMMANDS = (stream, snapshot, slot, check, demo, record, replay)

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``replicant`` command."""
    parser, _ = _build()
    return parser


def _build() -> tuple[argparse.ArgumentParser, Commands]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Consume PostgreSQL logical replication: decoded, typed, safely acknowledged.",
        epilog=_MAIN_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version_text())
    add_common(parser)
    commands = Commands.root(parser)
    for module in _COMMANDS:
        module.register(commands)
    commands.finish(version=_version_text())
    return parser, commands


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
    parser, commands = _build()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    verbose = sum(_merged_verbosity(args_list))
    args.verbose = verbose
    if getattr(args, "handler", None) is None:
        # A command (or a command's action) is missing: say which to choose.
        group: Commands = getattr(args, "group", None) or commands
        group.parser.print_usage(sys.stderr)
        print(
            f"{group.label}: error: choose {'an' if group.noun[0] in 'aeiou' else 'a'} "
            f"{group.noun}: {', '.join(group.names)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _setup_logging(verbose)
    try:
        # A bad slot name is a usage error in every command (exit 2), found
        # before anything connects.
        if getattr(args, "slot", None) is not None:
            try:
                validate_slot_name(args.slot)
            except ConfigurationError as error:
                raise UsageError(str(error)) from None
        code: int = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is handled like any other
        return code
    except UsageError as error:
        print(f"{PROG} {args.command_name}: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CommandError, ReplicantError, psycopg2.Error, OSError) as error:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: error: {explain(error, args)}", file=sys.stderr)
        return error.exit_code if isinstance(error, CommandError) else EXIT_ERROR
    except Exception as error:  # a bug: still one line, the traceback with -v
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(
            f"{PROG}: internal error: {type(error).__name__}: {one_line(error)} "
            "(run with -v for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
