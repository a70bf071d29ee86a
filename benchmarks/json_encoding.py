"""What writing one row event as JSON costs: the sinks' encoders, per event, without a server.

Run as ``python benchmarks/json_encoding.py [--events 20000] [--instructions]``.
It decodes pgoutput Inserts (and Updates with an old row) of the benchmark
table ``t(id bigint, a int, b text, c timestamptz, d numeric)``, reads every
value (so the conversions are done before, as in a stream where the
callback reads them), then times, per event:

``format_json``
    the reference: ``to_dict()`` and ``json.dumps`` (plus the newline and
    the UTF-8 encoding a sink adds);
``json_line``
    :func:`replicant.formatting.json_line`, what the sinks write, with the
    encoder this process uses (msgspec when installed and compiled paths
    are on; ``REPLICANT_PURE_PYTHON=1`` for the standard library's);
``json_line python``
    its Python twin (what runs in pure Python, and for the events the
    compiled writer leaves to it);
``json_line stdlib`` / ``json_line msgspec``
    the twin with each encoder, whichever this process would choose;
``replicant envelope`` / ``debezium envelope``
    the records of ``replicant/envelopes.py`` (Debezium's inside a
    transaction, as in a stream).

Each of json_line and the two envelopes has a target of at most 2 µs per
row event (the encoding alone: the events' values are read before).

Times are the best of ``--repeat`` rounds (the machine is shared: the best
round is the least disturbed). With ``--instructions`` it also counts, with
valgrind's callgrind, the instructions ``format_json``, the Python
twin, ``json_line`` and the envelopes cost per Insert, figures that do not
move with the machine's load.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from instructions import COLUMNS, messages

TARGET_US = 2.0


def events(count: int, kind: str = "insert") -> list[Any]:
    """``count`` decoded row events of the benchmark table, every value read."""
    from replicant.decoders import PgOutputDecoder
    from replicant.lsn import LSN

    decoder = PgOutputDecoder("pub")
    decoder.decode(b"B" + struct.pack(">QqI", 100, 0, 7), LSN(1), LSN(1))
    relation, *inserts = messages(count)
    decoder.decode(relation, LSN(1), LSN(1))
    made = []
    for i, data in enumerate(inserts):
        if kind == "update":
            # 'U', relid, 'O' old tuple, 'N' new tuple: the same values twice.
            row = data[6:]
            data = b"U" + struct.pack(">I", 16384) + b"O" + row + b"N" + row
        (event,) = decoder.decode(data, LSN(1000 + i), LSN(1000 + i))
        for row_ in (event.new, event.old):
            if row_ is not None:
                for name in row_:
                    row_[name]
        made.append(event)
    return made


def per_event(encode: Callable[[Any], Any], items: list[Any], repeat: int) -> float:
    """Best-of-``repeat`` microseconds per event of ``encode``."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            encode(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def encoders() -> dict[str, Callable[[Any], Any]]:
    """Each way of writing a row event's JSON, by name (the sinks' and the references)."""
    import datetime

    from replicant import formatting
    from replicant.changes import Begin
    from replicant.lsn import LSN

    found: dict[str, Callable[[Any], Any]] = {
        "format_json": lambda event: (formatting.format_json(event) + "\n").encode(),
        "json_line": formatting.json_line,
        "json_line stdlib": formatting._json_line_for(None),
    }
    twin = getattr(formatting, "_python_json_line", None)  # (older versions: json_line is it)
    if twin is not None:
        found["json_line python"] = twin
    if formatting._msgspec_module is not None:
        found["json_line msgspec"] = formatting._json_line_for(formatting._msgspec_module)
    try:
        envelopes = importlib.import_module("replicant.envelopes")
    except ImportError:
        return found
    found["replicant envelope"] = envelopes.ReplicantEnvelope().value
    debezium = envelopes.DebeziumEnvelope(name="bench", database="bench")
    # In a transaction, as in a stream: the source block has its id and commit time.
    debezium.value(Begin(LSN(1), 700, LSN(2), datetime.datetime.now(datetime.timezone.utc)))
    found["debezium envelope"] = debezium.value
    return found


# What the targets are about: what the sinks write per row event.
TARGETED = ("json_line", "replicant envelope", "debezium envelope")


def instructions(count: int, encoder: str = "json_line") -> int:
    """Instructions per event of ``encoder``, from two callgrind runs (with and without it)."""
    counts = []
    for encode in (False, True):
        argv = [sys.executable, __file__, "--work", str(count)]
        if encode:
            argv += ["--encode", encoder]
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
            capture_output=True,
            text=True,
            check=True,
        )
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            raise RuntimeError(f"no count from valgrind: {done.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) // count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="also count (valgrind)")
    parser.add_argument("--work", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--encode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work is not None:
        made = events(args.work)
        if args.encode:
            encode = encoders()[args.encode]
            for event in made:
                encode(event)
        return
    from replicant import _accel, formatting

    print(
        f"replicant {'compiled' if _accel.compiled is not None else 'in pure Python'},"
        f" json_line encodes with {formatting.JSON_ENCODER};"
        f" table t({', '.join(name for name, _ in COLUMNS)}); best of {args.repeat}"
    )
    print()
    print("| encoder | Insert µs/event | Update (old row too) µs/event |")
    print("|---|---|---|")
    inserts = events(args.events)
    updates = events(args.events, "update")
    results: dict[str, float] = {}
    for name, encode in encoders().items():
        results[name] = per_event(encode, inserts, args.repeat)
        update = per_event(encode, updates, args.repeat)
        print(f"| {name} | {results[name]:.2f} | {update:.2f} |")
    print()
    if args.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is needed (Debian: apt-get install valgrind)")
        for name in ("format_json", "json_line python", *TARGETED):
            if name in results:
                count = instructions(min(args.events, 20000), name)
                print(f"{name}: {count:,} instructions per Insert (callgrind)")
        print()
    for name in TARGETED:
        if name not in results:
            continue
        verdict = "met" if results[name] <= TARGET_US else "MISSED"
        print(
            f"{name} {results[name]:.2f} µs per Insert (target ≤ {TARGET_US:g}): {verdict}"
            f"; {results['format_json'] / results[name]:.1f}x faster than format_json"
        )
    if os.environ.get("REPLICANT_PURE_PYTHON"):
        print("(pure Python: json_line uses the standard library's encoder)")


if __name__ == "__main__":
    main()
