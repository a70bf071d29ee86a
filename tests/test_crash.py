"""Crash consistency: SIGKILL at random moments loses nothing.

A consumer runs in a subprocess and appends every event to a file of its
own, fsyncing at each Commit before acknowledging it. While the workload
writes, the consumer is killed with SIGKILL at 20 random moments (some
before it even streams) and started again each time. At the end:

- every transaction the workload committed is in the files, whole, at least
  once;
- a transaction appears more than once only across a kill, and only if its
  commit lies after the slot's confirmed position at that kill (what was
  acknowledged to the server then);
- replaying the files, a transaction at a time, gives exactly the server's
  tables.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest

from replicant.cluster import LocalCluster
from replicant.lsn import LSN

from .helpers import wait_until
from .workload import (
    PUBLICATION,
    TABLES,
    FaultResult,
    Workload,
    record_result,
    server_tables,
    setup_schema,
)

KILLS = 20
SLOT = "crash"

CONSUMER = """
import json, os, sys
import replicant
from replicant.changes import Begin, Commit, Delete, Insert, Truncate, Update

dsn, path = sys.argv[1], sys.argv[2]
out = open(path, "a", encoding="utf-8")

def write(record):
    out.write(json.dumps(record) + "\\n")

def on_change(event):
    kind = type(event)
    if kind is Begin:
        write({"k": "B", "x": event.xid})
    elif kind is Insert:
        write({"k": "I", "t": event.relation.table, "r": dict(event.new)})
    elif kind is Update:
        old = None if event.old is None else event.old["id"]
        write({"k": "U", "t": event.relation.table, "r": dict(event.new), "o": old})
    elif kind is Delete:
        write({"k": "D", "t": event.relation.table, "o": event.old["id"]})
    elif kind is Truncate:
        write({"k": "T", "t": [r.table for r in event.relations]})
    elif kind is Commit:
        write({"k": "C", "x": event.xid, "l": str(event.lsn)})
        out.flush()
        os.fsync(out.fileno())
        return event.lsn  # acknowledged only once it is on disk
    return None

replicant.run(dsn, slot="crash", publication="w_pub", callback=on_change, create_slot=False,
              status_interval=0.1, backoff_initial=0.1, backoff_max=0.5)
"""


def read_records(path: Path) -> list[dict[str, Any]]:
    """The file's records; a torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            # Only the very last line may be torn: it was never fsynced.
            assert number == len(lines) - 1 or (number == len(lines) - 2 and not lines[-1]), (
                f"{path}: line {number + 1} is corrupt"
            )
    return records


def transactions(records: list[dict[str, Any]]) -> list[tuple[int, LSN, list[dict[str, Any]]]]:
    """Committed transactions in the records: (xid, commit lsn, changes); halves dropped."""
    result = []
    open_xid: int | None = None
    changes: list[dict[str, Any]] = []
    for record in records:
        kind = record["k"]
        if kind == "B":
            open_xid, changes = record["x"], []
        elif kind == "C":
            assert open_xid == record["x"], f"commit of {record['x']} inside {open_xid}"
            result.append((record["x"], LSN(record["l"]), changes))
            open_xid, changes = None, []
        else:
            assert open_xid is not None, f"change outside a transaction: {record}"
            changes.append(record)
    return result


def replay(committed: list[tuple[int, LSN, list[dict[str, Any]]]]) -> dict[str, dict[Any, Any]]:
    tables: dict[str, dict[Any, Any]] = {name: {} for name in TABLES}
    for _xid, _lsn, changes in committed:
        for change in changes:
            kind = change["k"]
            if kind == "I":
                tables[change["t"]][change["r"]["id"]] = change["r"]
            elif kind == "U":
                table = tables[change["t"]]
                table.pop(change["o"] if change["o"] is not None else change["r"]["id"], None)
                table[change["r"]["id"]] = change["r"]
            elif kind == "D":
                tables[change["t"]].pop(change["o"], None)
            elif kind == "T":
                for name in change["t"]:
                    tables[name].clear()
    return tables


def slot_row(cluster: LocalCluster) -> tuple[bool, str | None]:
    rows = cluster.execute(
        "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (SLOT,),
        dbname="crashdb",
    )
    return rows[0]


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    cluster.create_database("crashdb")

    def connect() -> psycopg2.extensions.connection:
        return cluster.connect("crashdb", connect_timeout=5)

    def execute(sql: str) -> None:
        cluster.execute(sql, dbname="crashdb")

    setup_schema(execute)
    cluster.execute(
        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,), dbname="crashdb"
    )
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    dsn = cluster.dsn_for("crashdb")
    seed = int(os.environ.get("REPLICANT_CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    print(f"\ncrash test seed {seed} (REPLICANT_CRASH_SEED={seed} repeats it)")

    workload = Workload(connect, seed=seed, large_every=40, large_rows=500, pause=0.002)
    workload.start()
    files: list[Path] = []
    confirmed_at_kill: list[LSN] = []
    first_record: dict[int, float] = {}  # run -> seconds from launch to its first record
    started = time.monotonic()
    process: subprocess.Popen[bytes] | None = None
    try:
        for round_number in range(KILLS + 1):
            path = tmp_path / f"events-{round_number:02d}.jsonl"
            files.append(path)
            process = subprocess.Popen(
                [sys.executable, str(script), dsn, str(path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if round_number == KILLS:
                break  # the last one drains, below
            # Sleep until the kill, noting when the new run wrote its first record.
            launched = time.monotonic()
            kill_at = launched + rnd.uniform(0.05, 1.5)
            while time.monotonic() < kill_at:
                if path.exists() and path.stat().st_size and round_number not in first_record:
                    first_record[round_number] = time.monotonic() - launched
                time.sleep(0.005)
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert process.stderr is not None
            process.stderr.close()
            assert wait_until(lambda: not slot_row(cluster)[0], 15), "the slot stayed active"
            confirmed = slot_row(cluster)[1]
            confirmed_at_kill.append(LSN(confirmed) if confirmed else LSN(0))
        workload.stop()
        assert process is not None
        end = LSN(cluster.execute("SELECT pg_current_wal_lsn()::text", dbname="crashdb")[0][0])
        drained = wait_until(lambda: LSN(slot_row(cluster)[1] or "0/0") >= end, 60)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert drained, f"the last consumer did not catch up: {err.decode()[-2000:]}"
        assert process.returncode == 0, err.decode()[-2000:]
    finally:
        workload.stop()
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    assert len(confirmed_at_kill) == KILLS

    per_file = [transactions(read_records(path)) for path in files]
    everything = [t for committed in per_file for t in committed]

    # 1. Every committed transaction is there, whole, at least once.
    delivered: dict[int, list[int]] = {}
    for xid, _lsn, changes in everything:
        delivered.setdefault(xid, []).append(len(changes))
    missing = {x: n for x, n in workload.expected.items() if x not in delivered}
    assert not missing, f"{len(missing)} committed transactions never delivered: {missing}"
    partial = {
        x: (n, delivered[x]) for x, n in workload.expected.items() if set(delivered[x]) != {n}
    }
    assert not partial, f"transactions delivered with the wrong number of changes: {partial}"

    # 2. Repeats only across a kill, and only of what was not yet acknowledged then.
    repeats = 0
    for index, committed in enumerate(per_file):
        xids = [xid for xid, _, _ in committed]
        assert len(xids) == len(set(xids)), f"a transaction repeated within run {index}"
        if index == 0:
            continue
        earlier = {xid for c in per_file[:index] for xid, _, _ in c}
        for xid, lsn, _ in committed:
            if xid in earlier:
                repeats += 1
                assert lsn > confirmed_at_kill[index - 1], (
                    f"transaction {xid} (commit {lsn}) was sent again after kill {index}, "
                    f"though the slot had confirmed {confirmed_at_kill[index - 1]}"
                )
    # And nothing after the confirmed position was skipped by the next run.
    for index, committed in enumerate(per_file[:-1]):
        after = [xid for xid, lsn, _ in committed if lsn > confirmed_at_kill[index]]
        later = {xid for c in per_file[index + 1 :] for xid, _, _ in c}
        assert set(after) <= later, f"run {index + 1} skipped unacknowledged transactions"

    # 3. Replaying the files gives exactly the server's tables.
    mirror = replay(everything)
    conn = connect()
    try:
        actual = server_tables(conn)
    finally:
        conn.close()
    differing = sum(
        1
        for table in TABLES
        for key in actual[table].keys() | mirror[table].keys()
        if actual[table].get(key) != mirror[table].get(key)
    )
    record_result(
        FaultResult(
            fault=f"SIGKILL x{KILLS} (subprocess, fsync)",
            server=f"pg{cluster.version}",
            recovery_s=statistics.median(first_record.values()) if first_record else None,
            outage_s=max(first_record.values()) if first_record else None,
            reconnects=KILLS,
            lost_changes=len(missing) + differing,
            transactions=workload.committed,
            repeated=repeats,
            restarted=0,
            note=(
                f"seed {seed}, {elapsed:.0f} s; recovery = process start to first record "
                f"(median of {len(first_record)})"
            ),
        )
    )
    assert differing == 0, f"{differing} rows differ between the files and the server"
    assert workload.committed > 100
    assert PUBLICATION == "w_pub"  # the subprocess's publication name
