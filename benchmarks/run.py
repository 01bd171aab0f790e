"""Benchmark runner: ``make bench`` = ``python benchmarks/run.py --out BENCHMARKS.md``.

Runs the chosen scenarios (one module each in ``benchmarks/scenarios``; the simulator in a separate
process, every client in its own process, repetitions interleaved, medians) and writes BENCHMARKS.md
plus, with ``--json``, the raw summaries. ``--quick`` uses tiny sizes and one repetition (the harness
test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (make bench): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import Bench, Scenario, failed, jsonable
from benchmarks.harness import REPO
from benchmarks.report import render
from benchmarks.scenarios import (
    aggregation,
    bounded_memory,
    busy,
    capacity,
    cpu_bound,
    end_to_end,
    fleet_scale,
    floor,
    latency_bound,
    memory,
    startup,
)

# The names are those of ``--scenarios`` and the keys BENCHMARKS.md's targets look scenarios up by.
SCENARIOS: dict[str, Callable[[Bench], Scenario]] = {
    "latency": latency_bound.run,
    "cpu": cpu_bound.run,
    "capacity": capacity.run,
    "memory": memory.run,
    "aggregation": aggregation.run,
    "e2e": end_to_end.run,
    "bounded": bounded_memory.run,
    "startup": startup.run,
    "floor": floor.run,
    "busy": busy.run,
    "fleet": fleet_scale.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, help="also write the summaries as JSON here")
    parser.add_argument("--repetitions", type=int, help="default 3, or 1 with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (harness test)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--keep-logs", type=Path, help="keep every run's log here (default: discarded)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}")
    reps = args.repetitions or (1 if args.quick else 3)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results: dict[str, Scenario] = {}
    with tempfile.TemporaryDirectory(prefix="esl-bench-") as scratch:
        work = Path(scratch)
        if args.keep_logs:
            work = args.keep_logs
            work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args.quick, reps, work, say=lambda line: print(line, flush=True))
        for name in chosen:
            print(f"== {name}", flush=True)
            try:
                results[name] = SCENARIOS[name](bench)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                # One broken scenario (e.g. Airflow cannot migrate) must not hide the others' numbers.
                print(f"  scenario {name} failed: {exc}", flush=True)
                results[name] = failed(name, exc)
    total_s = time.monotonic() - started
    summaries: dict[str, dict[str, Any]] = {
        name: {**r, "rows": [row.summary() for row in r["rows"]]} for name, r in results.items()
    }
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "repetitions": reps,
        "quick": args.quick,
        "total_s": total_s,
        "python": platform.python_version(),
        # Anything else running on the machine skews the numbers; recorded so readers can tell.
        "load_average": (load_before, os.getloadavg()[0]),
    }
    text, targets = render(summaries, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    if args.json:
        payload = {"meta": meta, "targets": targets, "scenarios": summaries}
        args.json.write_text(json.dumps(payload, indent=2, default=jsonable), encoding="utf-8")
    print(f"wrote {args.out} in {total_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
