"""The ``replicant`` command, end to end: subprocesses against real servers."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicant import LSN
from replicant.cluster import LocalCluster
from replicant.formatting import human_bytes

from .conftest import Database
from .helpers import Background, run_cli, wait_for


def current_lsn(db: Database) -> str:
    return str(db.query("SELECT pg_current_wal_lsn()::text")[0][0])


def slot_state(db: Database, slot: str) -> tuple[bool, LSN | None] | None:
    rows = db.query(
        "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    if not rows:
        return None
    active, confirmed = rows[0]
    return bool(active), LSN(confirmed) if confirmed else None


def slot_active(db: Database, slot: str) -> bool:
    state = slot_state(db, slot)
    return state is not None and state[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def shop(db: Database) -> Database:
    """A database with a table of several types, a table without key, and a publication."""
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2),"
        " added date, blob bytea, tags text[])"
    )
    db.execute("CREATE TABLE log (line text)")  # no primary key
    db.execute("CREATE PUBLICATION shop FOR TABLE items")
    return db


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replicant"), lines[0]
    return lines[0]


# --- without a server


def test_help_version_and_usage_errors() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "examples:" in result.stdout
    for command in (["stream"], ["slot"], ["slot", "list"], ["check"], ["demo"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "examples:" in result.stdout, command
    version = run_cli("--version")
    assert version.returncode == 0 and re.match(r"replicant \d+\.\d+", version.stdout)

    assert run_cli().returncode == 2
    assert run_cli("slot").returncode == 2
    missing_slot = run_cli("stream", "dbname=x", "--publication", "p")
    assert missing_slot.returncode == 2 and "--slot" in missing_slot.stderr
    bad_lsn = run_cli("stream", "--slot", "s", "--publication", "p", "--end", "nonsense")
    assert bad_lsn.returncode == 2 and "not an LSN" in bad_lsn.stderr
    no_publication = run_cli("stream", "--slot", "s")
    assert no_publication.returncode == 2
    assert "--publication is required" in one_line_error(no_publication)
    bad_option = run_cli("stream", "--slot", "s", "--publication", "p", "-o", "=value")
    assert bad_option.returncode == 2 and "name=value" in bad_option.stderr
    bad_slot = run_cli("stream", "--slot", "Bad-Name", "--publication", "p")
    assert bad_slot.returncode == 2 and "slot name" in one_line_error(bad_slot)


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 kB"
    assert human_bytes(50 * 1024 * 1024) == "50 MB"
    assert human_bytes(-2048) == "-2.0 kB"
    assert human_bytes(None) == "-"


# --- stream


def make_changes(db: Database) -> None:
    db.execute(
        "INSERT INTO items VALUES (1, 'pen', 1.50, '2024-02-29', '\\x00ff', '{a,b}'),"
        " (2, 'ink', 12.00, NULL, NULL, NULL)"
    )
    db.execute("INSERT INTO log VALUES ('not published')")
    db.execute("UPDATE items SET price = 1.75 WHERE id = 1")
    db.execute("DELETE FROM items WHERE id = 2")


def test_stream_end_writes_json_lines_and_moves_the_slot(shop: Database) -> None:
    created = run_cli("slot", "create", shop.dsn, "--slot", "cli")
    assert created.returncode == 0, created.stderr
    assert "created slot cli (plugin pgoutput) at " in created.stdout
    make_changes(shop)
    end = current_lsn(shop)

    result = run_cli("stream", shop.dsn, "--slot", "cli", "--publication", "shop", "--end", end)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = json_lines(result.stdout)
    kinds = [e["kind"] for e in events]
    assert kinds == [
        "begin", "insert", "insert", "commit",
        "begin", "update", "commit",
        "begin", "delete", "commit",
    ]  # fmt: skip
    pen = events[1]
    assert pen["schema"] == "public" and pen["table"] == "items"
    assert pen["new"] == {
        "id": 1,
        "name": "pen",
        "price": "1.50",  # decimals as exact text
        "added": "2024-02-29",
        "blob": {"$base64": base64.b64encode(b"\x00\xff").decode()},
        "tags": ["a", "b"],
    }
    assert LSN(pen["lsn"]) > 0 and isinstance(pen["xid"], int)
    assert events[5]["new"]["price"] == "1.75"
    assert events[8]["old"] == {"id": 2}
    last_commit = LSN(events[-1]["lsn"])

    state = slot_state(shop, "cli")
    assert state is not None and state[1] is not None and state[1] >= last_commit

    # Nothing new: a second run up to the same end writes nothing.
    again = run_cli("stream", shop.dsn, "--slot", "cli", "--publication", "shop", "--end", end)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""


def test_stream_to_file_is_fsynced_and_acknowledged(shop: Database, tmp_path: Path) -> None:
    make_changes(shop)  # before the slot: not streamed
    run_cli("slot", "create", shop.dsn, "--slot", "tofile")
    shop.execute("INSERT INTO items VALUES (10, 'cap', 3.00)")
    shop.execute("INSERT INTO items VALUES (11, 'nib', 0.40)")
    end = current_lsn(shop)
    out = tmp_path / "changes.txt"
    result = run_cli(
        "stream", shop.dsn, "--slot", "tofile", "--publication", "shop",
        "--end", end, "--file", str(out), "--format", "text", "-v",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "done; acknowledged up to" in result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 6, lines
    assert re.fullmatch(r"\s*[0-9A-F]+/[0-9A-F]+  BEGIN    xid \d+  .*", lines[0]), lines[0]
    assert "INSERT   public.items  id=10 name='cap' price=3.00 added=NULL" in lines[1]
    assert "COMMIT" in lines[-1]
    commit_lsn = LSN(lines[-1].split()[0])
    # The file is fsynced every 10 s by default, yet the final status update
    # carries everything: the output was synced before it.
    state = slot_state(shop, "tofile")
    assert state is not None and state[1] is not None and state[1] >= commit_lsn


def test_interrupted_stream_then_resume_repeats_nothing(
    shop: Database, tmp_path: Path, background: Callable[..., Background]
) -> None:
    first = tmp_path / "first.jsonl"
    stream = background(
        "stream", shop.dsn, "--slot", "resume", "--publication", "shop",
        "--create-slot", "--file", str(first), "--fsync-interval", "1",
    )  # fmt: skip
    wait_for(lambda: slot_active(shop, "resume"), what="the stream to start")
    for i in range(1, 21):
        shop.execute("INSERT INTO items (id, name) VALUES (%s, 'x')", i)
    wait_for(lambda: first.exists() and first.read_text().count('"commit"') >= 20, what="lines")
    stream.signal(signal.SIGINT)
    assert stream.wait() == 130
    report = "".join(stream.stderr)
    assert re.search(r"interrupted; acknowledged up to [0-9A-F]+/[0-9A-F]+; \d+ events", report)

    for i in range(21, 31):
        shop.execute("INSERT INTO items (id, name) VALUES (%s, 'y')", i)
    end = current_lsn(shop)
    second = run_cli("stream", shop.dsn, "--slot", "resume", "--publication", "shop", "--end", end)
    assert second.returncode == 0, second.stderr

    before, after = json_lines(first.read_text()), json_lines(second.stdout)
    ids_before = [e["new"]["id"] for e in before if e["kind"] == "insert"]
    ids_after = [e["new"]["id"] for e in after if e["kind"] == "insert"]
    assert ids_before == list(range(1, 21))
    assert ids_after == list(range(21, 31))  # nothing acknowledged came again


def test_sigterm_sighup_and_progress(
    shop: Database, tmp_path: Path, background: Callable[..., Background]
) -> None:
    out = tmp_path / "out.jsonl"
    stream = background(
        "stream", shop.dsn, "--slot", "rotate", "--publication", "shop", "--create-slot",
        "--file", str(out), "--status-interval", "0.5", "-v",
    )  # fmt: skip
    wait_for(lambda: slot_active(shop, "rotate"), what="the stream to start")
    shop.execute("INSERT INTO items (id, name) VALUES (1, 'before rotation')")
    wait_for(lambda: out.exists() and '"commit"' in out.read_text(), what="the first line")
    rotated = tmp_path / "out.jsonl.1"
    out.rename(rotated)
    stream.signal(signal.SIGHUP)
    wait_for(lambda: out.exists(), what="the file to be reopened")
    shop.execute("INSERT INTO items (id, name) VALUES (2, 'after rotation')")
    wait_for(lambda: '"commit"' in out.read_text(), what="a line in the new file")
    wait_for(lambda: any("behind the server" in line for line in stream.stderr), what="progress")
    stream.signal(signal.SIGTERM)
    assert stream.wait() == 143
    assert [e["new"]["name"] for e in json_lines(rotated.read_text()) if e["kind"] == "insert"] == [
        "before rotation"
    ]
    assert [e["new"]["name"] for e in json_lines(out.read_text()) if e["kind"] == "insert"] == [
        "after rotation"
    ]
    progress = [line for line in stream.stderr if "behind the server" in line]
    assert re.search(r"\d+ events \(\d+/s\).*acknowledged [0-9A-F]+/[0-9A-F]+", progress[0])
    assert "terminated; acknowledged up to" in stream.stderr[-1]


def test_stream_errors_are_one_line(shop: Database) -> None:
    missing = run_cli("stream", shop.dsn, "--slot", "nosuch", "--publication", "shop")
    assert missing.returncode == 1
    line = one_line_error(missing)
    assert 'replication slot "nosuch" does not exist' in line and "--create-slot" in line
    verbose = run_cli("stream", shop.dsn, "--slot", "nosuch", "--publication", "shop", "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    unwritable = run_cli(
        "stream", shop.dsn, "--slot", "s", "--publication", "shop", "--file", "/nonexistent/x"
    )
    assert unwritable.returncode == 1
    assert "cannot open /nonexistent/x" in one_line_error(unwritable)


# --- slot


def test_slot_create_list_info_drop(shop: Database) -> None:
    dsn = shop.dsn
    assert run_cli("slot", "create", dsn, "--slot", "ops").returncode == 0
    again = run_cli("slot", "create", dsn, "--slot", "ops")
    assert again.returncode == 1 and "already exists" in one_line_error(again)
    assert run_cli("slot", "create", dsn, "--slot", "ops", "--if-not-exists").returncode == 0
    shop.execute("INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 200) g")

    table = run_cli("slot", "list", dsn)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["SLOT", "PLUGIN", "DATABASE"]
    assert "WAL_STATUS" in header and "SAFE_WAL_SIZE" in header and "LAG" in header
    ours = next(row for row in rows if row.startswith("ops "))
    assert "pgoutput" in ours and shop.dbname in ours and " no " in f" {ours} "
    assert re.search(r"\d+(\.\d)? kB", ours), ours  # the inserts put it behind

    listed = json.loads(run_cli("slot", "list", dsn, "--json").stdout)
    entry = next(item for item in listed if item["slot"] == "ops")
    assert entry["plugin"] == "pgoutput" and entry["database"] == shop.dbname
    assert entry["active"] is False and entry["active_pid"] is None
    assert entry["lag_bytes"] > 20000 and LSN(entry["confirmed_flush_lsn"]) > 0
    assert entry["wal_status"] == "reserved" and entry["safe_wal_size"] is None

    info = run_cli("slot", "info", dsn, "--slot", "ops")
    assert info.returncode == 0, info.stderr
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in info.stdout.splitlines())
    assert fields["plugin"] == "pgoutput" and fields["active"] == "no"
    assert fields["safe_wal_size"] == "unlimited"
    assert "behind the current WAL" in fields["lag"]
    assert json.loads(run_cli("slot", "info", dsn, "--slot", "ops", "--json").stdout)["restart_lsn"]

    assert run_cli("slot", "drop", dsn, "--slot", "ops").returncode == 0
    gone = run_cli("slot", "info", dsn, "--slot", "ops")
    assert gone.returncode == 1 and "does not exist" in one_line_error(gone)
    assert run_cli("slot", "drop", dsn, "--slot", "ops").returncode == 1
    assert run_cli("slot", "drop", dsn, "--slot", "ops", "--if-exists").returncode == 0
    assert slot_state(shop, "ops") is None


# --- check


def test_check_reports_a_table_without_replica_identity(shop: Database) -> None:
    shop.execute("CREATE PUBLICATION everything FOR TABLE items, log")
    result = run_cli("check", shop.dsn, "--publication", "everything")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "ok    wal_level = logical" in out
    assert "ok    max_replication_slots" in out and "ok    max_wal_senders" in out
    assert "REPLICATION" in out and "max_slot_wal_keep_size" in out
    problem = next(line for line in out.splitlines() if "FAIL" in line)
    assert "public.log" in problem and "no usable replica identity" in problem
    assert "ALTER TABLE public.log" in out and "REPLICA IDENTITY FULL" in out
    assert "1 problem to fix" in out

    fine = run_cli("check", shop.dsn, "--publication", "shop")
    assert fine.returncode == 0, fine.stdout
    assert "FAIL" not in fine.stdout and "Ready for logical replication" in fine.stdout

    missing = run_cli("check", shop.dsn, "--publication", "nosuch")
    assert missing.returncode == 1 and "publication nosuch does not exist" in missing.stdout

    # The plugin allow-list of newer minor releases, where the server has one
    # (test clusters list wal2json in it).
    if shop.cluster.installation.knows_setting("output_plugin_libraries"):
        assert "ok    output_plugin_libraries = pgoutput, test_decoding, wal2json" in out
    else:
        assert "output_plugin_libraries" not in out


def test_check_reports_wrong_wal_level_and_missing_privilege(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(settings={"wal_level": "replica"})
    cluster.execute("CREATE ROLE plain LOGIN")
    result = run_cli("check", cluster.dsn_for("postgres", user="plain"))
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL  wal_level = replica" in out
    assert "ALTER SYSTEM SET wal_level = logical" in out
    assert "FAIL  role plain lacks the REPLICATION attribute" in out
    assert "ALTER ROLE plain REPLICATION" in out


def test_stream_without_reconnect_fails_at_once() -> None:
    dead = "host=127.0.0.1 port=1 connect_timeout=2"
    for how in (["--no-reconnect"], ["--max-retries", "0"]):
        result = run_cli("stream", dead, "--slot", "s", "--publication", "p", *how)
        assert result.returncode == 1, how
        assert "could not connect" in one_line_error(result)


def test_check_cannot_connect_is_one_line() -> None:
    result = run_cli("check", "host=127.0.0.1 port=1 connect_timeout=2")
    assert result.returncode == 1
    assert "could not connect" in one_line_error(result)


# --- demo


def test_demo_runs_and_leaves_nothing_behind() -> None:
    started = time.monotonic()
    result = run_cli("demo", "--pause", "0", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 60
    out = result.stdout
    for kind in ("BEGIN", "INSERT", "UPDATE", "DELETE", "COMMIT"):
        assert f"  {kind} " in out, kind
    assert "'ghost'" in out  # the rolled-back insert is shown as SQL ...
    assert "owner='ghost'" not in out  # ... and never arrives as an event
    assert "Stopped the server and removed its directory." in out
    match = re.search(r"in (/\S+replicant-pg-\S+)", out)
    assert match, out
    directory = match.group(1)
    assert not Path(directory).exists()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert directory.encode() not in cmdline, f"process {proc.name} left running"
