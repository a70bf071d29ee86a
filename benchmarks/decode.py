"""Decode cost of one pgoutput Insert (5 columns: bigint, int, text, timestamptz, numeric).

Run as ``python benchmarks/decode.py``. Prints microseconds per Insert event for:

* values left undecoded (the event and its row are built, no value is read);
* every value read once (each column converted by its typecaster);
* the same two with ``binary 'true'`` payloads;
* wal2json format 2 for the same row, for comparison.

The payloads are built here byte for byte as the server sends them (see
tests/golden/ for captured ones), so no server is needed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicant.decoders import Decoder, make_decoder

RELID = 16384
COLUMNS = [("id", 20), ("n", 23), ("label", 25), ("created", 1184), ("amount", 1700)]
TEXT_VALUES = [b"1234567890", b"42", b"hello, world", b"2024-05-06 07:08:09.123456+00", b"12345.67"]


def _relation() -> bytes:
    out = b"R" + struct.pack(">I", RELID) + b"public\x00bench\x00d" + struct.pack(">H", 5)
    for i, (name, oid) in enumerate(COLUMNS):
        out += bytes([1 if i == 0 else 0]) + name.encode() + b"\x00" + struct.pack(">Ii", oid, -1)
    return out


def _insert(values: list[tuple[bytes, bytes]]) -> bytes:
    out = b"I" + struct.pack(">I", RELID) + b"N" + struct.pack(">H", len(values))
    for kind, value in values:
        out += kind + struct.pack(">I", len(value)) + value
    return out


def _binary_values() -> list[tuple[bytes, bytes]]:
    since_2000 = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456) - datetime.datetime(2000, 1, 1)
    micros = since_2000 // datetime.timedelta(microseconds=1)
    numeric = struct.pack(">hhHh", 3, 1, 0, 2) + struct.pack(">3H", 1, 2345, 6700)
    return [
        (b"b", struct.pack(">q", 1234567890)),
        (b"b", struct.pack(">i", 42)),
        (b"b", b"hello, world"),
        (b"b", struct.pack(">q", micros)),
        (b"b", numeric),
    ]


def _wal2json_record() -> bytes:
    columns = [
        {"name": name, "type": "t", "typeoid": oid, "value": value}
        for (name, oid), value in zip(
            COLUMNS,
            [1234567890, 42, "hello, world", "2024-05-06 07:08:09.123456+00", 12345.67],
            strict=True,
        )
    ]
    record = {
        "action": "I",
        "xid": 1000,
        "lsn": "0/16B3748",
        "schema": "public",
        "table": "bench",
        "columns": columns,
        "pk": [{"name": "id", "type": "bigint", "typeoid": 20}],
    }
    return json.dumps(record).encode()


def _per_event(run: Callable[[int], None], count: int, repeat: int) -> float:
    """Best time of ``repeat`` runs of ``count`` events, in microseconds per event."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(count)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def _runners(
    decoder: Decoder, payload: bytes, names: list[str]
) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """Two loops over ``decoder``: one that leaves values alone, one that reads them all."""
    decode = decoder.decode

    def undecoded(n: int) -> None:
        for i in range(n):
            decode(payload, i, i)

    def read_all(n: int) -> None:
        for i in range(n):
            row = decode(payload, i, i)[0].new  # type: ignore[attr-defined]
            for name in names:
                row[name]

    return undecoded, read_all


def measure(count: int, repeat: int) -> list[tuple[str, float]]:
    """Microseconds per Insert event for each decoder and way of reading."""
    names = [name for name, _ in COLUMNS]
    cases: list[tuple[str, Decoder, bytes]] = []
    for label, binary, payload in [
        ("pgoutput text", False, _insert([(b"t", v) for v in TEXT_VALUES])),
        ("pgoutput binary", True, _insert(_binary_values())),
    ]:
        decoder = make_decoder("pgoutput", publication="bench", binary=binary)
        decoder.decode(_relation(), 0, 0)
        cases.append((label, decoder, payload))
    cases.append(("wal2json 2", make_decoder("wal2json"), _wal2json_record()))
    results = []
    for label, decoder, payload in cases:
        undecoded, read_all = _runners(decoder, payload, names)
        results.append((f"{label}, values undecoded", _per_event(undecoded, count, repeat)))
        results.append((f"{label}, every value read", _per_event(read_all, count, repeat)))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    args = parser.parse_args(argv)
    results = measure(args.count, args.repeat)
    width = max(len(label) for label, _ in results)
    print(f"{'decode cost per Insert event':<{width}}  us/event")
    print(f"{'-' * width}  --------")
    for label, micros in results:
        print(f"{label:<{width}}  {micros:8.2f}")
    print(f"\nPython {sys.version.split()[0]}, {args.count} events x {args.repeat} runs, best run")


if __name__ == "__main__":
    main()
