"""What every ``replicant`` command shares: exit codes, errors, argument types, the helper
that declares a command.

A command module (``stream``, ``slot``, ``check``, ``demo``) has a
``register(commands)`` function that declares its subcommands with
:meth:`Commands.add` (the DSN positional, ``--slot``, the help layout and
the handler in one call) and then adds its own options; its handlers take
the parsed arguments and return an exit code, or raise
:class:`CommandError`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Callable

import psycopg2

from replicant.errors import ConfigurationError, ConnectionLost, SlotError
from replicant.lsn import LSN

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "PROG",
    "CommandError",
    "Commands",
    "Handler",
    "HelpFormatter",
    "UsageError",
    "add_common",
    "count_arg",
    "explain",
    "lsn_arg",
    "one_line",
    "option_arg",
    "quiet_broken_pipe",
    "seconds_arg",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

PROG = "replicant"

Handler = Callable[[argparse.Namespace], int]


# --- errors --------------------------------------------------------------------------


class CommandError(Exception):
    """A command cannot do what it was asked: one line on stderr, exit ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandError):
    """A usage problem found after parsing: ``replicant COMMAND: error: ...``, exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_USAGE)


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (a server's multi-line message joined with "; ")."""
    if isinstance(error, psycopg2.Error):
        text = (error.pgerror or str(error) or type(error).__name__).strip()
    else:
        text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


_PASS_PLUGIN = re.compile(r"pass plugin='([^']*)'")


def explain(error: BaseException, args: argparse.Namespace | None = None) -> str:
    """The message for ``error``, reworded where the library speaks of Python arguments.

    With the command's ``args``, hints name the command's own connection
    string and slot, ready to copy.
    """
    text = one_line(error)
    dsn = getattr(args, "hint_dsn", None) or getattr(args, "dsn", None)
    slot = getattr(args, "slot", None)
    if isinstance(error, SlotError) and "create_slot=True" in text:
        plugin = getattr(args, "plugin", None)
        words = [PROG, "slot", "create", *([shlex.quote(dsn)] if dsn else [])]
        words += ["--slot", shlex.quote(slot) if slot else "NAME"]
        if plugin not in (None, "pgoutput"):
            words += ["--plugin", shlex.quote(str(plugin))]
        command = " ".join(words)
        text = text.replace(
            "(pass create_slot=True to create it)",
            f"(add --create-slot, or run: {command})",
        )
    if isinstance(error, SlotError):
        text = _PASS_PLUGIN.sub(lambda m: f"add --plugin {shlex.quote(m.group(1))}", text)
    if (
        isinstance(error, ConnectionLost)
        and text.startswith("could not connect")
        and getattr(args, "command_name", None) == "stream"
    ):
        text += " (the first connection failed; --retry-first-connect keeps trying)"
    filename = error.filename if isinstance(error, OSError) else None
    if filename is not None and str(filename) not in text:
        text = f"{filename}: {text}"
    return text


def quiet_broken_pipe() -> int:
    """The reader of standard output went away (``| head``): exit 0, quietly.

    That is how such pipelines end. Standard output is pointed at /dev/null
    so that the interpreter's own final flush does not complain.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_OK


# --- argument types ------------------------------------------------------------------


def lsn_arg(text: str) -> LSN:
    """An ``X/Y`` LSN argument."""
    try:
        return LSN.parse(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def option_arg(text: str) -> tuple[str, str]:
    """A ``name[=value]`` argument; a bare ``name`` means on (as pg_recvlogical's ``-o``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not key:
        raise argparse.ArgumentTypeError(f"expected name or name=value, not {text!r}")
    return key, value if sep else "on"


def count_arg(text: str) -> int:
    """A whole number, zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more: {text!r}")
    return value


def seconds_arg(allow_zero: bool) -> Callable[[str], float]:
    """A number of seconds: more than zero, or zero or more with ``allow_zero``."""

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


# --- declaring commands ----------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help layout of every parser of the command: epilogs as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def add_common(parser: argparse.ArgumentParser) -> None:
    """The options every command takes (``-v``), added last so they list last in the help."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="say more on stderr (progress, tracebacks on errors); -vv for debug logging",
    )


class Commands:
    """The subcommands of one parser: where command modules declare theirs.

    ``Commands.root(parser)`` starts the top level; :meth:`group` makes a
    command with actions of its own (``slot list``), :meth:`add` a command
    that runs. :meth:`finish` adds the common options to every command once
    all are declared.
    """

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        *,
        dest: str,
        metavar: str,
        label: str,
        noun: str,
        leaves: list[argparse.ArgumentParser],
    ) -> None:
        self.parser = parser
        self.label = label  # "replicant", "replicant slot"
        self.noun = noun  # what to choose: "command", "action"
        self.names: list[str] = []
        self._subparsers = parser.add_subparsers(dest=dest, metavar=metavar)
        self._leaves = leaves

    @classmethod
    def root(cls, parser: argparse.ArgumentParser) -> Commands:
        """The top-level commands of ``parser``."""
        return cls(parser, dest="command", metavar="COMMAND", label=PROG, noun="command", leaves=[])

    def _parser(
        self, name: str, *, help: str, description: str, epilog: str, short_help: bool = True
    ) -> argparse.ArgumentParser:
        self.names.append(name)
        parser = self._subparsers.add_parser(
            name,
            help=help,
            description=description,
            epilog=epilog,
            formatter_class=HelpFormatter,
            add_help=short_help,
        )
        if not short_help:  # -h is the host, as in PostgreSQL's own clients
            parser.add_argument(
                "-?", "--help", action="help", help="show this help message and exit"
            )
        return parser

    def add(
        self,
        name: str,
        *,
        handler: Handler,
        help: str,
        description: str,
        epilog: str,
        dsn: bool = True,
        slot: bool = False,
        short_help: bool = True,
        slot_flags: tuple[str, ...] = ("--slot",),
    ) -> argparse.ArgumentParser:
        """Declare a command that runs ``handler``; returns its parser for its own options.

        ``dsn`` adds the optional connection string positional, ``slot`` the
        required ``--slot NAME`` (spelled ``slot_flags``). Without
        ``short_help``, help is ``--help`` and ``-?`` only, leaving ``-h``
        free for the host.
        """
        parser = self._parser(
            name, help=help, description=description, epilog=epilog, short_help=short_help
        )
        if dsn:
            parser.add_argument(
                "dsn",
                nargs="?",
                metavar="DSN",
                help="libpq connection string or URI (default: the PG* environment variables)",
            )
        if slot:
            parser.add_argument(
                *slot_flags, dest="slot", required=True, metavar="NAME",
                help="replication slot name",
            )  # fmt: skip
        label = self.label.removeprefix(PROG).strip()
        parser.set_defaults(handler=handler, command_name=f"{label} {name}".strip(), group=None)
        self._leaves.append(parser)
        return parser

    def group(self, name: str, *, help: str, description: str, epilog: str, dest: str) -> Commands:
        """Declare a command made of actions (``slot list``, ``slot drop``, ...)."""
        parser = self._parser(name, help=help, description=description, epilog=epilog)
        nested = Commands(
            parser,
            dest=dest,
            metavar="ACTION",
            label=f"{self.label} {name}",
            noun="action",
            leaves=self._leaves,
        )
        # Without an action: main() says which to choose.
        parser.set_defaults(handler=None, group=nested)
        return nested

    def finish(self, version: str | None = None) -> None:
        """Add the common options (and ``--version``, when given) to every command declared."""
        for parser in self._leaves:
            if version is not None:
                parser.add_argument(
                    "-V", "--version", action="version", version=version,
                    help="print the version and exit",
                )  # fmt: skip
            add_common(parser)
