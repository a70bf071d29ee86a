"""What recording costs: a plain consumer, the recorder and an offline replay of one workload.

    python benchmarks/recording.py              # 200,000 rows in one transaction
    python benchmarks/recording.py --rows 50000 --pg 16

Starts its own server (PostgreSQL 15 by default), inserts the rows once,
and reads them through two slots made before the insert: one with a plain
``Consumer`` (acknowledging every event, reading no values), one with a
``Recorder`` into a temporary file; then replays the file. Prints wall and
CPU seconds (the process's, all threads) per step, the file's size and
bytes per frame.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from replicant import LSN, Consumer
from replicant.cluster import LocalCluster, find_installations
from replicant.recording import Recorder, replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version")
    args = parser.parse_args()
    installs = [i for i in find_installations() if i.version == args.pg]
    if not installs:
        raise SystemExit(f"no PostgreSQL {args.pg} found")
    cluster = LocalCluster(bindir=installs[0].bindir)
    cluster.start()
    try:
        cluster.create_database("bench")
        conn = cluster.connect("bench")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            cur.execute("CREATE PUBLICATION p FOR TABLE t")
            for slot in ("plain", "rec"):
                cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            cur.execute(
                "INSERT INTO t SELECT g, 'value ' || g FROM generate_series(1, %s) g", (args.rows,)
            )
            cur.execute("SELECT pg_current_wal_lsn()::text")
            end = LSN(cur.fetchone()[0])
        conn.close()
        dsn = cluster.dsn_for("bench")
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "bench.rpl")

            def timed(label: str, step: Callable[[], object]) -> None:
                wall, cpu = time.monotonic(), time.process_time()
                step()
                print(
                    f"{label:<16} {time.monotonic() - wall:6.2f} s wall "
                    f"{time.process_time() - cpu:6.2f} s cpu"
                )

            timed(
                "plain consumer",
                Consumer(
                    dsn, slot="plain", publication="p", callback=lambda e: e.lsn, end_lsn=end
                ).run,
            )
            recorder = Recorder(path, dsn, slot="rec", publication="p", end_lsn=end)
            timed("recorder", recorder.run)
            timed("replay", lambda: replay(path, lambda event: None))
            size = os.path.getsize(path)
            print(
                f"file             {size / 1e6:.1f} MB, "
                f"{size / max(recorder.frames, 1):.0f} B/frame ({recorder.frames} frames)"
            )
    finally:
        cluster.stop("immediate")


if __name__ == "__main__":
    main()
