"""Drain one 200,000-row insert three ways, in the same run, and compare.

- ``pg_recvlogical`` to /dev/null with ``--endpos`` (the reference);
- ``ReplicationStream.read`` counting frames (the transport alone);
- ``replicant.run()``-style ``Consumer`` with a callback returning ``event.lsn``
  (reading, decoding every value and acknowledging).

Each contender drains its own slot, created before the insert, so all three
see the same changes; runs are interleaved (A B C, A B C, ...) because the
machine is shared and noisy: compare ratios within a run, not absolute
figures across runs.

    python benchmarks/drain_200k.py [--runs 3] [--rows 200000]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicant import LSN, Consumer
from replicant.changes import Event
from replicant.cluster import LocalCluster
from replicant.connection import ReplicationConnection
from replicant.protocol import XLogData

OPTIONS = {"proto_version": "1", "publication_names": '"bench"'}


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recvlogical(cluster: LocalCluster, slot: str, end: LSN) -> tuple[float, float, int]:
    binary = cluster.bindir / "pg_recvlogical"
    params = cluster.params_for("postgres")
    before = child_cpu()
    started = time.perf_counter()
    subprocess.run(
        [
            str(binary),
            "-h",
            params["host"],
            "-p",
            str(params["port"]),
            "-U",
            params["user"],
            "-d",
            "postgres",
            "--slot",
            slot,
            "--start",
            "--endpos",
            str(end),
            "-f",
            "/dev/null",
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench",
        ],
        check=True,
    )
    return time.perf_counter() - started, child_cpu() - before, 0


def stream_read(cluster: LocalCluster, slot: str, end: LSN) -> tuple[float, float, int]:
    frames = 0
    before = own_cpu()
    started = time.perf_counter()
    with ReplicationConnection.connect(cluster.dsn) as conn:
        stream = conn.start(slot, options=OPTIONS)
        done = False
        while not done:
            for frame in stream.read(1.0):
                if type(frame) is XLogData:
                    frames += 1
                    if frame.wal_start >= end:
                        done = True
                elif frame.wal_end >= end:
                    done = True
        elapsed = time.perf_counter() - started
        stream.stop()
    return elapsed, own_cpu() - before, frames


def consumer(cluster: LocalCluster, slot: str, end: LSN) -> tuple[float, float, int]:
    count = 0

    def on_change(event: Event) -> LSN:
        nonlocal count
        count += 1
        new = getattr(event, "new", None)
        if new is not None:
            for name in new:
                new[name]  # every value decoded
        return event.lsn

    before = own_cpu()
    started = time.perf_counter()
    Consumer(
        cluster.dsn,
        slot=slot,
        publication="bench",
        callback=on_change,
        end_lsn=end,
        options={"proto_version": "1"},
        create_slot=False,
    ).run()
    return time.perf_counter() - started, own_cpu() - before, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    contenders = {"pg_recvlogical": recvlogical, "stream.read": stream_read, "run()": consumer}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in contenders}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    with LocalCluster(version=15, settings={"shared_buffers": "256MB"}) as cluster:
        cluster.execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric)"
        )
        cluster.execute("CREATE PUBLICATION bench FOR TABLE t")
        for run in range(args.runs):
            slots = {name: f"bench_{i}_{run}" for i, name in enumerate(contenders)}
            for slot in slots.values():
                cluster.execute(
                    "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
                )
            cluster.execute(
                "INSERT INTO t SELECT g, g, 'row ' || g, now(), g * 1.5 "
                "FROM generate_series(%s, %s) g",
                (run * args.rows + 1, (run + 1) * args.rows),
            )
            end = LSN(cluster.execute("SELECT pg_current_wal_lsn()::text")[0][0])
            for name, contender in contenders.items():
                results[name].append(contender(cluster, slots[name], end))
            reference = results["pg_recvlogical"][-1][0]
            for name in contenders:
                ratios[name].append(results[name][-1][0] / reference)
            for slot in slots.values():
                for _ in range(50):
                    try:
                        cluster.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                        break
                    except Exception:
                        time.sleep(0.1)
    print(f"{args.rows} rows in one transaction, pgoutput protocol 1, {args.runs} interleaved runs")
    print(
        f"{'contender':16} {'wall s (median)':>16} {'rows/s':>10} {'CPU us/row':>11} "
        f"{'ratio to pg_recvlogical (median, min-max)':>42}"
    )
    for name in contenders:
        walls = [r[0] for r in results[name]]
        cpus = [r[1] for r in results[name]]
        wall = statistics.median(walls)
        cpu = statistics.median(cpus)
        rs = ratios[name]
        print(
            f"{name:16} {wall:16.3f} {args.rows / wall:10.0f} {cpu / args.rows * 1e6:11.2f} "
            f"{statistics.median(rs):>28.2f} ({min(rs):.2f}-{max(rs):.2f})"
        )
    frames = results["stream.read"][-1][2]
    events = results["run()"][-1][2]
    print(f"stream.read frames per run: {frames}; run() events per run: {events}")


if __name__ == "__main__":
    main()
