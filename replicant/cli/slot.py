"""``replicant slot``: create, drop, list and describe replication slots."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import IO, Any

from replicant.cli.common import EXIT_OK, CommandError, Commands, one_line
from replicant.connection import INVALIDATED_SLOT_ADVICE, ReplicationConnection, SlotState
from replicant.errors import SlotError
from replicant.formatting import human_bytes
from replicant.lsn import LSN

__all__ = ["register"]

EPILOG = """\
examples:
  replicant slot list "dbname=app"
  replicant slot list "dbname=app" --json
  replicant slot info "dbname=app" --slot app
  replicant slot create "dbname=app" --slot app
  replicant slot create "dbname=app" --slot app --failover   # PostgreSQL 17+
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
        "--two-phase",
        action="store_true",
        help="decode prepared transactions at PREPARE (PostgreSQL 14+)",
    )
    create.add_argument(
        "--failover",
        action="store_true",
        help="a failover slot, synchronised to standbys (PostgreSQL 17+)",
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
    """The slots (or only ``name``) as JSON-ready rows, with lag behind the current WAL.

    Fields the server version lacks are ``None`` (``failover`` and ``synced``
    before 17, ``conflicting`` before 16, ...).
    """
    slots = conn.read_slots(name)
    current = conn.wal_position()
    rows = [_slot_row(state, current) for state in slots]
    for row in rows:
        row["lag"] = human_bytes(row["lag_bytes"])
        row["state"] = _state(row)
    return rows


def _lag(current: LSN | None, lsn: LSN | None) -> int | None:
    return None if current is None or lsn is None else int(current) - int(lsn)


def _slot_row(state: SlotState, current: LSN | None) -> dict[str, Any]:
    inactive_since = state.inactive_since
    return {
        "slot": state.name,
        "slot_type": state.slot_type,
        "plugin": state.plugin,
        "database": state.database,
        "temporary": state.temporary,
        "active": state.active,
        "active_pid": state.active_pid,
        "restart_lsn": _text(state.restart_lsn),
        "confirmed_flush_lsn": _text(state.confirmed_flush_lsn),
        "wal_status": state.wal_status,
        "safe_wal_size": state.safe_wal_size,
        "two_phase": state.two_phase,
        "two_phase_at": _text(state.two_phase_at),
        "failover": state.failover,
        "synced": state.synced,
        "conflicting": state.conflicting,
        "invalidation_reason": state.invalidation_reason,
        "invalidated": state.invalidated,
        "inactive_since": None if inactive_since is None else inactive_since.isoformat(),
        "invalidation_cause": state.invalidation_cause,
        "current_wal_lsn": _text(current),
        "lag_bytes": _lag(current, state.confirmed_flush_lsn or state.restart_lsn),
        "retained_bytes": _lag(current, state.restart_lsn),
    }


def _text(lsn: LSN | None) -> str | None:
    return None if lsn is None else str(lsn)


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
    """``replicant slot list``: every slot of the server, as a table or JSON.

    The table has a column for each thing the server reports: FAILOVER and
    SYNCED from 17, INACTIVE_SINCE from 17; INVALIDATED names the reason
    (``wal_status lost`` before 17, ``conflicting`` on a 16 standby).
    """
    with ReplicationConnection.connect(args.dsn) as conn:
        rows = _slot_rows(conn, None)
        version = conn.server_version
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no replication slots")
        return EXIT_OK
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("SLOT", lambda r: r["slot"]),
        ("PLUGIN", lambda r: r["plugin"] or r["slot_type"]),
        ("DATABASE", lambda r: r["database"] or "-"),
        ("ACTIVE (PID)", _active),
        ("RESTART_LSN", lambda r: r["restart_lsn"] or "-"),
        ("CONFIRMED_FLUSH", lambda r: r["confirmed_flush_lsn"] or "-"),
        ("LAG", lambda r: r["lag"]),
        ("LAG_BYTES", lambda r: "-" if r["lag_bytes"] is None else str(r["lag_bytes"])),
        ("STATE", lambda r: r["state"]),
        ("WAL_STATUS", lambda r: r["wal_status"] or "-"),
        ("SAFE_WAL_SIZE", _safe_size),
        ("INVALIDATED", lambda r: r["invalidated"] or "no"),
    ]
    if version >= 170000:
        columns += [
            ("FAILOVER", lambda r: _yes(r["failover"])),
            ("SYNCED", lambda r: _yes(r["synced"])),
            ("INACTIVE_SINCE", lambda r: _since(r["inactive_since"])),
        ]
    table = [[cell(r) for _, cell in columns] for r in rows]
    _print_table([header for header, _ in columns], table, sys.stdout)
    return EXIT_OK


def _since(moment: str | None) -> str:
    """An ISO timestamp to the second (the table has no room for microseconds)."""
    if moment is None:
        return "-"
    return datetime.fromisoformat(moment).isoformat(sep=" ", timespec="seconds")


def slot_info(args: argparse.Namespace) -> int:
    """``replicant slot info``: one slot in detail, with what its server version reports."""
    with ReplicationConnection.connect(args.dsn) as conn:
        rows = _slot_rows(conn, args.slot)
        version = conn.server_version
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
    ]
    if version >= 180000:
        lines.append(("two_phase_at", row["two_phase_at"] or "-"))
    if version >= 170000:
        lines += [("failover", _yes(row["failover"])), ("synced", _yes(row["synced"]))]
    lines += [
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
    if version >= 160000:
        lines.append(("conflicting", _yes(row["conflicting"])))
    if version >= 170000:
        lines += [
            ("invalidation_reason", row["invalidation_reason"] or "-"),
            ("inactive_since", _since(row["inactive_since"])),
        ]
    lines.append(("invalidated", _invalidated_words(row)))
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return EXIT_OK


def _invalidated_words(row: dict[str, Any]) -> str:
    reason = row["invalidated"]
    if reason is None:
        return "no"
    cause = f" ({row['invalidation_cause']})" if row["invalidation_cause"] else ""
    return f"yes: {reason}{cause}. {INVALIDATED_SLOT_ADVICE}"


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
        created = conn.create_slot(
            args.slot, args.plugin, two_phase=args.two_phase, failover=args.failover
        )
    chosen = (("two-phase", args.two_phase), ("failover", args.failover))
    kinds = [word for word, on in chosen if on]
    kind = f", {' and '.join(kinds)}" if kinds else ""
    print(
        f"created slot {created.name} (plugin {created.plugin}{kind}) at {created.consistent_point}"
    )
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
