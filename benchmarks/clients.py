"""The Python contenders of the benchmark, one per process.

``benchmarks/run.py`` starts each drain as ``python benchmarks/clients.py
<contender> '<json arguments>'`` so that the CPU time and peak memory the
parent reads from ``wait4()`` belong to that client alone. The process prints
one JSON object on stdout:

``ready``
    ``time.monotonic()`` and the CPU seconds used when the imports are done
    and the client is about to connect: the parent counts wall and CPU time
    from there, so interpreter start-up is not charged to the drain.
``done``
    ``time.monotonic()`` once the client has reached the end position and
    closed its connection.
``peak_kb``
    The process's peak resident set (``VmHWM``).
``events``, ``frames``
    Events delivered to the callback, XLogData messages received.
``latencies``
    (latency mode only) seconds from each COMMIT to its callback.

Contenders:

``psycopg2``
    ``ReplicationCursor.consume_stream`` with a callback that only counts
    and stops at the end position.
``replicant-raw``
    :class:`replicant.Consumer` with ``decode_values=False`` and a callback
    that does nothing.
``replicant``
    :class:`replicant.Consumer` with ``decode_values=True`` and a callback
    that reads every value of every row (``row[name]`` for each column) and
    returns ``event.lsn``.
``cli``
    The ``replicant stream`` command, run in this process as
    ``replicant.cli.main([...])``: ``--end LSN -f FILE`` (JSON Lines, every
    value decoded, fsynced every 10 s and at the end) or, with
    ``"fsync_interval": 0`` in the arguments, ``-F 0`` (acknowledged once
    written, never fsynced). ``events`` is the number of lines written
    (counted after ``done``).

With ``BENCH_CPROFILE=<file>`` in the environment every thread the client
starts runs under cProfile, and the merged statistics go to that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2
import psycopg2.extras

from replicant import LSN, Consumer
from replicant.changes import Commit, Delete, Event, Insert, StreamCommit, Update

_PG_EPOCH_UNIX = 946_684_800  # 2000-01-01 in Unix seconds
_COMMIT_TIME = struct.Struct(">q")  # pgoutput Commit: 'C', flags, 2 LSNs, then the time


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_kb() -> int:
    """This process's peak resident set (VmHWM) in kB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _ready() -> dict[str, float]:
    return {"ready": time.monotonic(), "ready_cpu": _cpu()}


# --- psycopg2 -----------------------------------------------------------------------


def run_psycopg2(args: dict[str, Any]) -> dict[str, Any]:
    end = int(args["end_lsn"]) if args.get("end_lsn") is not None else None
    latency = bool(args.get("latency"))
    result: dict[str, Any] = _ready()
    conn = psycopg2.connect(
        args["dsn"], connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    cursor = conn.cursor()
    cursor.start_replication(slot_name=args["slot"], decode=False, options=args["options"])
    count = 0
    latencies: list[float] = []
    stop_replication = psycopg2.extras.StopReplication

    def consume(msg: Any) -> None:
        nonlocal count
        count += 1
        if end is not None and msg.data_start >= end:
            raise stop_replication

    def consume_timed(msg: Any) -> None:
        nonlocal count
        count += 1
        payload = msg.payload
        if payload[:1] == b"C":
            (micros,) = _COMMIT_TIME.unpack_from(payload, 18)
            latencies.append(time.time() - (_PG_EPOCH_UNIX + micros / 1e6))

    with contextlib.suppress(stop_replication, KeyboardInterrupt):
        cursor.consume_stream(consume_timed if latency else consume)
    conn.close()
    result.update(done=time.monotonic(), events=count, frames=count)
    if latency:
        result["latencies"] = latencies
    return result


# --- replicant ----------------------------------------------------------------------

_ROW_EVENTS = (Insert, Update, Delete)
_COMMITS = (Commit, StreamCommit)


def _nothing(event: Event) -> None:
    return None


def _read_everything(event: Event) -> LSN:
    """Read every value of every row by name (so each is converted); return ``event.lsn``."""
    if type(event) in _ROW_EVENTS:
        new = event.new  # type: ignore[attr-defined]
        if new is not None:
            for name in new:
                new[name]
        old = event.old  # type: ignore[attr-defined]
        if old is not None:
            for name in old:
                old[name]
    return event.lsn


def run_replicant(args: dict[str, Any], *, decode: bool) -> dict[str, Any]:
    latencies: list[float] = []
    callback: Callable[[Event], Any] = _read_everything if decode else _nothing
    if args.get("latency"):
        inner = callback

        def callback(event: Event) -> Any:
            result = inner(event)
            if type(event) in _COMMITS:
                latencies.append(time.time() - event.commit_time.timestamp())  # type: ignore[attr-defined]
            return result

    result: dict[str, Any] = _ready()
    consumer = Consumer(
        args["dsn"],
        slot=args["slot"],
        callback=callback,
        plugin=args["plugin"],
        publication=args.get("publication"),
        options=args["options"],
        create_slot=False,
        end_lsn=args.get("end_lsn"),
        decode_values=decode,
    )
    consumer.run()
    stats = consumer.stats
    result.update(done=time.monotonic(), events=stats.events, frames=stats.frames)
    if args.get("latency"):
        result["latencies"] = latencies
    return result


def run_cli(args: dict[str, Any]) -> dict[str, Any]:
    from replicant.cli import main as replicant_main

    path = args["file"]
    argv = [
        "stream",
        args["dsn"],
        "--slot",
        args["slot"],
        "--plugin",
        args["plugin"],
        "--end",
        str(LSN(args["end_lsn"])),
        "-f",
        path,
        "-F",
        str(args.get("fsync_interval", 10)),
    ]
    if args.get("publication"):
        argv += ["--publication", args["publication"]]
    for name, value in args["options"].items():
        if name == "publication_names":
            continue  # --publication says it
        argv += ["-o", f"{name}={value}"]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    result: dict[str, Any] = _ready()
    code = replicant_main(argv)
    result["done"] = time.monotonic()
    if code != 0:
        raise SystemExit(f"replicant stream exited with {code}")
    with open(path, "rb") as written:
        chunks = iter(lambda: written.read(1 << 20), b"")
        result["events"] = sum(chunk.count(b"\n") for chunk in chunks)
    if not args.get("keep_file"):
        os.unlink(path)
    return result


CONTENDERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "psycopg2": run_psycopg2,
    "replicant-raw": lambda args: run_replicant(args, decode=False),
    "replicant": lambda args: run_replicant(args, decode=True),
    "cli": run_cli,
}


def _profile_every_thread(path: str) -> Callable[[], None]:
    """cProfile each thread this process starts; the returned function saves them all."""
    import cProfile
    import pstats
    import threading

    profiles: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def save() -> None:
        pstats.Stats(*profiles).dump_stats(path)  # type: ignore[arg-type]

    return save


def main() -> None:
    contender, raw_args = sys.argv[1], sys.argv[2]
    profile_path = os.environ.get("BENCH_CPROFILE")
    save_profile = _profile_every_thread(profile_path) if profile_path else None
    if contender == "psycopg2":
        # The latency run ends with SIGTERM: stop consume_stream, then report.
        # (replicant's Consumer.run() stops gracefully on SIGTERM itself.)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = CONTENDERS[contender](json.loads(raw_args))
    if save_profile is not None:
        save_profile()
    result["peak_kb"] = _peak_kb()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
