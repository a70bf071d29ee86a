"""``replicant snapshot``: a one-off, consistent copy of tables as JSON Lines (``"op": "read"``).

No slot and no replication privilege: one ordinary connection opens a
``REPEATABLE READ`` transaction and exports its snapshot
(``pg_export_snapshot()``), the workers import it, and every row of the
tables is written as it was at that one moment. To copy and then follow the
changes, use ``replicant stream --snapshot initial`` instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import IO

import psycopg2

from replicant.changes import Event, SnapshotEnd
from replicant.cli.common import EXIT_INTERRUPTED, EXIT_OK, CommandError, Commands, UsageError
from replicant.errors import ConfigurationError
from replicant.formatting import format_json, format_text
from replicant.lsn import LSN
from replicant.snapshot import connect_sql, take_snapshot

__all__ = ["register"]

EPILOG = """\
examples:
  # every table of a publication, as JSON Lines on standard output
  replicant snapshot "dbname=app" --publication app_pub

  # two tables, four connections in parallel, into a file
  replicant snapshot "dbname=app" --table public.orders --table public.customers \\
      --workers 4 --file orders.jsonl

Each row is one line with "op": "read", framed by snapshot_begin and
snapshot_end lines (per table, with its row count, and for the whole copy).
"""


def register(commands: Commands) -> None:
    """Declare ``replicant snapshot`` and its options."""
    parser = commands.add(
        "snapshot",
        handler=run,
        help="copy tables consistently, one JSON line per row",
        description="Write every row of the given tables (or a publication's) as they were "
        "at one moment, one line per row, without a replication slot.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--publication", action="append", metavar="P", help="copy this publication's tables"
    )
    parser.add_argument(
        "-t", "--table", action="append", metavar="T", help="copy this table (repeatable)"
    )
    parser.add_argument(
        "-w", "--workers", type=int, default=1, metavar="N", help="connections reading in parallel"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=100_000,
        metavar="N",
        help="split tables above N rows into key (or page) ranges (default 100000)",
    )
    parser.add_argument("--binary", action="store_true", help="read values in binary form")
    parser.add_argument(
        "-f", "--file", metavar="PATH", help="write to PATH instead of standard output"
    )
    parser.add_argument(
        "--format",
        choices=("json", "text"),
        default="json",
        help="json: JSON Lines (default); text: compact, for people",
    )


def run(args: argparse.Namespace) -> int:
    """``replicant snapshot``: copy, write, exit 0; 130 when interrupted."""
    if not args.publication and not args.table:
        raise UsageError("name the tables: --table T (repeatable) or --publication P")
    if args.workers < 1 or args.chunk_rows < 1:
        raise UsageError("--workers and --chunk-rows must be at least 1")
    formatter = format_json if args.format == "json" else format_text
    try:
        out: IO[str] = (
            sys.stdout if args.file in (None, "-") else open(args.file, "w", encoding="utf-8")  # noqa: SIM115
        )
    except OSError as error:
        raise CommandError(f"cannot open {args.file}: {error.strerror}") from None
    holder = connect_sql(args.dsn)
    stop = threading.Event()
    total = 0

    def write(event: Event) -> None:
        nonlocal total
        out.write(formatter(event) + "\n")
        if isinstance(event, SnapshotEnd) and event.table is None:
            total = event.rows

    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(
                "SELECT pg_catalog.pg_export_snapshot(), CASE WHEN pg_is_in_recovery()"
                " THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text"
            )
            row = cur.fetchone()
            assert row is not None
            name, position = row
        # The exporting transaction stays open and idle until the copy is done.
        take_snapshot(
            args.dsn,
            {},
            snapshot_name=name,
            lsn=LSN(position or 0),
            deliver=write,
            stop=stop,
            tables=args.table,
            publications=args.publication or (),
            workers=args.workers,
            binary=args.binary,
            chunk_rows=args.chunk_rows,
        )
        out.flush()
        if out is not sys.stdout:
            os.fsync(out.fileno())
    except KeyboardInterrupt:
        stop.set()
        return EXIT_INTERRUPTED
    except ConfigurationError as error:
        raise UsageError(str(error)) from None
    except psycopg2.Error as error:
        raise CommandError(str(error).strip()) from None
    finally:
        holder.close()
        if out is not sys.stdout:
            out.close()
    if args.verbose:
        print(f"replicant: {total} rows copied", file=sys.stderr)
    return EXIT_OK
