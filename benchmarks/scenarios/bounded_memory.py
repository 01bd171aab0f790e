"""Bounded memory (issue 11, target 1): the aggregate step at 1M and 4M rows within its budget, and
the whole standalone command from 10k labels to the largest partition that fits the time budget.

* **The aggregate step alone** (``python -m benchmarks.aggregation ours``, its own process): 1,000
  rows (the interpreter and libraries, the baseline), 1M and 4M part rows (the 4M part is the 1M
  part four times over under other server names, made untimed in seconds).
* **The whole command** (``esl-export fetch``, report off, ``--servers-per-batch 50``: one
  partition) against 50 simulated servers, latency 0, 500 labels per page, every label inside the
  lookback (``--lookback-days 3650``), so labels = published rows: 10k labels, then 200k. A 1M-label
  fetch sends about a million detail requests (the API has no bulk detail call): about 4-5 minutes
  on this 2-core machine, too long for ``make bench``'s 15 minutes; the aggregate step alone covers
  1M and 4M rows instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchmarks.bench import DATE, Bench, Scenario, ours
from benchmarks.harness import PYTHON, FleetSpec
from benchmarks.tables import Row, find
from esl_operators.spill import FAN_IN, RUN_SHARE

BUDGET_MB = 256  # aggregate_memory_mb's default
FULL_ROWS = (1_000, 1_000_000, 4_000_000)
QUICK_ROWS = (100, 5_000, 20_000)
FULL_FLEETS = (
    FleetSpec(servers=50, stores=20, esls=200, page_size=500, seed=4),
    FleetSpec(servers=50, stores=20, esls=4_000, page_size=500, seed=4),
)
QUICK_FLEETS = (
    FleetSpec(servers=5, stores=3, esls=40, page_size=50, seed=4),
    FleetSpec(servers=5, stores=3, esls=400, page_size=50, seed=4),
)
STEP = "aggregate step"
COMMAND = "whole command"

DESIGN = f"""\
**Design: our own external sort, not an embedded engine.** A partition up to a run (1/{RUN_SHARE} of
`aggregate_memory_mb` in Arrow bytes) is sorted in memory as before. A larger one
(`esl_operators/spill.py`): (1) the part is read in chunks, failed stores' rows dropped, rows
scattered into K bucket files by a hash of `esl_id` (all copies of a label in one bucket); (2) each
bucket is de-duplicated by the same rule, fed to the report's statistics and the per-store counts,
rendered by our vectorised CSV code and written as a sorted run (sort columns + line); (3) the runs
are merged, at most {FAN_IN} at a time: the smallest last key of the runs' loaded batches bounds
what may be written, numpy's `searchsorted` on the frequency finds
each run's cut, Arrow sorts the few gathered rows. Output is byte-identical (`tests/test_spill.py`).
Tried first, by hand on the 1M-row part (load about 4): DuckDB 2.0.1 with `memory_limit='256MB'`,
`temp_directory` next to the parts, 2 threads, the part registered as an Arrow stream, `ORDER BY` with
a `row_number()` window for the dedup, streamed out as Arrow batches into our formatter: **677 MB
peak, 22 s**; plain `ORDER BY` without dedup: 677 MB, 8.9 s (ours at the time: 2.3 s, 340 MB).
DuckDB's limit bounds its buffer manager, not the Arrow scan and result batches, and it would be a
40 MB dependency; so no DuckDB.

**Where the aggregate time goes** (1M rows spilled, per phase, cProfile and wall clocks in-process,
load about 1): scatter 0.67 s (hash of `esl_id` 0.05-0.2 s, grouping rows by bucket and writing
0.4 s), reading buckets back 0.2 s, the CSV rendering 0.9-1.0 s (timestamps 0.3 s, quoting scan
0.35 s, joining cells 0.2 s), writing sorted runs 0.3 s, the merge 0.4 s (at 4M rows 2.4 s, of
which 0.9 s is writing the CSV itself and 0.5 s Arrow's sort of gathered rows; Python-level key
comparisons were 1.7 s before numpy's searchsorted took them over). Memory beyond the live Arrow
data is the allocator's (mimalloc keeps freed pages per thread): the pool is asked to release them
between chunks and runs (-60 MB peak, no slower). On this VM page faults are expensive (sys time is
a third of the CPU time), so fewer, reused buffers are the main lever; spill files are usually
deleted before they reach the disk.
"""


def _step(root: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "benchmarks.aggregation", *extra, "--root", str(root)]


def run(bench: Bench) -> Scenario:
    small, medium, large = bench.pick(FULL_ROWS, QUICK_ROWS)
    base = bench.work / "bounded"
    roots = {n: base / f"rows-{n}" for n in (small, medium, large)}
    for rows, root in ((small, roots[small]), (medium, roots[medium])):
        if not bench.run_step(_step(root, "generate", "--rows", str(rows)), "generate").ok:
            raise RuntimeError("generating the aggregation input failed (rerun with --keep-logs DIR)")
    grow = [*_step(roots[large], "grow"), "--source", str(roots[medium]), "--times", str(large // medium)]
    if not bench.run_step(grow, "grow").ok:
        raise RuntimeError("growing the 4M-row input failed (rerun with --keep-logs DIR)")
    rows: list[Row] = []
    for count, reps in ((small, bench.reps), (medium, bench.reps), (large, 1)):
        row = Row(f"{STEP}, {count:,} rows (aggregate_memory_mb {BUDGET_MB})")
        for _ in range(reps):
            glob = f"{DATE}/esl_id_part_*.csv"
            cmd = [*_step(roots[count], "ours"), "--memory-mb", str(BUDGET_MB)]
            row.runs.append(bench.run_step(cmd, "ours", rows=(roots[count], glob)))
            (roots[count] / DATE / "esl_id_part_1.csv").unlink(missing_ok=True)  # fresh output each run
        rows.append(row)
    shutil.rmtree(base, ignore_errors=True)
    for spec in bench.pick(FULL_FLEETS, QUICK_FLEETS):
        labels = spec.servers * spec.esls
        client = ours(
            f"{COMMAND}, {labels:,} labels in one partition",
            "--servers-per-batch", str(spec.servers), "--lookback-days", "3650",
            "--max-records-per-store", "10000000",
        )  # fmt: skip
        rows += bench.clients(spec, [client], reps=1)
    return {
        "title": "Bounded memory (aggregate step and whole command)",
        "description": (__doc__ or "").split("\n\n", 1)[1].strip() + "\n\n" + DESIGN,
        "rows": rows,
        "columns": ("wall_s", "cpu_s", "peak_rss_mb", "rows"),
    }


# --- targets of issue 11, target 1 (rows of BENCHMARKS.md's targets table) ---------------------------


def _row(s: dict[str, dict[str, Any]], scenario: str, label: str) -> dict[str, Any] | None:
    return find(s.get(scenario, {}).get("rows", []), label)


def target_budget(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in s.get("bounded", {}).get("rows", []) if r["label"].startswith(STEP)]
    if len(rows) != 3 or not all(r.get("peak_rss_mb") for r in rows):
        return {"ratio": None, "measured": "not measured"}
    sizes = [r["label"].split(", ")[1].split(" (")[0] for r in rows]
    base, medium, large = (r["peak_rss_mb"] for r in rows)
    above = large - base
    text = (
        f"{sizes[2]}: {large:.0f} MB peak; interpreter and libraries (the step on {sizes[0]}): {base:.0f} "
        f"MB; so {above:.0f} MB of the {BUDGET_MB} MB budget; {sizes[1]}: {medium:.0f} MB "
        f"({sizes[2]} / {sizes[1]}: {large / medium:.2f}×)"
    )
    return {
        "ratio": above / BUDGET_MB,
        "measured": text,
        "met": above <= BUDGET_MB,
        "format": "{:.0%} of budget",
    }


def target_speed(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours_row = _row(s, "aggregation", "ours, partitions")
    naive = _row(s, "aggregation", "naive pandas")
    if not ours_row or not naive or not ours_row.get("wall_s") or not naive.get("wall_s"):
        return {"ratio": None, "measured": "not measured"}
    ratio = naive["wall_s"] / ours_row["wall_s"]
    text = (
        f"1M rows, default budget (spilled: external sort): pandas {naive['wall_s']:.2f} s / ours "
        f"{ours_row['wall_s']:.2f} s; before bounded memory: 2.49× (pandas 5.49 s / ours 2.20 s, 949 MB)"
    )
    return {"ratio": ratio, "measured": text, "met": ratio >= 2.5, "format": "{:.2f}×"}


def target_command(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in s.get("bounded", {}).get("rows", []) if r["label"].startswith(COMMAND)]
    if len(rows) != 2 or not all(r.get("peak_rss_mb") for r in rows):
        return {"ratio": None, "measured": "not measured"}
    small, large = rows
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    sizes = [r["label"].split(", ")[1].split(" in ")[0] for r in rows]
    text = (
        f"{sizes[0]}: {small['peak_rss_mb']:.0f} MB; {sizes[1]}: {large['peak_rss_mb']:.0f} MB (the largest "
        "that fits the time budget; 1M labels not fetched, see the section; the aggregate step alone "
        "at 1M and 4M rows is in the row above)"
    )
    return {"ratio": ratio, "measured": text, "met": ratio <= 1.2, "format": "{:.2f}×"}


TARGETS = [
    ("Bounded memory: 4M-row aggregation within aggregate_memory_mb (256) over the baseline", target_budget),
    ("Bounded memory: aggregation per-row speed at least 2.5× naive pandas (1M rows)", target_speed),
    ("Bounded memory: whole command's peak RSS within 1.2× from 10k labels up", target_command),
]
