"""Initial snapshot speed: rows/s of a 1M-row table with 1 and 2 workers, against psql's \\copy.

    python benchmarks/snapshot.py [--rows 1000000] [--bindir DIR]

Starts a throwaway server (LocalCluster), fills ``t`` (id int primary key,
a text column, a numeric, a timestamptz), then in the same run and on the
same table times:

* ``psql -c "\\copy t to /dev/null"`` (the server's COPY, no parsing);
* ``replicant`` with ``snapshot="initial_only"`` and 1 and 2 workers, text
  and binary: each row read into a ``Read`` event delivered to a callback
  that reads every value; and, with 1 worker, a callback that reads none
  (the snapshot's own cost, without the value readers');

each in its own process, reporting the client's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replicant.cluster import LocalCluster  # noqa: E402

CHILD = """
import json, resource, sys, time
import replicant
dsn, workers, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "binary"
read_values = sys.argv[4] == "values"
count = 0
def callback(event):
    global count
    if type(event) is replicant.Read:
        if read_values:
            for name in event.new:
                event.new[name]
        count += 1
started = time.perf_counter()
replicant.run(dsn, slot=f"bench{workers}{int(binary)}", publication="pub", callback=callback,
              snapshot="initial_only", temporary=True, snapshot_workers=workers,
              snapshot_chunk_rows=50_000, options={"binary": "true"} if binary else None)
elapsed = time.perf_counter() - started
print(json.dumps({"rows": count, "seconds": elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--bindir", default=None)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with LocalCluster(bindir=args.bindir) as cluster:
        conn = cluster.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric, at timestamptz)"
            )
            cur.execute(
                "INSERT INTO t SELECT g, 'name ' || g, g * 1.25, now() - g * interval '1 s'"
                " FROM generate_series(1, %s) g",
                (args.rows,),
            )
            cur.execute("VACUUM ANALYZE t")
            cur.execute("CREATE PUBLICATION pub FOR TABLE t")
            cur.execute("SELECT pg_size_pretty(pg_table_size('t')), version()")
            size, version = cur.fetchone()
        conn.close()
        psql = str(Path(cluster.bindir) / "psql")
        print(f"{version.split(',')[0]}; {args.rows} rows, {size}; 2 cores shared")
        results: dict[str, list[float]] = {}
        memory: dict[str, float] = {}
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run(
                [psql, cluster.dsn, "-X", "-q", "-c", "\\copy t to /dev/null"], check=True, env=env
            )
            results.setdefault("psql \\copy", []).append(time.perf_counter() - started)
            runs = [(w, f, "values") for w in (1, 2) for f in ("text", "binary")]
            runs += [(1, "text", "rows"), (1, "binary", "rows")]
            for workers, form, what in runs:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, cluster.dsn, str(workers), form, what],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                )
                got = json.loads(out.stdout.strip().splitlines()[-1])
                assert got["rows"] == args.rows, got
                label = f"replicant {workers} worker{'s' if workers > 1 else ''} {form}"
                label += "" if what == "values" else " (rows only)"
                results.setdefault(label, []).append(got["seconds"])
                memory[label] = max(memory.get(label, 0.0), got["peak_rss_mb"])
        base = min(results["psql \\copy"])
        print(f"{'':40} {'best s':>8} {'rows/s':>10} {'vs psql':>8} {'peak RSS':>9}")
        for label, times in results.items():
            best = min(times)
            rss = f"{memory[label]:.0f} MB" if label in memory else "-"
            print(f"{label:40} {best:8.2f} {args.rows / best:10.0f} {best / base:7.2f}x {rss:>9}")


if __name__ == "__main__":
    main()
