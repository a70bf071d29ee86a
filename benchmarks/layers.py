"""Where replicant's time goes, layer by layer, in microseconds per message.

Run as ``python benchmarks/layers.py [--workload insert|singles|update] [--scale 0.2]``.
It starts the benchmark's server (see ``benchmarks/run.py``), writes one
workload, and measures, for the same messages:

1. the transport: ``ReplicationStream.read`` on the live stream (libpq's
   COPY calls and frame parsing: compiled in ``replicant._speedups``, or
   ctypes and ``protocol.parse_frame`` with ``REPLICANT_PURE_PYTHON=1``), in
   the reading thread's CPU time, waiting for the server included;
2. frame parsing in Python alone (``protocol.parse_frame``, the pure-Python
   path) on the captured payloads;
3. pgoutput decoding with values left undecoded, and with converters
   attached (rows and events built, no value read);
4. reading every value of every row (the converters, through ``Row``);
5. the reader loop of ``Consumer`` (progress, counters, acknowledging)
   over the captured frames, with the real decoder and callback, minus 3
   and 4;

then prints a table (in pure-Python mode with the libpq part as 1 minus 2).
The transport is the one figure that depends on the server: a client that
is faster than the walsender wakes up for a few frames at a time, and pays
for each wake-up (select, the lock, the calls). Everything but 1 runs
single-threaded on captured data, so the figures are steadier than those of
``run.py``; the difference to a real ``Consumer`` drain (run.py's CPU per
event) is what the threads, the lock and the waiting add. Each figure is
the best of several drains or rounds: on a shared machine a slow spell
spoils one round, and the best is the code's own cost.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
from clients import _nothing, _read_everything

from replicant import _accel, protocol
from replicant.connection import ReplicationConnection
from replicant.decoders import make_decoder
from replicant.protocol import XLogData
from replicant.runtime import Consumer


def drain(
    server: bench.Server, slot: str, end: int, options: dict[str, str], keep: bool
) -> tuple[list[Any], float]:
    """Drain ``slot`` with ``ReplicationStream.read``: the frames (if ``keep``), CPU seconds.

    The CPU time is the reading thread's, in ``read()`` alone. Keeping every
    frame makes the garbage collector walk them all again and again, so a
    drain that keeps them is not one to time.
    """
    frames: list[Any] = []
    cpu = 0.0
    with ReplicationConnection.connect(server.dsn) as connection:
        stream = connection.start(slot, 0, options, plugin="pgoutput")
        done = False
        while not done:
            before = time.thread_time()
            batch = stream.read(0.1)
            cpu += time.thread_time() - before
            if keep:
                frames += batch
            done = any(type(f) is XLogData and f.wal_start >= end for f in batch)
        stream.stop()
    return frames, cpu


def cpu_of(body: Callable[[], None]) -> float:
    """Seconds of this thread's CPU that ``body`` takes (after a garbage collection)."""
    gc.collect()
    started = time.thread_time()
    body()
    return time.thread_time() - started


class _Replay:
    """A stand-in for ReplicationStream: hands out captured frames, then stops the loop."""

    def __init__(self, frames: Sequence[Any], session: Any, batch: int = 512) -> None:
        self._batches = [list(frames[i : i + batch]) for i in range(0, len(frames), batch)]
        self._session = session

    def read(self, timeout: float | None = None) -> list[Any]:
        if self._batches:
            return self._batches.pop(0)
        self._session.ending = True
        return []


class _Session:
    ending = False


def reader_loop(frames: Sequence[Any], callback: Callable[[Any], Any], decode: bool) -> float:
    """CPU seconds of ``Consumer``'s reader loop over ``frames`` (no I/O, no threads)."""
    consumer = Consumer(
        "", slot="layers", callback=callback, publication=bench.PUBLICATION, decode_values=decode
    )
    session = _Session()
    stream = _Replay(frames, session)
    gc.collect()
    started = time.thread_time()
    consumer._read_loop(stream, session)  # type: ignore[arg-type]
    return time.thread_time() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="insert", choices=["insert", "singles", "update"])
    parser.add_argument("--scale", type=float, default=0.2, help="of run.py's sizes (0.2)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of offline measurements")
    parser.add_argument("--drains", type=int, default=3, help="live drains for the transport")
    parser.add_argument("--pg", type=int, default=15)
    args = parser.parse_args(argv)
    workload = bench.WORKLOADS[args.workload]

    with bench.bench_server(args.pg) as server:
        workload.setup(server, args.scale)
        slots = [f"layers_{i}" for i in range(args.drains + 1)]
        for slot in slots:
            server.create_slot(slot, "pgoutput")
        workload.write(server, args.scale)
        end = server.end_of_last_commit()
        options = bench.plugin_options("pgoutput", server.server_version)
        frames, _ = drain(server, slots[0], end, options, keep=True)
        read_cpu = float("inf")
        for slot in slots[1:]:
            read_cpu = min(read_cpu, drain(server, slot, end, options, keep=False)[1])
        for slot in slots:
            server.drop_slot(slot)

    data = [f for f in frames if type(f) is XLogData]
    n = len(data)
    payloads = [
        b"w" + protocol._XLOGDATA_HEADER.pack(f.wal_start, f.wal_end, f.send_time) + f.data
        for f in data
    ]
    parse = protocol.parse_frame

    def parse_all() -> None:
        for payload in payloads:
            parse(payload)

    def decode_all(decode_values: bool, read: Callable[[Any], Any] | None) -> Callable[[], None]:
        def body() -> None:
            decoder = make_decoder(
                "pgoutput", publication=bench.PUBLICATION, decode_values=decode_values
            )
            decode = decoder.decode
            if read is None:
                for f in data:
                    decode(f.data, f.wal_start, f.wal_end)
            else:
                for f in data:
                    for event in decode(f.data, f.wal_start, f.wal_end):
                        read(event)

        return body

    def empty() -> None:
        for _ in data:
            pass

    # Every measurement once per round, rounds interleaved, the best of each
    # kept: a slow spell of a shared machine then spoils a round, not a row.
    measurements: dict[str, Callable[[], float]] = {
        "empty": lambda: cpu_of(empty),
        "parse": lambda: cpu_of(parse_all),
        "decode_raw": lambda: cpu_of(decode_all(False, None)),
        "decode": lambda: cpu_of(decode_all(True, None)),
        "decode_read": lambda: cpu_of(decode_all(True, _read_everything)),
        "loop_raw": lambda: reader_loop(data, _nothing, False),
        "loop": lambda: reader_loop(data, _read_everything, True),
    }
    best = dict.fromkeys(measurements, float("inf"))
    for _ in range(args.repeats):
        for name, measure in measurements.items():
            best[name] = min(best[name], measure())
    for name in ("parse", "decode_raw", "decode", "decode_read"):
        best[name] -= best["empty"]
    t_parse = best["parse"]
    t_values = best["decode_read"] - best["decode"]
    t_loop = best["loop"]
    loop_overhead = t_loop - best["decode_read"]

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:6.2f}"

    if _accel.compiled is not None:
        transport = [
            (
                "transport: ReplicationStream.read (live; compiled drain and frame parsing)",
                us(read_cpu),
                "connection.py, _drain.c",
            ),
            ("(frame parsing in Python, the fallback's cost)", us(t_parse), "protocol.py"),
        ]
    else:
        transport = [
            ("transport: ReplicationStream.read (live, incl. parse)", us(read_cpu), "libpq.py"),
            (
                "  of which libpq calls via ctypes, copying, batching",
                us(read_cpu - t_parse),
                "connection.py, libpq.py",
            ),
            ("  of which frame parsing (parse_frame)", us(t_parse), "protocol.py"),
        ]
    rows: Iterable[tuple[str, str, str]] = [
        *transport,
        (
            "decode, values left undecoded",
            us(best["decode_raw"]),
            "decoders/pgoutput.py, changes.py",
        ),
        ("decode, converters attached (no value read)", us(best["decode"]), "decoders/pgoutput.py"),
        (
            "the callback reading every value (Row + converters)",
            us(t_values),
            "changes.py, values.py",
        ),
        ("reader loop: progress, ack, counters", us(loop_overhead), "runtime.py"),
        (
            "reader loop in all, values undecoded, no-op callback",
            us(best["loop_raw"]),
            "runtime.py",
        ),
        ("reader loop in all, every value read, returns lsn", us(t_loop), "runtime.py"),
        ("sum: transport + reader loop (decoded)", us(read_cpu + t_loop), ""),
    ]
    print(f"## {workload.title.format(n=bench._count(bench._SIZES[args.workload], args.scale))}")
    print(
        f"{n:,} messages; µs of CPU per message, best of {args.drains} live drains"
        f" and of {args.repeats} rounds offline\n"
    )
    print("| layer | µs/message | module |")
    print("|---|---|---|")
    for name, value, module in rows:
        print(f"| {name} | {value.strip()} | {module} |")
    kinds = [f.data[:1].decode() for f in data]
    counts = {k: kinds.count(k) for k in sorted(set(kinds))}
    print(f"\nmessage kinds: {counts}")


if __name__ == "__main__":
    main()
