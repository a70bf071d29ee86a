"""Events per second into each sink, against pg_recvlogical draining the same slots.

Run as ``python benchmarks/sinks.py`` (``--help`` for the options; ``--scale
0.1`` for a smoke run). It starts its own PostgreSQL 15 (the settings of
``benchmarks/run.py``) and, for the 1,000,000-row insert and the 100,000
single-row-transaction workloads of ``benchmarks/run.py``, creates one slot
per contender, writes the workload once, then drains the slots one after
the other, each contender in its own process:

- ``pg_recvlogical``: to /dev/null, the reference (the walsender's pace);
- ``jsonlines``: :class:`~replicant.sinks.JsonLinesSink` into a file,
  fsynced every second;
- ``postgres``: :class:`~replicant.sinks.PostgresSink` into a second
  database of the same server (table ``t`` as on the source), batches
  committed every second; the rows on the target are counted after the
  drain;
- ``sqlite``: :class:`~replicant.sinks.SQLiteSink` into a file
  (``synchronous=FULL``), batches committed every second; rows counted.

A contender is an entry of :data:`CONTENDERS`: ``prepare`` (in this process,
before the drain: make the target, return the arguments of the client),
``make_sink`` (in the client process: the sink, from those arguments) and
``check`` (after the drain: say what the target holds, raise if it is
wrong). Adding one is :func:`register`; see the ``sqlite`` entry.

Every figure is wall time from the consumer's start to the end LSN, in the
client process; events/s counts every event the slot carries (Begin,
Relation, row, Commit), the same for every contender.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    _SIZES,
    PUBLICATION,
    WORKLOADS,
    ClientFailed,
    Server,
    _count,
    _wait,
    bench_server,
    plugin_options,
    run_recvlogical,
)

from replicant.sinks import JsonLinesSink, PostgresSink, Sink, SinkWriter, SQLiteSink

HERE = Path(__file__).resolve().parent
TARGET_DB = "sink_target"
SINK_WORKLOADS = ("insert", "singles")


@dataclass
class Contender:
    """One sink under test.

    ``prepare(server, workdir)`` runs here before each drain and returns
    the JSON-able arguments of the client; ``make_sink(arguments)`` runs in
    the client process; ``check(server, arguments, rows)`` runs here after
    the drain, raises if the target does not hold the ``rows`` rows of the
    source table, and returns a note for the report.
    """

    name: str
    prepare: Callable[[Server, Path], dict[str, Any]]
    make_sink: Callable[[dict[str, Any]], Sink]
    check: Callable[[Server, dict[str, Any], int], str]
    flush_interval: float = 1.0


CONTENDERS: dict[str, Contender] = {}


def register(contender: Contender) -> None:
    """Add a contender (or replace one of the same name)."""
    CONTENDERS[contender.name] = contender


# --- the contenders ---------------------------------------------------------------------------


def _prepare_lines(server: Server, workdir: Path) -> dict[str, Any]:
    path = workdir / "changes.jsonl"
    path.unlink(missing_ok=True)
    return {"path": str(path)}


def _check_lines(server: Server, arguments: dict[str, Any], rows: int) -> str:
    size = os.path.getsize(arguments["path"])
    os.unlink(arguments["path"])
    return f"{size / 1e6:.0f} MB of JSON Lines"


register(
    Contender(
        "jsonlines",
        _prepare_lines,
        lambda a: JsonLinesSink(a["path"], fsync=True),
        _check_lines,
    )
)

TABLE_DDL = "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric)"


def _prepare_postgres(server: Server, workdir: Path) -> dict[str, Any]:
    if not server.query("SELECT 1 FROM pg_database WHERE datname = %s", (TARGET_DB,)):
        server.query(f"CREATE DATABASE {TARGET_DB}")
    server.cluster.execute("DROP TABLE IF EXISTS t", dbname=TARGET_DB)
    server.cluster.execute(TABLE_DDL, dbname=TARGET_DB)
    server.query(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
        "WHERE roname = 'bench'"
    )
    return {"dsn": server.cluster.dsn_for(TARGET_DB)}


def _check_postgres(server: Server, arguments: dict[str, Any], rows: int) -> str:
    found = server.cluster.execute("SELECT count(*) FROM t", dbname=TARGET_DB)[0][0]
    if found != rows:
        raise ClientFailed(f"the target holds {found:,} rows, not {rows:,}")
    return f"{found:,} rows on the target"


register(
    Contender(
        "postgres",
        _prepare_postgres,
        lambda a: PostgresSink(a["dsn"], name="bench"),
        _check_postgres,
    )
)


def _prepare_sqlite(server: Server, workdir: Path) -> dict[str, Any]:
    path = workdir / "mirror.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return {"path": str(path)}


def _check_sqlite(server: Server, arguments: dict[str, Any], rows: int) -> str:
    import sqlite3

    with sqlite3.connect(arguments["path"]) as conn:
        found = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    if found != rows:
        raise ClientFailed(f"SQLite holds {found:,} rows, not {rows:,}")
    return f"{found:,} rows in SQLite"


register(
    Contender(
        "sqlite",
        _prepare_sqlite,
        lambda a: SQLiteSink(a["path"], name="bench"),
        _check_sqlite,
    )
)


# --- the client process -----------------------------------------------------------------------


def client(name: str, arguments: dict[str, Any]) -> None:
    """In the client process: drain the slot into the contender's sink; report as JSON."""
    contender = CONTENDERS[name]
    sink = contender.make_sink(arguments)
    started = time.monotonic()
    with SinkWriter(sink, flush_interval=contender.flush_interval) as writer:
        consumer = writer.consumer(
            arguments["source"],
            slot=arguments["slot"],
            publication=PUBLICATION,
            options=arguments["options"],
            create_slot=False,
            end_lsn=arguments["end_lsn"],
        )
        consumer.run()
    done = time.monotonic()
    print(json.dumps({"seconds": done - started, "events": consumer.stats.events}))


def run_client(
    name: str, arguments: dict[str, Any], timeout: float
) -> tuple[float, int, float, int]:
    """Run one contender's client; its seconds, events, CPU seconds and peak memory (kB)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--client", name, json.dumps(arguments)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    status, cpu, peak = _wait(proc, timeout)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status != 0:
        raise ClientFailed(f"{name} exited with {status}: {err.strip()[-2000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    return report["seconds"], report["events"], cpu, peak


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    contender: str
    seconds: float
    events: int | None
    cpu: float
    rss_kb: int
    note: str = ""


def bench(
    server: Server,
    key: str,
    contenders: Sequence[str],
    scale: float,
    timeout: float,
    workdir: Path,
    log: Callable[[str], None],
) -> list[Result]:
    workload = WORKLOADS[key]
    rows = _count(_SIZES[key], scale)
    title = workload.title.format(n=rows)
    log(f"{title}: setting up")
    workload.setup(server, scale)
    slots = {name: f"sinks_{key}_{i}" for i, name in enumerate(["pg_recvlogical", *contenders])}
    for slot in slots.values():
        server.create_slot(slot, "pgoutput")
    workload.write(server, scale)
    end = server.end_of_last_commit()
    options = plugin_options("pgoutput", server.server_version)
    results: list[Result] = []
    sample = run_recvlogical(server, slots["pg_recvlogical"], end, options, 0, timeout)
    server.drop_slot(slots["pg_recvlogical"])
    results.append(Result(key, "pg_recvlogical", sample.wall, None, sample.cpu, sample.rss_kb))
    log(f"  pg_recvlogical {sample.wall:7.2f} s")
    for name in contenders:
        contender = CONTENDERS[name]
        arguments = contender.prepare(server, workdir)
        arguments.update(source=server.dsn, slot=slots[name], options=options, end_lsn=int(end))
        seconds, events, cpu, peak = run_client(name, arguments, timeout)
        server.drop_slot(slots[name])
        note = contender.check(server, arguments, rows)
        results.append(Result(key, name, seconds, events, cpu, peak, note))
        log(f"  {name:14} {seconds:7.2f} s  {events / seconds:10,.0f} events/s  {note}")
    return results


def report(results: list[Result], header: str) -> str:
    lines = [header, ""]
    for key in dict.fromkeys(r.workload for r in results):
        group = [r for r in results if r.workload == key]
        events = max((r.events or 0) for r in group)
        reference = next(r for r in group if r.contender == "pg_recvlogical")
        lines += [
            f"### {WORKLOADS[key].title.format(n=_count(_SIZES[key], SCALE[0]))}",
            "",
            f"{events:,} events in the slot.",
            "",
            "| contender | wall s | events/s | x pg_recvlogical | CPU s | peak RSS MB | check |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in group:
            lines.append(
                f"| {r.contender} | {r.seconds:.2f} | {events / r.seconds:,.0f} | "
                f"{r.seconds / reference.seconds:.2f} | {r.cpu:.2f} | {r.rss_kb / 1024:.0f} | "
                f"{r.note} |"
            )
        lines.append("")
    return "\n".join(lines)


SCALE = [1.0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--client", nargs=2, metavar=("NAME", "ARGS"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--workloads",
        default=",".join(SINK_WORKLOADS),
        help=f"comma-separated subset of {','.join(SINK_WORKLOADS)}",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (pg_recvlogical always runs)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version (15)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per drain at most")
    args = parser.parse_args(argv)
    if args.client:
        client(args.client[0], json.loads(args.client[1]))
        return
    contenders = [c for c in args.contenders.split(",") if c]
    for name in contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}")
    SCALE[0] = args.scale
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    results: list[Result] = []
    with bench_server(args.pg) as server, tempfile.TemporaryDirectory() as workdir:
        log(f"PostgreSQL {server.server_version} at {server.cluster.bindir}")
        for key in (w for w in args.workloads.split(",") if w):
            results += bench(server, key, contenders, args.scale, args.timeout, Path(workdir), log)
        version = server.server_version // 10000
    header = (
        f"## replicant sinks: PostgreSQL {version}, scale {args.scale:g}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{(time.monotonic() - started) / 60:.1f} min"
    )
    print(report(results, header))


if __name__ == "__main__":
    main()
