"""``replicant slot`` and ``replicant check`` on every server version: what each one adds.

Runs the command line in-process (``replicant.cli.main``) against every
installed build: failover slots (17+), two-phase slots (14+, through the SQL
function on 14), the slot state each version reports, and how ``check``
reports an invalidated slot and the publications it was asked about.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from replicant.cli import main
from replicant.cluster import Installation, LocalCluster

from .conftest import Database

pytestmark = pytest.mark.every_version


class Cli:
    """``replicant ARGS`` run in this process, its exit status and output kept."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main(list(args))
        out, err = self._capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _info_lines(text: str) -> dict[str, str]:
    """``slot info``'s ``key  value`` lines as a dict."""
    lines = {}
    for line in text.splitlines():
        key, _, value = line.partition("  ")
        lines[key.strip()] = value.strip()
    return lines


def test_slot_create_failover_on_17_and_a_clear_refusal_before(db: Database, cli: Cli) -> None:
    version = db.cluster.version
    code, out, err = cli("slot", "create", db.dsn, "--slot", "fo", "--failover")
    if version < 17:
        assert code == 1
        assert "17" in err and "failover" in err, err
        assert cli("slot", "info", db.dsn, "--slot", "fo")[0] == 1  # nothing was created
        return
    assert code == 0, err
    assert "created slot fo (plugin pgoutput, failover)" in out
    info = cli.json("slot", "info", db.dsn, "--slot", "fo")
    assert info["failover"] is True and info["synced"] is False
    assert db.query("SELECT failover FROM pg_replication_slots WHERE slot_name = 'fo'") == [(True,)]
    code, out, _ = cli("slot", "info", db.dsn, "--slot", "fo")
    assert _info_lines(out)["failover"] == "yes"
    assert _info_lines(out)["synced"] == "no"


def test_slot_create_two_phase_from_14(db: Database, cli: Cli) -> None:
    version = db.cluster.version
    code, out, err = cli("slot", "create", db.dsn, "--slot", "tp", "--two-phase")
    if version < 14:
        assert code == 1
        assert "14" in err and "two_phase" in err, err
        return
    assert code == 0, err
    assert "created slot tp (plugin pgoutput, two-phase)" in out
    assert cli.json("slot", "info", db.dsn, "--slot", "tp")["two_phase"] is True
    assert db.query("SELECT two_phase FROM pg_replication_slots WHERE slot_name = 'tp'") == [
        (True,)
    ]
    code, out, _ = cli("slot", "info", db.dsn, "--slot", "tp")
    assert _info_lines(out)["two_phase"] == "yes"
    if version >= 18:
        assert _info_lines(out)["two_phase_at"].count("/") == 1


def test_slot_list_and_info_show_what_the_version_reports(db: Database, cli: Cli) -> None:
    version = db.cluster.version
    assert cli("slot", "create", db.dsn, "--slot", "plain")[0] == 0
    listed = cli.json("slot", "list", db.dsn)
    entry = next(item for item in listed if item["slot"] == "plain")
    info = cli.json("slot", "info", db.dsn, "--slot", "plain")
    for row in (entry, info):
        for key in (
            "failover",
            "synced",
            "conflicting",
            "invalidation_reason",
            "invalidated",
            "inactive_since",
            "two_phase_at",
        ):
            assert key in row, key
        assert row["invalidated"] is None and row["invalidation_reason"] is None
        assert row["conflicting"] is (False if version >= 16 else None)
        assert row["failover"] is (False if version >= 17 else None)
        assert row["synced"] is (False if version >= 17 else None)
        if version >= 17:
            # Created, then released by the command's connection: inactive since then.
            assert row["inactive_since"] is not None
        else:
            assert row["inactive_since"] is None
    assert info["lag_bytes"] is not None and info["lag_bytes"] >= 0

    code, table, _ = cli("slot", "list", db.dsn)
    assert code == 0
    header = table.splitlines()[0].split()
    assert "INVALIDATED" in header
    assert ("FAILOVER" in header) is (version >= 17)
    assert ("INACTIVE_SINCE" in header) is (version >= 17)
    row = next(line for line in table.splitlines() if line.startswith("plain "))
    assert " no " in row

    code, text, _ = cli("slot", "info", db.dsn, "--slot", "plain")
    lines = _info_lines(text)
    assert lines["invalidated"] == "no"
    assert ("conflicting" in lines) is (version >= 16)
    assert ("failover" in lines) is (version >= 17)
    assert ("inactive_since" in lines) is (version >= 17)
    if version >= 17:
        assert lines["inactive_since"] != "-"


def test_check_reports_an_invalidated_slot_and_each_publication(
    installation: Installation, make_cluster: Callable[..., LocalCluster], cli: Cli
) -> None:
    cluster = make_cluster(
        settings={"max_slot_wal_keep_size": "1MB", "min_wal_size": "32MB", "max_wal_size": "64MB"}
    )
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY)")
    cluster.execute("CREATE TABLE u (id int PRIMARY KEY)")
    cluster.execute("CREATE PUBLICATION p FOR TABLE t, u")
    cluster.execute("CREATE PUBLICATION empty")
    cluster.execute("SELECT pg_create_logical_replication_slot('gone', 'pgoutput')")
    # An inactive slot falls behind by more than max_slot_wal_keep_size: the
    # next checkpoint invalidates it.
    for i in range(4):
        cluster.execute(f"INSERT INTO t VALUES ({i})")
        cluster.execute("SELECT pg_switch_wal()")
    cluster.execute("CHECKPOINT")
    assert cluster.execute(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'gone'"
    ) == [("lost",)]
    reason = "wal_removed" if cluster.version >= 17 else "wal_status lost"

    wanted = ("p", "empty", "nosuch")
    code, out, err = cli("check", cluster.dsn, *(f"--publication={name}" for name in wanted))
    assert code == 1, out + err
    failure = next(line for line in out.splitlines() if "slot gone" in line)
    assert failure.lstrip().startswith("FAIL")
    assert f"slot gone was invalidated ({reason})" in failure
    assert "WAL it needed was removed" in failure
    assert "drop it, create it anew and resynchronise" in failure
    assert "replicant slot drop --slot gone" in out
    assert "publication p publishes 2 tables: public.t, public.u" in out
    assert "publication empty (0 tables) publishes no table yet" in out
    assert "publication nosuch does not exist" in out

    info = cli.json("slot", "info", cluster.dsn, "--slot", "gone")
    assert info["invalidated"] == reason
    assert info["wal_status"] == "lost"
    if cluster.version >= 17:
        assert info["invalidation_reason"] == "wal_removed"
    code, text, _ = cli("slot", "info", cluster.dsn, "--slot", "gone")
    assert _info_lines(text)["invalidated"].startswith(f"yes: {reason} (the WAL it needed")
    code, table, _ = cli("slot", "list", cluster.dsn)
    gone = next(line for line in table.splitlines() if line.startswith("gone "))
    assert reason in gone
