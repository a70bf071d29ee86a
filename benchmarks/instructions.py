"""Instructions per message to decode a pgoutput Insert and read its values.

Run as ``python benchmarks/instructions.py [--messages 20000]``. Needs
valgrind (Debian: ``apt-get install valgrind``); no server.

Timings on a shared machine move by a third from run to run; the number of
instructions the CPU executes does not. This counts them with
``valgrind --tool=callgrind`` for the work one message costs the reader
thread, minus the transport: decoding an Insert of the benchmark table
``t(id bigint, a int, b text, c timestamptz, d numeric)`` and a callback
that reads every value and returns ``event.lsn``, once with the compiled
paths and once in pure Python (``REPLICANT_PURE_PYTHON=1``). Compare two
versions of the code by running it on each: a change of a few hundred
instructions is real.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

COLUMNS = [("id", 20), ("a", 23), ("b", 25), ("c", 1184), ("d", 1700)]


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def messages(count: int) -> list[bytes]:
    """A Relation message for ``t``, then ``count`` Inserts into it."""
    relation = (
        b"R"
        + struct.pack(">I", 16384)
        + _cstring("public")
        + _cstring("t")
        + b"d"
        + struct.pack(">H", len(COLUMNS))
        + b"".join(b"\1" + _cstring(name) + struct.pack(">Ii", oid, -1) for name, oid in COLUMNS)
    )
    inserts = []
    for i in range(count):
        when = b"2024-05-06 07:08:09.123+00"
        values = [str(i).encode(), b"42", b"some text here", when, b"12.50"]
        row = struct.pack(">H", len(values)) + b"".join(
            b"t" + struct.pack(">I", len(v)) + v for v in values
        )
        inserts.append(b"I" + struct.pack(">I", 16384) + b"N" + row)
    return [relation, *inserts]


def work(count: int, decode_them: bool) -> None:
    """What valgrind measures: set up, then (if asked) decode and read."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from replicant.decoders import PgOutputDecoder
    from replicant.lsn import LSN

    decoder = PgOutputDecoder("pub")
    decoder.decode(b"B" + struct.pack(">QqI", 100, 0, 7), LSN(1), LSN(1))
    relation, *inserts = messages(count)
    decoder.decode(relation, LSN(1), LSN(1))
    positions = [LSN(1000 + i) for i in range(count)]
    if not decode_them:
        return
    decode = decoder.decode

    def callback(event: object) -> object:
        new = event.new  # type: ignore[attr-defined]
        for name in new:
            new[name]
        return event.lsn  # type: ignore[attr-defined]

    for data, position in zip(inserts, positions, strict=True):
        for event in decode(data, position, position):
            callback(event)


def instructions(count: int, decode_them: bool, pure: bool) -> int:
    env = dict(os.environ)
    env.pop("REPLICANT_PURE_PYTHON", None)
    if pure:
        env["REPLICANT_PURE_PYTHON"] = "1"
    argv = [sys.executable, __file__, "--work", str(count)] + (["--decode"] if decode_them else [])
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no count from valgrind: {result.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--work", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--decode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work is not None:
        work(args.work, args.decode)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (Debian: apt-get install valgrind)")
    print("| mode | instructions per message |")
    print("|---|---|")
    for pure in (False, True):
        setup = instructions(args.messages, False, pure)
        total = instructions(args.messages, True, pure)
        mode = "pure Python" if pure else "compiled"
        print(f"| {mode} | {(total - setup) / args.messages:,.0f} |")


if __name__ == "__main__":
    main()
