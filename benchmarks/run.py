"""replicant against pg_recvlogical and psycopg2, draining the same slots.

Run as ``python benchmarks/run.py`` (``--help`` for the options; ``--quick``
for a smoke run of a minute or two). It starts its own PostgreSQL 15 with
:class:`replicant.cluster.LocalCluster`, and for each workload

1. one transaction inserting 1,000,000 rows (pgoutput);
2. 100,000 single-row transactions (pgoutput);
3. one transaction updating 200,000 rows (pgoutput);
4. the same as 1 with wal2json format-version 2;

creates one slot per contender and run, writes the workload once, then
drains the slots one after the other, interleaved run by run (A B C D,
A B C D, ...). Every drain is its own process: ``wait4()`` gives its CPU
time and peak memory. The WAL is already written when a drain starts, so its
wall time says how fast the client takes what the walsender produces.

Then it measures the latency from COMMIT to the callback at a steady rate
of single-row transactions, and the peak memory of replicant while a
1,000,000-row transaction is streamed in progress (``streaming 'on'``).

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2
import psycopg2.errors

from replicant import _accel
from replicant.cluster import LocalCluster
from replicant.decoders import make_decoder
from replicant.lsn import LSN

HERE = Path(__file__).resolve().parent
CONTENDERS = (
    "pg_recvlogical",
    "psycopg2",
    "replicant-raw",
    "replicant",
    "stream",
    "stream-F0",
)
# The command-line contenders: clients.py's "cli" client with its arguments.
COMMANDS: dict[str, dict[str, Any]] = {
    "stream": {"fsync_interval": 10},  # the default: fsynced every 10 s and at the end
    "stream-F0": {"fsync_interval": 0},  # -F 0: acknowledged once written, never fsynced
}
OUTPUT = Path(tempfile.gettempdir()) / f"replicant-bench-{os.getpid()}.jsonl"
PUBLICATION = "bench"
PGOUTPUT_PROTO = 1  # as in DESIGN.md's budget; every contender asks for the same

# Tuned for throughput: nothing waits on the disk, no checkpoint or autovacuum
# runs in the middle of a drain, and the reorder buffer holds a whole
# 1,000,000-row transaction in memory (the streaming test lowers it again
# for its own connection).
SETTINGS: dict[str, str | int | bool] = {
    "fsync": False,
    "synchronous_commit": True,  # the walsender sees a commit once it is flushed
    "full_page_writes": False,
    "shared_buffers": "1GB",
    "wal_buffers": "64MB",
    "max_wal_size": "32GB",
    "min_wal_size": "2GB",
    "checkpoint_timeout": "1h",
    "autovacuum": False,
    "logical_decoding_work_mem": "2GB",
    "max_replication_slots": 64,
    "max_wal_senders": 16,
    "wal_sender_timeout": "5min",
}

XLOG_BLCKSZ = 8192
SHORT_PAGE_HEADER = 24
LONG_PAGE_HEADER = 40


# --- the server ----------------------------------------------------------------------


class Server:
    """The benchmark's cluster, its table and the helpers the workloads use."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.dsn = cluster.dsn_for("postgres")
        self.conn = cluster.connect()
        self.conn.autocommit = True
        self.wal_segment_size = int(
            self.query("SELECT setting::int FROM pg_settings WHERE name = 'wal_segment_size'")[0][0]
        )
        self.server_version = int(self.query("SHOW server_version_num")[0][0])

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def create_schema(self) -> None:
        self.query(
            "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric)"
        )
        self.query(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE t")
        self.query(
            """
            CREATE PROCEDURE bench_singles(n int) LANGUAGE plpgsql AS $$
            BEGIN
                FOR i IN 1..n LOOP
                    INSERT INTO t VALUES (i, i % 100000, md5(i::text),
                        timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second',
                        round(i / 7.0, 2));
                    COMMIT;
                END LOOP;
            END $$
            """
        )

    def insert_rows(self, count: int, first: int = 1) -> None:
        self.query(
            "INSERT INTO t SELECT g, g %% 100000, md5(g::text),"
            " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', round(g / 7.0, 2)"
            " FROM generate_series(%s::bigint, %s::bigint) g",
            (first, first + count - 1),
        )

    def reset_table(self, rows: int = 0) -> None:
        """Empty the table (then fill it with ``rows`` rows) and checkpoint."""
        self.query("TRUNCATE t")
        if rows:
            self.insert_rows(rows)
        self.query("CHECKPOINT")

    def end_of_last_commit(self) -> LSN:
        """Where the last commit of this session ends, as the walsender reports it.

        Right after COMMIT the insert position is the end of the commit
        record, except that at a page start it points past the page header
        while the decoder reports the page start.
        """
        lsn = LSN.parse(self.query("SELECT pg_current_wal_insert_lsn()::text")[0][0])
        if lsn % self.wal_segment_size == LONG_PAGE_HEADER:
            return LSN(lsn - LONG_PAGE_HEADER)
        if lsn % XLOG_BLCKSZ == SHORT_PAGE_HEADER:
            return LSN(lsn - SHORT_PAGE_HEADER)
        return lsn

    def create_slot(self, name: str, plugin: str) -> None:
        self.query("SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))

    def drop_slot(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.query("SELECT pg_drop_replication_slot(%s)", (name,))
                return
            except psycopg2.errors.ObjectInUse:
                # The walsender of a client that just left is still exiting.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def slot_active(self, name: str) -> bool:
        rows = self.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,))
        return bool(rows and rows[0][0])


# --- workloads -------------------------------------------------------------------------


@dataclass
class Workload:
    key: str
    title: str
    plugin: str
    setup: Callable[[Server, float], object]  # before the slots exist
    write: Callable[[Server, float], object]  # the changes the slots will carry


def _count(base: int, scale: float) -> int:
    return max(1, int(base * scale))


WORKLOADS = {
    "insert": Workload(
        "insert",
        "1. one transaction inserting {n:,} rows (pgoutput)",
        "pgoutput",
        lambda server, scale: server.reset_table(),
        lambda server, scale: server.insert_rows(_count(1_000_000, scale)),
    ),
    "singles": Workload(
        "singles",
        "2. {n:,} single-row transactions (pgoutput)",
        "pgoutput",
        lambda server, scale: server.reset_table(),
        lambda server, scale: server.query("CALL bench_singles(%s)", (_count(100_000, scale),)),
    ),
    "update": Workload(
        "update",
        "3. one transaction updating {n:,} rows (pgoutput)",
        "pgoutput",
        lambda server, scale: server.reset_table(rows=_count(200_000, scale)),
        lambda server, scale: server.query("UPDATE t SET a = a + 1"),
    ),
    "wal2json": Workload(
        "wal2json",
        "4. one transaction inserting {n:,} rows (wal2json format-version 2)",
        "wal2json",
        lambda server, scale: server.reset_table(),
        lambda server, scale: server.insert_rows(_count(1_000_000, scale)),
    ),
}
_SIZES = {"insert": 1_000_000, "singles": 100_000, "update": 200_000, "wal2json": 1_000_000}


def plugin_options(plugin: str, server_version: int, **extra: str) -> dict[str, str]:
    """The START_REPLICATION options every contender sends: replicant's own choice."""
    if plugin == "pgoutput":
        decoder = make_decoder(
            "pgoutput", publication=PUBLICATION, options={"proto_version": str(PGOUTPUT_PROTO)}
        )
    else:
        decoder = make_decoder("wal2json", format_version=2)
    options = decoder.start_options(server_version)
    options.update(extra)
    return options


# --- running one client ---------------------------------------------------------------------


@dataclass
class Sample:
    """One drain by one contender."""

    contender: str
    run: int
    wall: float  # seconds, from connecting to done
    cpu: float  # seconds of user + system time of the client from connecting to exit
    rss_kb: int  # peak resident set of the client process (VmHWM)
    events: int | None  # events (messages) it reports; None for pg_recvlogical
    extra: dict[str, Any] = field(default_factory=dict)


class ClientFailed(RuntimeError):
    pass


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float, int]:
    """Wait for ``proc``: its exit status, its CPU seconds and its peak memory in kB.

    CPU time comes from ``wait4()``. Peak memory does not: a child's
    ``ru_maxrss`` starts at the size of this (much larger) process it was
    forked from, so the child's own ``VmHWM`` is sampled from /proc instead.
    """
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        path = f"/proc/{proc.pid}/status"
        while not done.wait(0.01):
            try:
                with open(path) as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, peak


def run_recvlogical(
    server: Server, slot: str, end: LSN, options: dict[str, str], run: int, timeout: float
) -> Sample:
    argv = [
        str(server.cluster.bindir / "pg_recvlogical"),
        "--dbname",
        server.dsn,
        "--slot",
        slot,
        "--start",
        "--endpos",
        str(end),
        "--no-loop",
        "--file",
        "/dev/null",
        "--fsync-interval",
        "0",
    ]
    for name, value in options.items():
        argv += ["--option", f"{name}={value}"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status, cpu, peak = _wait(proc, timeout)
    wall = time.monotonic() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status != 0:
        raise ClientFailed(f"pg_recvlogical exited with {status}: {stderr.strip()}")
    return Sample("pg_recvlogical", run, wall, cpu, peak, None)


def start_python_client(contender: str, arguments: dict[str, Any]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(HERE / "clients.py"), contender, json.dumps(arguments)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


_REPORT_FIELDS = ("ready", "ready_cpu", "done", "events", "peak_kb")


def finish_python_client(
    contender: str, proc: subprocess.Popen[bytes], run: int, timeout: float
) -> Sample:
    # Read both pipes on the side: a client blocked on a full pipe never exits.
    outputs: dict[str, bytes] = {}

    def drain(name: str, pipe: IO[bytes]) -> None:
        outputs[name] = pipe.read()

    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout)),
        threading.Thread(target=drain, args=("err", proc.stderr)),
    ]
    for reader in readers:
        reader.start()
    status, cpu, peak = _wait(proc, timeout)
    for reader in readers:
        reader.join()
    if status != 0:
        raise ClientFailed(
            f"{contender} exited with {status}: {outputs['err'].decode(errors='replace')}"
        )
    report = json.loads(outputs["out"].decode().strip().splitlines()[-1])
    return Sample(
        contender,
        run,
        report["done"] - report["ready"],
        cpu - report["ready_cpu"],
        max(peak, report["peak_kb"]),
        report["events"],
        {k: v for k, v in report.items() if k not in _REPORT_FIELDS},
    )


def run_python(
    server: Server,
    contender: str,
    slot: str,
    end: LSN | None,
    plugin: str,
    options: dict[str, str],
    run: int,
    timeout: float,
    **more: Any,
) -> Sample:
    client = contender
    if contender in COMMANDS:
        client = "cli"
        more = {"file": str(OUTPUT), **COMMANDS[contender], **more}
    arguments = {
        "dsn": server.dsn,
        "slot": slot,
        "end_lsn": None if end is None else int(end),
        "plugin": plugin,
        "publication": PUBLICATION if plugin == "pgoutput" else None,
        "options": options,
        **more,
    }
    proc = start_python_client(client, arguments)
    return finish_python_client(contender, proc, run, timeout)


# --- the throughput benchmark ---------------------------------------------------------------


@dataclass
class WorkloadResult:
    key: str
    title: str
    messages: int  # XLogData messages in the stream (what psycopg2 counts)
    rows: int  # row events (inserted or updated rows)
    write_seconds: float
    samples: list[Sample]


def bench_workload(
    server: Server,
    workload: Workload,
    contenders: Sequence[str],
    runs: int,
    scale: float,
    timeout: float,
    log: Callable[[str], None],
) -> WorkloadResult:
    title = workload.title.format(n=_count(_SIZES[workload.key], scale))
    log(f"{title}: setting up")
    workload.setup(server, scale)
    slots = {
        (run, contender): f"bench_{workload.key}_{run}_{i}"
        for run in range(runs)
        for i, contender in enumerate(contenders)
    }
    for slot in slots.values():
        server.create_slot(slot, workload.plugin)
    started = time.monotonic()
    workload.write(server, scale)
    end = server.end_of_last_commit()
    write_seconds = time.monotonic() - started
    log(f"  written in {write_seconds:.1f} s, ends at {end}")
    options = plugin_options(workload.plugin, server.server_version)
    samples: list[Sample] = []
    try:
        for run in range(runs):
            for contender in contenders:
                slot = slots.pop((run, contender))
                if contender == "pg_recvlogical":
                    sample = run_recvlogical(server, slot, end, options, run, timeout)
                else:
                    sample = run_python(
                        server, contender, slot, end, workload.plugin, options, run, timeout
                    )
                server.drop_slot(slot)
                samples.append(sample)
                log(
                    f"  run {run + 1} {contender:15} {sample.wall:7.2f} s"
                    f"  cpu {sample.cpu:6.2f} s  rss {sample.rss_kb / 1024:6.1f} MB"
                    + ("" if sample.events is None else f"  events {sample.events:,}")
                )
    finally:
        for slot in slots.values():
            server.drop_slot(slot)
    counts = {s.extra.get("frames") for s in samples if s.extra.get("frames") is not None}
    if len(counts) > 1:
        log(f"  WARNING: the contenders received different numbers of messages: {counts}")
    messages = max((c for c in counts if c is not None), default=0)
    rows = _count(_SIZES[workload.key], scale)
    return WorkloadResult(workload.key, title, messages, rows, write_seconds, samples)


# --- latency and streaming ---------------------------------------------------------------------


@dataclass
class LatencyResult:
    contender: str
    rate: float  # transactions per second achieved by the writer
    transactions: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu: float
    rss_kb: int


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def write_steadily(server: Server, rate: float, seconds: float, first_id: int) -> float:
    """Single-row transactions at ``rate`` per second for ``seconds``; the rate achieved."""
    conn = server.cluster.connect()
    conn.autocommit = True
    count = int(rate * seconds)
    try:
        with conn.cursor() as cursor:
            started = time.monotonic()
            for i in range(count):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                cursor.execute(
                    "INSERT INTO t VALUES (%s, 1, 'latency', now(), 1.5)", (first_id + i,)
                )
            elapsed = time.monotonic() - started
    finally:
        conn.close()
    return count / elapsed


def bench_latency(
    server: Server,
    contender: str,
    rate: float,
    seconds: float,
    first_id: int,
    timeout: float,
    log: Callable[[str], None],
) -> LatencyResult:
    slot = f"bench_latency_{contender.replace('-', '_')}"
    server.create_slot(slot, "pgoutput")
    options = plugin_options("pgoutput", server.server_version)
    arguments = {
        "dsn": server.dsn,
        "slot": slot,
        "end_lsn": None,
        "plugin": "pgoutput",
        "publication": PUBLICATION,
        "options": options,
        "latency": True,
    }
    proc = start_python_client(contender, arguments)
    try:
        deadline = time.monotonic() + 30
        while not server.slot_active(slot):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise ClientFailed(f"{contender} did not start streaming")
            time.sleep(0.05)
        time.sleep(0.5)
        achieved = write_steadily(server, rate, seconds, first_id)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        sample = finish_python_client(contender, proc, 0, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.drop_slot(slot)
    latencies = sample.extra["latencies"]
    if not latencies:
        raise ClientFailed(f"{contender} saw no commits")
    result = LatencyResult(
        contender,
        achieved,
        len(latencies),
        _percentile(latencies, 0.50) * 1000,
        _percentile(latencies, 0.99) * 1000,
        max(latencies) * 1000,
        sample.cpu,
        sample.rss_kb,
    )
    log(
        f"  {contender:15} {result.transactions:,} commits at {achieved:,.0f}/s:"
        f" p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.2f} ms"
    )
    return result


@dataclass
class StreamingResult:
    rows: int
    wall: float
    events: int
    cpu: float
    rss_kb: int


def bench_streaming(
    server: Server, scale: float, timeout: float, log: Callable[[str], None]
) -> StreamingResult:
    rows = _count(1_000_000, scale)
    log(f"streaming 'on': one transaction inserting {rows:,} rows")
    server.reset_table()
    slot = "bench_streaming"
    server.create_slot(slot, "pgoutput")
    try:
        server.insert_rows(rows)
        end = server.end_of_last_commit()
        # Protocol 2 is the first with streaming; a small logical_decoding_work_mem
        # for this connection makes the walsender stream the transaction in
        # blocks long before it has decoded all of it.
        options = plugin_options("pgoutput", server.server_version, streaming="on")
        options["proto_version"] = "2"
        sample = run_python(
            server,
            "replicant",
            slot,
            end,
            "pgoutput",
            options,
            0,
            timeout,
            dsn=server.dsn + " options='-c logical_decoding_work_mem=64kB'",
        )
    finally:
        server.drop_slot(slot)
    result = StreamingResult(rows, sample.wall, sample.events or 0, sample.cpu, sample.rss_kb)
    log(
        f"  replicant {result.wall:.2f} s, {result.events:,} events,"
        f" peak memory {result.rss_kb / 1024:.1f} MB"
    )
    return result


# --- the report ----------------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str) -> str:
    return (
        f"{format(statistics.median(values), fmt)}"
        f" [{format(min(values), fmt)}..{format(max(values), fmt)}]"
    )


def workload_table(result: WorkloadResult, contenders: Sequence[str]) -> list[str]:
    lines = [
        f"### {result.title}",
        "",
        f"{result.messages:,} messages; written by the server in {result.write_seconds:.1f} s."
        " Medians [min..max] over runs.",
        "",
        "| contender | wall s | events/s | CPU µs/event | CPU µs/row | peak MB"
        " | wall / pg_recvlogical |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = {s.run: s.wall for s in result.samples if s.contender == "pg_recvlogical"}
    events = result.messages or 1
    for contender in contenders:
        samples = [s for s in result.samples if s.contender == contender]
        if not samples:
            continue
        walls = [s.wall for s in samples]
        rates = [events / s.wall for s in samples]
        cpus = [s.cpu / events * 1e6 for s in samples]
        per_row = [s.cpu / result.rows * 1e6 for s in samples]
        rss = [s.rss_kb / 1024 for s in samples]
        ratios = [s.wall / baseline[s.run] for s in samples if s.run in baseline]
        lines.append(
            f"| {contender} | {_spread(walls, '.2f')} | {_spread(rates, ',.0f')}"
            f" | {_spread(cpus, '.2f')} | {_spread(per_row, '.2f')} | {_spread(rss, '.0f')}"
            f" | {_spread(ratios, '.3f') if ratios else '-'} |"
        )
    lines.append("")
    return lines


def _ratios(result: WorkloadResult, contender: str, against: str) -> list[float]:
    base = {s.run: s.wall for s in result.samples if s.contender == against}
    return [
        s.wall / base[s.run] for s in result.samples if s.contender == contender and s.run in base
    ]


def _cpu_per(result: WorkloadResult, contender: str, count: int) -> list[float]:
    return [s.cpu / (count or 1) * 1e6 for s in result.samples if s.contender == contender]


def targets(
    results: Sequence[WorkloadResult],
    latency: Sequence[LatencyResult],
    streaming: StreamingResult | None,
) -> list[str]:
    lines = ["### Targets", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def ratio_line(result: WorkloadResult, contender: str, against: str, limit: float) -> None:
        ratios = _ratios(result, contender, against)
        if ratios:
            ratio = statistics.median(ratios)
            lines.append(
                f"- {result.key}: {contender} wall / {against} {ratio:.3f} (≤ {limit:.2f}):"
                f" {verdict(ratio <= limit)}"
            )

    def cpu_line(result: WorkloadResult, contender: str, per: str, limit: float) -> None:
        count = result.messages if per == "event" else result.rows
        cpus = _cpu_per(result, contender, count)
        if cpus:
            cpu = statistics.median(cpus)
            lines.append(
                f"- {result.key}: {contender} CPU {cpu:.2f} µs/{per} (≤ {limit:g}):"
                f" {verdict(cpu <= limit)}"
            )

    for result in results:
        ratio_line(result, "replicant", "pg_recvlogical", 1.0)
        if result.key != "wal2json":
            cpu_line(result, "replicant", "event", 4.0)
            ratio_line(result, "replicant-raw", "psycopg2", 1.0)
        ratio_line(result, "stream", "pg_recvlogical", 1.0)
        if result.key != "wal2json":
            cpu_line(result, "stream", "row", 4.0)
        else:
            # The command's CPU target is pgoutput's; wal2json's is for the record.
            cpus = _cpu_per(result, "stream", result.rows)
            if cpus:
                lines.append(
                    f"- {result.key}: stream CPU {statistics.median(cpus):.2f} µs/row (no target)"
                )
        if result.messages > 2 * result.rows:
            # Single-row transactions: each row comes with its Begin and Commit,
            # which the command writes as lines too.
            cpu_line(result, "stream", "event", 4.0)
        costs = _ratios(result, "stream-F0", "stream")
        if costs:
            lines.append(
                f"- {result.key}: stream -F 0 wall / stream {statistics.median(costs):.3f}"
                " (what acknowledging every transaction once written, unfsynced, costs;"
                " no target)"
            )
    for item in latency:
        if item.contender == "replicant":
            lines.append(
                f"- latency: replicant p99 {item.p99_ms:.2f} ms (< 1): {verdict(item.p99_ms < 1)}"
            )
    if streaming is not None:
        mb = streaming.rss_kb / 1024
        lines.append(f"- streaming: replicant peak memory {mb:.1f} MB (< 100): {verdict(mb < 100)}")
    lines.append("")
    return lines


def report(
    results: Sequence[WorkloadResult],
    latency: Sequence[LatencyResult],
    streaming: StreamingResult | None,
    contenders: Sequence[str],
    header: str,
) -> str:
    lines = [header, ""]
    for result in results:
        lines += workload_table(result, contenders)
    if latency:
        lines += [
            f"### Latency from COMMIT to callback at {latency[0].rate:,.0f} transactions/s",
            "",
            "| contender | commits | p50 ms | p99 ms | max ms | CPU s | peak MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for item in latency:
            lines.append(
                f"| {item.contender} | {item.transactions:,} | {item.p50_ms:.2f}"
                f" | {item.p99_ms:.2f} | {item.max_ms:.2f} | {item.cpu:.2f}"
                f" | {item.rss_kb / 1024:.0f} |"
            )
        lines.append("")
    if streaming is not None:
        lines += [
            f"### Streaming 'on': one transaction of {streaming.rows:,} rows",
            "",
            "| contender | wall s | events | CPU µs/event | peak MB |",
            "|---|---|---|---|---|",
            f"| replicant | {streaming.wall:.2f} | {streaming.events:,}"
            f" | {streaming.cpu / max(1, streaming.events) * 1e6:.2f}"
            f" | {streaming.rss_kb / 1024:.1f} |",
            "",
        ]
    lines += targets(results, latency, streaming)
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_server(version: int) -> Iterator[Server]:
    with LocalCluster(version=version, settings=SETTINGS) as cluster:
        server = Server(cluster)
        try:
            server.create_schema()
            yield server
        finally:
            server.conn.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Drain the same slots with pg_recvlogical, psycopg2 and replicant.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a tenth of every workload, 1 run, 2 s of latency",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--runs", type=int, help="runs per contender (default 3; --quick: 1)")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)",
    )
    parser.add_argument(
        "--scale", type=float, help="workload size factor (default 1; --quick: 0.1)"
    )
    parser.add_argument("--latency-seconds", type=float, help="default 10; --quick: 2")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="transactions/s")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency test")
    parser.add_argument("--no-streaming", action="store_true", help="skip the streaming test")
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version (15)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per drain at most")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.scale = args.scale or (0.1 if args.quick else 1.0)
    args.latency_seconds = args.latency_seconds or (2.0 if args.quick else 10.0)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.contenders = [c for c in args.contenders.split(",") if c]
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}")
    for name in args.contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    results: list[WorkloadResult] = []
    latency: list[LatencyResult] = []
    streaming: StreamingResult | None = None
    with bench_server(args.pg) as server:
        log(f"PostgreSQL {server.server_version} at {server.cluster.bindir}")
        for key in args.workloads:
            results.append(
                bench_workload(
                    server,
                    WORKLOADS[key],
                    args.contenders,
                    args.runs,
                    args.scale,
                    args.timeout,
                    log,
                )
            )
        if not args.no_latency:
            log(f"latency at {args.latency_rate:,.0f} transactions/s for {args.latency_seconds} s")
            server.reset_table()
            for i, contender in enumerate(
                c for c in ("psycopg2", "replicant") if c in args.contenders
            ):
                latency.append(
                    bench_latency(
                        server,
                        contender,
                        args.latency_rate,
                        args.latency_seconds,
                        10_000_000 * (i + 1),
                        args.timeout,
                        log,
                    )
                )
        if not args.no_streaming and "replicant" in args.contenders:
            streaming = bench_streaming(server, args.scale, args.timeout, log)
    total = time.monotonic() - started
    header = (
        f"## replicant benchmark: PostgreSQL {server.server_version // 10000},"
        f" {args.runs} run(s) per contender, scale {args.scale:g},"
        f" {os.cpu_count()} CPUs, {total / 60:.1f} min,"
        f" replicant {'compiled' if _accel.compiled is not None else 'in pure Python'}"
    )
    print(report(results, latency, streaming, args.contenders, header))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "workloads": [asdict(r) for r in results],
                    "latency": [asdict(r) for r in latency],
                    "streaming": None if streaming is None else asdict(streaming),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
