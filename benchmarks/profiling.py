"""Profile one contender draining one workload, with the benchmark's server and data.

Run as ``python benchmarks/profiling.py --workload insert --tool py-spy``. It
starts the same cluster as ``benchmarks/run.py``, writes the workload once
into one slot per profile asked for, and drains each slot with the chosen
contender (``replicant`` by default) under the chosen tools:

``py-spy``
    ``py-spy record`` (``pip install py-spy``) of every thread, written as a
    speedscope file (open it at https://www.speedscope.app) and as a flat
    "top functions" table on stdout.
``cprofile``
    ``cProfile`` of every thread of the client, sorted by internal time on
    stdout and saved as a ``.pstats`` file. It slows Python code down about twofold,
    C calls less, so read proportions with care.
``callgrind``
    instruction counts (``valgrind --tool=callgrind``; Debian: ``apt-get
    install valgrind``), steady where times are not: the workload is drained
    twice, at a fifth of ``--scale`` and at ``--scale``, each from a fresh
    slot, and the difference gives instructions per event without the
    start-up (imports, connecting); the top functions of the larger run by
    inclusive and self count follow.
``none``
    the drain alone, for its wall and CPU time.

Output files go to ``--out`` (default ``$TMPDIR/replicant-profiles/``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


def top_of_speedscope(path: Path, limit: int = 25) -> str:
    """Per thread: self time by module, then self and total time by function.

    From a py-spy speedscope file; a function's lines are added up, and a
    module's self time is that of every function in it (what the layer
    costs, apart from what it calls in other modules).
    """
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    lines = []
    for profile in data["profiles"]:
        samples = profile["samples"]
        weights = profile.get("weights") or [1] * len(samples)
        total = sum(weights)
        if len(samples) < 10:
            continue
        own: collections.Counter[tuple[str, str]] = collections.Counter()
        inclusive: collections.Counter[tuple[str, str]] = collections.Counter()
        modules: collections.Counter[str] = collections.Counter()
        for stack, weight in zip(samples, weights, strict=True):
            functions = [
                (frames[i]["name"], Path(frames[i].get("file") or "?").name) for i in stack
            ]
            if functions:
                own[functions[-1]] += weight
                modules[functions[-1][1]] += weight
            for function in set(functions):
                inclusive[function] += weight
        lines.append(f"== {profile['name']}: {len(samples)} samples")
        lines.append(
            "self % by module: "
            + ", ".join(
                f"{module} {100 * count / total:.1f}" for module, count in modules.most_common(12)
            )
        )
        lines.append(f"{'self %':>7} {'total %':>8}  function")
        for function, count in own.most_common(limit):
            name, module = function
            lines.append(
                f"{100 * count / total:7.1f} {100 * inclusive[function] / total:8.1f}"
                f"  {name} ({module})"
            )
    return "\n".join(lines)


def _client_arguments(
    server: bench.Server, workload: bench.Workload, slot: str, end: int, out: Path
) -> str:
    return json.dumps(
        {
            "dsn": server.dsn,
            "slot": slot,
            "end_lsn": end,
            "plugin": workload.plugin,
            "publication": bench.PUBLICATION if workload.plugin == "pgoutput" else None,
            "options": bench.plugin_options(workload.plugin, server.server_version),
            # the command's output (clients.py removes it afterwards)
            "file": str(out / "stream.jsonl"),
        }
    )


def callgrind(
    server: bench.Server, workload: bench.Workload, contender: str, scale: float, out: Path
) -> None:
    """Instructions per event of ``contender`` on ``workload``: two drains, differenced."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    counts: list[tuple[int, int]] = []
    target = out / f"{workload.key}-{contender}.callgrind"
    for step, size in enumerate((scale / 5, scale)):
        workload.setup(server, size)
        slot = f"callgrind_{step}"
        server.create_slot(slot, workload.plugin)
        workload.write(server, size)
        end = int(server.end_of_last_commit())
        arguments = _client_arguments(server, workload, slot, end, out)
        done = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={target}",
                sys.executable,
                str(bench.HERE / "clients.py"),
                contender,
                arguments,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        server.drop_slot(slot)
        if done.returncode != 0:
            sys.exit(f"callgrind failed: {done.stderr[-2000:]}")
        line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{"))
        events = json.loads(line)["events"]
        total = next(
            int(x.split()[-1].replace(",", ""))
            for x in done.stderr.splitlines()
            if "Collected" in x
        )
        counts.append((events, total))
        print(f"## callgrind, scale {size:g}: {events:,} events, {total:,} instructions")
    (small_events, small), (large_events, large) = counts
    if large_events > small_events:
        per = (large - small) / (large_events - small_events)
        print(f"## {per:,.0f} instructions per event (start-up left out)")
    annotate = shutil.which("callgrind_annotate")
    if annotate is not None:
        for inclusive in (True, False):
            shown = subprocess.run(
                [annotate, f"--inclusive={'yes' if inclusive else 'no'}", str(target)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            kind = "inclusive" if inclusive else "self"
            print(f"## top functions by {kind} count (scale {scale:g})")
            print("\n".join(shown.splitlines()[:60]))
    print(f"(callgrind file: {target})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="insert", choices=sorted(bench.WORKLOADS))
    parser.add_argument(
        "--contender",
        default="replicant",
        choices=["replicant", "replicant-raw", "psycopg2", "cli"],
        help="cli: the replicant stream command, writing JSON Lines to a file",
    )
    parser.add_argument(
        "--tool",
        action="append",
        choices=["py-spy", "cprofile", "callgrind", "none"],
        help="repeatable; default: none, py-spy, cprofile",
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument(
        "--native", action="store_true", help="py-spy: C frames too (ctypes, libpq, the GC)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "replicant-profiles"
    )
    parser.add_argument("--pg", type=int, default=15)
    args = parser.parse_args(argv)
    tools = args.tool or ["none", "py-spy", "cprofile"]
    args.out.mkdir(parents=True, exist_ok=True)
    workload = bench.WORKLOADS[args.workload]
    clients = str(bench.HERE / "clients.py")

    with bench.bench_server(args.pg) as server:
        if "callgrind" in tools:
            tools.remove("callgrind")
            callgrind(server, workload, args.contender, args.scale, args.out)
        if not tools:
            return
        workload.setup(server, args.scale)
        slots = [f"profile_{i}" for i in range(len(tools))]
        for slot in slots:
            server.create_slot(slot, workload.plugin)
        workload.write(server, args.scale)
        end = server.end_of_last_commit()
        for tool, slot in zip(tools, slots, strict=True):
            arguments = _client_arguments(server, workload, slot, int(end), args.out)
            env = dict(os.environ)
            stem = args.out / f"{args.workload}-{args.contender}"
            client = [clients, args.contender, arguments]
            if tool == "py-spy":
                spy = shutil.which("py-spy")
                if spy is None:
                    sys.exit("py-spy is not installed: pip install py-spy")
                target = stem.with_suffix(".speedscope.json")
                argv_ = [
                    spy,
                    "record",
                    *(["--native"] if args.native else []),
                    "--rate",
                    str(args.rate),
                    "--threads",
                    "--idle",
                    "--format",
                    "speedscope",
                    "--output",
                    str(target),
                    "--",
                    sys.executable,
                    *client,
                ]
            elif tool == "cprofile":
                target = stem.with_suffix(".pstats")
                argv_ = [sys.executable, *client]
                env["BENCH_CPROFILE"] = str(target)
            else:
                target = None
                argv_ = [sys.executable, *client]
            started = time.monotonic()
            done = subprocess.run(argv_, capture_output=True, text=True, check=False, env=env)
            wall = time.monotonic() - started
            server.drop_slot(slot)
            if done.returncode != 0:
                sys.exit(f"{tool} failed: {done.stderr}")
            # py-spy adds its own lines to stdout: the client's report is the JSON one.
            line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{"))
            report = json.loads(line)
            drain = report["done"] - report["ready"]
            print(
                f"## {tool}: {report['events']:,} events,"
                f" drain {drain:.2f} s (process {wall:.2f} s)"
            )
            if tool == "py-spy" and target is not None:
                print(top_of_speedscope(target))
                print(f"(speedscope file: {target})")
            elif tool == "cprofile" and target is not None:
                pstats.Stats(str(target)).sort_stats("tottime").print_stats(30)
                print(f"(pstats file: {target})")


if __name__ == "__main__":
    main()
