"""Time and instructions per wal2json format-2 Insert record, decoded (and every value read).

Run as ``python benchmarks/wal2json_decode.py [--records 20000] [--count]``;
no server. The records are what wal2json (format-version 2, with the
options replicant asks for) writes for the benchmark table
``t(id bigint primary key, a int, b text, c timestamptz, d numeric)`` of
``benchmarks/run.py``'s wal2json workload.

Without ``--count`` it prints the best of five timings, in microseconds per
record, of decoding alone and of decoding with every value read. With
``--count`` it also counts the instructions the same work executes with
``valgrind --tool=callgrind`` (steady where timings on a shared machine are
not), minus the setup. ``REPLICANT_PURE_PYTHON=1`` measures the pure-Python
path.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BEGIN = b'{"action":"B","xid":7,"lsn":"0/16B0000","timestamp":"2024-01-01 00:00:01+00"}'


def records(count: int) -> list[bytes]:
    """``count`` Insert records of ``t`` as wal2json writes them."""
    out = []
    for i in range(1, count + 1):
        out.append(
            (
                b'{"action":"I","xid":7,"lsn":"0/16B%04X","schema":"public","table":"t",'
                b'"columns":[{"name":"id","type":"bigint","typeoid":20,"value":%d},'
                b'{"name":"a","type":"integer","typeoid":23,"value":%d},'
                b'{"name":"b","type":"text","typeoid":25,"value":"c4ca4238a0b923820dcc509a6f75849b"},'
                b'{"name":"c","type":"timestamp with time zone","typeoid":1184,'
                b'"value":"2024-01-01 00:00:%02d+00"},'
                b'{"name":"d","type":"numeric","typeoid":1700,"value":%d.14}],'
                b'"pk":[{"name":"id","type":"bigint","typeoid":20}]}'
            )
            % (i, i, i % 100000, i % 60, i // 7)
        )
    return out


def _decoder() -> object:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from replicant.decoders import make_decoder

    decoder = make_decoder("wal2json", format_version=2)
    decoder.decode(BEGIN, 1, 1)
    return decoder


def run(docs: list[bytes], read: bool) -> None:
    """Decode ``docs`` (and read every value when ``read``)."""
    decode = _decoder().decode  # type: ignore[attr-defined]
    if read:
        for doc in docs:
            for event in decode(doc, 0, 0):
                new = event.new
                for name in new:
                    new[name]
    else:
        for doc in docs:
            decode(doc, 0, 0)


def _count(records_: int, mode: str) -> int:
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import wal2json_decode as w;"
        f" docs = w.records({records_}); w._decoder()"
    )
    if mode != "setup":
        code += f"; w.run(docs, {mode == 'read'})"
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    result = subprocess.run(
        [*valgrind, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(result.stderr[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--count", action="store_true", help="instructions too (valgrind)")
    args = parser.parse_args()
    docs = records(args.records)
    for read in (False, True):
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            run(docs, read)
            best = min(best, time.perf_counter() - start)
        what = "decode + every value read" if read else "decode only"
        print(f"{what:28s} {best / len(docs) * 1e6:7.2f} us per record")
    if args.count:
        if shutil.which("valgrind") is None:
            sys.exit("--count needs valgrind")
        small = min(args.records, 3000)
        base = _count(small, "setup")
        for mode in ("decode", "read"):
            per = (_count(small, mode) - base) // small
            what = "decode + every value read" if mode == "read" else "decode only"
            print(f"{what:28s} {per:7,d} instructions per record")


if __name__ == "__main__":
    main()
