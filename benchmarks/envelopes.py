"""Cost of an envelope per row event: replicant's JSON form and Debezium's.

Run as ``python benchmarks/envelopes.py``. Each event is decoded fresh from
a pgoutput Insert (5 columns: bigint, int, text, timestamptz, numeric; the
payload of ``benchmarks/decode.py``), so every value is converted as in a
real stream. Prints microseconds per event for decoding alone, then for
decoding plus each way of making the JSON value, and the difference. The
row's own ``to_dict()`` (every value's JSON form) is shown apart: an
envelope's own work is its total less that. Each sink encoding
(``json_line``, the two envelopes) has a target of at most 2 µs per row
event beyond decoding, checked at the end. Compare figures of one run
only: on a loaded machine every figure grows.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import TEXT_VALUES, _insert, _per_event, _relation
from replicant.changes import Begin, Event
from replicant.decoders import make_decoder
from replicant.envelopes import DebeziumEnvelope, ReplicantEnvelope
from replicant.formatting import format_json, json_line
from replicant.lsn import LSN

TARGET_US = 2.0  # the encoding's own cost per row event (beyond decoding)


def measure(count: int, repeat: int) -> list[tuple[str, float]]:
    """Microseconds per Insert for each way of turning it into a JSON value."""
    decoder = make_decoder("pgoutput", publication="bench")
    decoder.decode(_relation(), 0, 0)
    payload = _insert([(b"t", v) for v in TEXT_VALUES])
    decode = decoder.decode
    debezium = DebeziumEnvelope(name="bench", database="bench")
    debezium.value(Begin(LSN(1), 700, LSN(2), datetime.datetime.now(datetime.timezone.utc)))
    replicant = ReplicantEnvelope()

    def loop(encode: Callable[[Event], object] | None) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                event = decode(payload, i, i)[0]
                if encode is not None:
                    encode(event)

        return run

    cases: list[tuple[str, Callable[[Event], object] | None]] = [
        ("decode only", None),
        ("row.to_dict() (the values' JSON forms)", lambda event: event.new.to_dict()),  # type: ignore[attr-defined]
        ("format_json (str)", format_json),
        ("json_line (bytes, what the JSON Lines sink writes)", json_line),
        ("replicant envelope (bytes)", replicant.value),
        ("debezium envelope (bytes)", debezium.value),
    ]
    # Interleaved, best of ``repeat`` per case: the machine's load changes
    # between runs, and each case should see the same.
    best = [float("inf")] * len(cases)
    for _ in range(repeat):
        for i, (_, encode) in enumerate(cases):
            best[i] = min(best[i], _per_event(loop(encode), count, 1))
    results = [(cases[0][0], best[0])]
    for (label, _), per in zip(cases[1:], best[1:], strict=True):
        results.append((f"{label}: total", per))
        results.append((f"{label}: beyond decoding", per - best[0]))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    args = parser.parse_args(argv)
    from replicant import _accel

    print(f"compiled paths: {'yes' if _accel.compiled is not None else 'no'}")
    results = measure(args.count, args.repeat)
    for label, micros in results:
        print(f"{label:<60} {micros:6.2f} us/event")
    print()
    for label, micros in results:
        if label.endswith(": beyond decoding") and not label.startswith(("row.", "format_json")):
            verdict = "met" if micros <= TARGET_US else "MISSED"
            name = label.removesuffix(": beyond decoding")
            print(
                f"{name}: {micros:.2f} us/event beyond decoding"
                f" (target <= {TARGET_US:g}): {verdict}"
            )


if __name__ == "__main__":
    main()
