"""``replicant slot``: create, drop, list and describe replication slots."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from replicant.cli.common import EXIT_OK, CommandError, Commands, one_line
from replicant.connection import ReplicationConnection
from replicant.errors import SlotError
from replicant.formatting import human_bytes

__all__ = ["register"]

EPILOG = """\
examples:
  replicant slot list "dbname=app"
  replicant slot list "dbname=app" --json
  replicant slot info "dbname=app" --slot app
  replicant slot create "dbname=app" --slot app
  replicant slot drop "dbname=app" --slot app
"""


def register(commands: Commands) -> None:
    """Declare ``replicant slot`` and its actions."""
    slot = commands.group(
        "slot",
        help="create, drop, list and describe replication slots",
        description="Manage replication slots and see how far behind they are.",
        epilog=EPILOG,
        dest="slot_command",
    )
    listing = slot.add(
        "list",
        handler=list_slots,
        help="every slot: plugin, database, active, LSNs, lag, state, WAL status",
        description="List every replication slot of the server with its lag behind the "
        "current WAL.",
        epilog=EPILOG,
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    info = slot.add(
        "info",
        handler=slot_info,
        help="one slot in detail",
        description="Show one replication slot in detail.",
        epilog=EPILOG,
        slot=True,
    )
    info.add_argument("--json", action="store_true", help="print JSON")

    create = slot.add(
        "create",
        handler=create_slot,
        help="create a logical replication slot",
        description="Create a logical replication slot. It keeps WAL from now on until a "
        "consumer confirms it: drop slots you no longer use.",
        epilog=EPILOG,
        slot=True,
    )
    create.add_argument(
        "--plugin", default="pgoutput", metavar="NAME", help="output plugin (default pgoutput)"
    )
    create.add_argument(
        "--two-phase", action="store_true", help="decode prepared transactions (PostgreSQL 15+)"
    )
    create.add_argument(
        "--if-not-exists", action="store_true", help="do nothing if the slot exists"
    )

    drop = slot.add(
        "drop",
        handler=drop_slot,
        help="drop a replication slot",
        description="Drop a replication slot; the WAL it kept can then be recycled.",
        epilog=EPILOG,
        slot=True,
    )
    drop.add_argument(
        "--wait", action="store_true", help="wait while another connection uses the slot"
    )
    drop.add_argument("--if-exists", action="store_true", help="do nothing if it is missing")


def _missing(name: str) -> CommandError:
    return CommandError(f'replication slot "{name}" does not exist [SQLSTATE 42704]')


def _slot_rows(conn: ReplicationConnection, name: str | None) -> list[dict[str, Any]]:
    version = conn.server_version
    wal = "s.wal_status, s.safe_wal_size" if version >= 130000 else "NULL, NULL"
    two_phase = "s.two_phase" if version >= 140000 else "NULL"
    conflicting = "s.conflicting" if version >= 160000 else "NULL"
    reason = "s.invalidation_reason" if version >= 170000 else "NULL"
    where = "WHERE s.slot_name = %s" if name is not None else ""
    rows = conn.execute(
        "SELECT s.slot_name, s.slot_type, s.plugin, s.database, s.temporary, s.active,"
        " s.active_pid, s.restart_lsn::text, s.confirmed_flush_lsn::text,"
        f" {wal}, {two_phase}, w.lsn::text,"
        " pg_catalog.pg_wal_lsn_diff(w.lsn, COALESCE(s.confirmed_flush_lsn, s.restart_lsn))"
        "::bigint,"
        " pg_catalog.pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint,"
        f" {conflicting}, {reason}"
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
        "conflicting",
        "invalidation_reason",
    )
    slots = [dict(zip(keys, row, strict=True)) for row in rows]
    for slot in slots:
        slot["lag"] = human_bytes(slot["lag_bytes"])
        slot["state"] = _state(slot)
    return slots


def _state(row: dict[str, Any]) -> str:
    """``active``, ``inactive`` or ``invalidated (why)``: can a consumer stream it, is one?"""
    reason = row["invalidation_reason"]
    if reason is None and row["conflicting"]:
        reason = "conflicting"
    if reason is None and row["wal_status"] == "lost":
        reason = "wal_removed"
    if reason is not None:
        return f"invalidated ({reason})"
    state = "active" if row["active"] else "inactive"
    if row["wal_status"] in ("unreserved", "extended"):
        state += f", WAL {row['wal_status']}"  # on its way to being lost, or beyond the limit
    return state


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


def list_slots(args: argparse.Namespace) -> int:
    """``replicant slot list``: every slot of the server, as a table or JSON."""
    with ReplicationConnection.connect(args.dsn) as conn:
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
        "LAG_BYTES",
        "STATE",
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
            r["lag"],
            "-" if r["lag_bytes"] is None else str(r["lag_bytes"]),
            r["state"],
            r["wal_status"] or "-",
            _safe_size(r),
        ]
        for r in rows
    ]
    _print_table(headers, table, sys.stdout)
    return EXIT_OK


def slot_info(args: argparse.Namespace) -> int:
    """``replicant slot info``: one slot in detail."""
    with ReplicationConnection.connect(args.dsn) as conn:
        rows = _slot_rows(conn, args.slot)
    if not rows:
        raise _missing(args.slot)
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
        ("state", row["state"]),
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


def create_slot(args: argparse.Namespace) -> int:
    """``replicant slot create``."""
    with ReplicationConnection.connect(args.dsn) as conn:
        existing = conn.read_slot(args.slot)
        if existing is not None:
            if args.if_not_exists:
                print(f"slot {args.slot} exists already (plugin {existing.plugin})")
                return EXIT_OK
            raise CommandError(
                f'replication slot "{args.slot}" already exists (plugin {existing.plugin}) '
                "[SQLSTATE 42710] (add --if-not-exists to accept an existing slot)"
            )
        created = conn.create_slot(args.slot, args.plugin, two_phase=args.two_phase)
    print(f"created slot {created.name} (plugin {created.plugin}) at {created.consistent_point}")
    return EXIT_OK


def drop_slot(args: argparse.Namespace) -> int:
    """``replicant slot drop``."""
    with ReplicationConnection.connect(args.dsn) as conn:
        if conn.read_slot(args.slot) is None:
            if args.if_exists:
                print(f"no slot {args.slot}; nothing to drop")
                return EXIT_OK
            raise _missing(args.slot)
        try:
            conn.drop_slot(args.slot, wait=args.wait)
        except SlotError as error:
            if error.sqlstate != "55006":
                raise
            raise CommandError(
                f"{one_line(error)} (add --wait to drop it once its consumer disconnects)"
            ) from None
    print(f"dropped slot {args.slot}")
    return EXIT_OK
