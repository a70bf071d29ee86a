"""``replicant check``: is this server ready for logical replication, and if not, what to fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO, Any

import psycopg2
import psycopg2.extensions

from replicant.cli.common import EXIT_ERROR, EXIT_OK, CommandError, Commands, one_line
from replicant.connection import (
    INVALIDATED_SLOT_ADVICE,
    WAL_POSITION,
    ReplicationConnection,
    mask_dsn,
    slot_state_from_row,
    slot_state_query,
)
from replicant.errors import ReplicantError
from replicant.formatting import human_bytes
from replicant.lsn import LSN
from replicant.protocol import quote_identifier

__all__ = ["register"]

EPILOG = """\
examples:
  replicant check "dbname=app"
  replicant check "host=db1 dbname=app user=repl" --publication app_pub

Exits 1 when something must be fixed before logical replication can work.
"""


def register(commands: Commands) -> None:
    """Declare ``replicant check`` and its options."""
    check = commands.add(
        "check",
        handler=run,
        help="preflight: is this server ready for logical replication?",
        description="Check a server and database for logical replication, and say in plain "
        "words what is wrong and how to fix it.",
        epilog=EPILOG,
    )
    check.add_argument(
        "--publication",
        action="append",
        metavar="P",
        help="publication to check (repeatable; default: every publication of the database)",
    )


class _Report:
    """The findings of ``check``: one line each, ``ok``, ``WARN`` or ``FAIL``."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.failures = 0
        self.warnings = 0

    def ok(self, text: str) -> None:
        self.out.write(f"  ok    {text}\n")

    def warn(self, text: str, fix: str | None = None) -> None:
        self.warnings += 1
        self._problem("WARN", text, fix)

    def fail(self, text: str, fix: str | None = None) -> None:
        self.failures += 1
        self._problem("FAIL", text, fix)

    def _problem(self, label: str, text: str, fix: str | None) -> None:
        self.out.write(f"  {label}  {text}\n")
        if fix:
            self.out.write(f"        fix: {fix}\n")


def run(args: argparse.Namespace) -> int:
    """``replicant check``: report each finding; exit 1 when something must be fixed."""
    try:
        conn = psycopg2.connect(args.dsn or "", connect_timeout=10)
    except psycopg2.Error as error:
        raise CommandError(f"could not connect: {one_line(error)}") from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            report = _Report(sys.stdout)
            _run_checks(cur, args, report, conn.server_version)
    finally:
        conn.close()
    if report.failures:
        print(
            f"{report.failures} problem{'s' if report.failures != 1 else ''} to fix"
            + (
                f", {report.warnings} warning{'s' if report.warnings != 1 else ''}"
                if report.warnings
                else ""
            )
            + "."
        )
        return EXIT_ERROR
    tail = f" ({report.warnings} warning{'s' if report.warnings != 1 else ''})"
    print("Ready for logical replication" + (tail if report.warnings else "") + ".")
    return EXIT_OK


def _setting(cur: psycopg2.extensions.cursor, name: str) -> tuple[str, str | None, bool] | None:
    cur.execute(
        "SELECT setting, unit, pending_restart FROM pg_catalog.pg_settings WHERE name = %s",
        (name,),
    )
    row = cur.fetchone()
    return None if row is None else (str(row[0]), row[1], bool(row[2]))


def _check_capacity(
    cur: psycopg2.extensions.cursor,
    report: _Report,
    setting: str,
    count_sql: str,
    *,
    when_zero: str,
    when_full: str,
    restart: str,
) -> None:
    """Report whether ``setting`` leaves room beyond what ``count_sql`` counts in use."""
    cur.execute(count_sql)
    used = int(cur.fetchone()[0])  # type: ignore[index]
    value = _setting(cur, setting)
    if value is None:
        return
    limit = int(value[0])
    if limit == 0:
        report.fail(f"{setting} = 0: {when_zero}", f"ALTER SYSTEM SET {setting} = 10; {restart}")
    elif used >= limit:
        report.fail(f"{setting} = {limit} and all {used} are in use", when_full)
    else:
        report.ok(f"{setting} = {limit} ({used} in use)")


def _run_checks(
    cur: psycopg2.extensions.cursor,
    args: argparse.Namespace,
    report: _Report,
    server_version: int,
) -> None:
    cur.execute("SELECT current_user, current_database(), version()")
    user, database, version_text = cur.fetchone()  # type: ignore[misc]
    print(f"Checking {mask_dsn(args.dsn)} (database {database}, role {user})")
    print(f"  {version_text.split(',')[0]}")
    restart = "then restart PostgreSQL"

    if server_version < 100000:
        report.fail("PostgreSQL 10 or later is needed for logical replication with pgoutput")

    wal_level = _setting(cur, "wal_level")
    if wal_level is not None:
        value, _, pending = wal_level
        if value == "logical":
            report.ok("wal_level = logical")
        else:
            note = " (a change is set but waits for a restart)" if pending else ""
            report.fail(
                f"wal_level = {value}{note}: logical decoding needs wal_level = logical",
                f"ALTER SYSTEM SET wal_level = logical; {restart}",
            )

    _check_capacity(
        cur,
        report,
        "max_replication_slots",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots",
        when_zero="no replication slot can be created",
        when_full=f"drop unused slots (replicant slot list) or raise max_replication_slots; "
        f"{restart}",
        restart=restart,
    )
    _check_capacity(
        cur,
        report,
        "max_wal_senders",
        "SELECT count(*) FROM pg_catalog.pg_stat_replication",
        when_zero="no replication connection is accepted",
        when_full=f"raise max_wal_senders; {restart}",
        restart=restart,
    )

    cur.execute(
        "SELECT rolreplication, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    can_replicate, superuser = cur.fetchone()  # type: ignore[misc]
    if superuser:
        report.ok(f"role {user} is a superuser (REPLICATION included)")
    elif can_replicate:
        report.ok(f"role {user} has REPLICATION")
    else:
        report.fail(
            f"role {user} lacks the REPLICATION attribute: it cannot open a replication "
            "connection or create a slot",
            f"as a superuser: ALTER ROLE {quote_identifier(user, minimal=True)} REPLICATION;",
        )
    if superuser or can_replicate:
        _check_replication_connection(args.dsn, report)

    _check_publications(cur, args.publication or [], database, report)

    if server_version >= 130000:
        keep = _setting(cur, "max_slot_wal_keep_size")
        if keep is not None:
            value, unit, _ = keep
            if value == "-1":
                report.warn(
                    "max_slot_wal_keep_size = -1 (unlimited): a slot whose consumer stops "
                    "keeps WAL until the disk is full",
                    "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf(); "
                    "and watch slot lag (replicant slot list)",
                )
            else:
                size = int(value) * (1024 * 1024 if unit == "MB" else 1)
                report.ok(
                    f"max_slot_wal_keep_size = {human_bytes(size)}: a slot further behind is "
                    "invalidated rather than filling the disk"
                )

    timeout = _setting(cur, "wal_sender_timeout")
    if timeout is not None:
        value, unit, _ = timeout
        if value == "0":
            report.warn(
                "wal_sender_timeout = 0: the server never notices a dead replication client",
                "ALTER SYSTEM SET wal_sender_timeout = '60s'; SELECT pg_reload_conf();",
            )
        else:
            shown = f"{int(value) / 1000:g} s" if unit == "ms" else f"{value}{unit or ''}"
            report.ok(f"wal_sender_timeout = {shown}")

    plugins = _setting(cur, "output_plugin_libraries")
    if plugins is not None:
        # Newer minor releases decode only with the plugins listed here.
        listed = plugins[0]
        if "wal2json" in (name.strip() for name in listed.split(",")):
            report.ok(f"output_plugin_libraries = {listed}")
        else:
            report.ok(
                f"output_plugin_libraries = {listed}: other output plugins (wal2json) are "
                "refused until listed there"
            )

    _check_slots(cur, server_version, report)


def _check_replication_connection(dsn: str | None, report: _Report) -> None:
    try:
        with ReplicationConnection.connect(dsn) as conn:
            conn.identify_system()
    except ReplicantError as error:
        report.fail(
            f"a replication connection is refused: {one_line(error)}",
            "allow it in pg_hba.conf (logical replication connections match the "
            "database name, not the 'replication' keyword)",
        )
    else:
        report.ok("a replication connection is accepted")


def _check_publications(
    cur: psycopg2.extensions.cursor, wanted: Sequence[str], database: str, report: _Report
) -> None:
    cur.execute(
        "SELECT pubname, puballtables, pubupdate, pubdelete FROM pg_catalog.pg_publication"
        " ORDER BY pubname"
    )
    publications = {row[0]: row for row in cur.fetchall()}
    names = list(wanted)
    for name in names:
        if name not in publications:
            report.fail(
                f"publication {name} does not exist in database {database}",
                f"CREATE PUBLICATION {quote_identifier(name, minimal=True)} FOR TABLE <tables>;"
                " (or FOR ALL TABLES, as a superuser)",
            )
    if not names:
        if not publications:
            report.warn(
                f"database {database} has no publication; the pgoutput plugin needs one",
                "CREATE PUBLICATION app_pub FOR TABLE <tables>;",
            )
            return
        names = list(publications)
    for name in names:
        if name in publications:
            _check_publication(cur, publications[name], report)


def _check_publication(
    cur: psycopg2.extensions.cursor, publication: tuple[Any, ...], report: _Report
) -> None:
    name, all_tables, publishes_update, publishes_delete = publication
    cur.execute(
        "SELECT n.nspname, c.relname, c.relreplident,"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid"
        "         AND i.indisreplident)"
        " FROM pg_catalog.pg_publication_tables p"
        " JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname"
        " JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename"
        " WHERE p.pubname = %s ORDER BY 1, 2",
        (name,),
    )
    tables = cur.fetchall()
    scope = "all tables" if all_tables else f"{len(tables)} table{'s' if len(tables) != 1 else ''}"
    if not tables:
        report.warn(
            f"publication {name} ({scope}) publishes no table yet: it sends no row changes",
            f"ALTER PUBLICATION {quote_identifier(name, minimal=True)} ADD TABLE <tables>;",
        )
        return
    listed = ", ".join(f"{schema}.{table}" for schema, table, *_ in tables[:8])
    if len(tables) > 8:
        listed += f", ... ({len(tables) - 8} more)"
    report.ok(f"publication {name} publishes {scope}: {listed}")
    for schema, table, identity, has_primary_key, has_identity_index in tables:
        usable = (
            identity == "f"
            or (identity == "d" and has_primary_key)
            or (identity == "i" and has_identity_index)
        )
        if usable:
            continue
        why = {
            "d": "no primary key",
            "n": "REPLICA IDENTITY NOTHING",
            "i": "its replica identity index is gone",
        }.get(identity, f"replica identity {identity!r}")
        qualified = ".".join(quote_identifier(part, minimal=True) for part in (schema, table))
        fix = (
            f"ALTER TABLE {qualified} ADD PRIMARY KEY (<columns>); or, to send whole old "
            f"rows, ALTER TABLE {qualified} REPLICA IDENTITY FULL;"
        )
        if publishes_update or publishes_delete:
            report.fail(
                f"table {schema}.{table} has no usable replica identity ({why}): while "
                f"publication {name} publishes UPDATE and DELETE, the server refuses them on "
                "this table, and their events would carry no old key",
                fix,
            )
        else:
            report.ok(
                f"table {schema}.{table} has no replica identity ({why}); publication "
                f"{name} sends only inserts, so that is fine"
            )


def _check_slots(cur: psycopg2.extensions.cursor, server_version: int, report: _Report) -> None:
    """Fail for every invalidated slot (saying why and what to do), warn for an
    inactive one that keeps more than 1 GB of WAL."""
    cur.execute(*slot_state_query(server_version))
    slots = [slot_state_from_row(row) for row in cur.fetchall()]
    cur.execute(f"SELECT ({WAL_POSITION})::text")
    current_text = cur.fetchone()[0]  # type: ignore[index]
    current = None if current_text is None else LSN.parse(current_text)
    for state in slots:
        reason = state.invalidated
        if reason is not None:
            cause = state.invalidation_cause
            report.fail(
                f"slot {state.name} was invalidated ({reason})"
                + (f": {cause}" if cause else "")
                + f". {INVALIDATED_SLOT_ADVICE}",
                f"replicant slot drop --slot {state.name}; then recreate it and resynchronise",
            )
            continue
        if state.active or current is None or state.restart_lsn is None:
            continue
        retained = int(current) - int(state.restart_lsn)
        if retained > 1024**3:
            report.warn(
                f"slot {state.name} is inactive and keeps {human_bytes(retained)} of WAL",
                f"start its consumer, or drop it: replicant slot drop --slot {state.name}",
            )
