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
`aggregate_memory_mb` in Arrow bytes, about 50,000 rows at 256 MB) is sorted in memory as before. A
larger one: (1) the part is read in chunks, failed stores' rows dropped, rows scattered into K bucket
files by a hash of `esl_id` (all copies of a label in one bucket, in part order); (2) each bucket is
de-duplicated by the same rule, fed to the report's statistics and the per-store counts, rendered by
our vectorised CSV code and written as a run sorted by the published order (its sort columns and the
line); (3) the runs are merged, at most {FAN_IN} at a time (`esl_operators/merge.py`): the smallest
last key of the runs' loaded batches bounds what may be written, numpy's `searchsorted` on the
frequency finds each run's cut, Arrow sorts the gathered rows. Byte-identical to the in-memory
result (`tests/test_spill.py`: both header styles, non-UTC zones, duplicates, failed stores).

**What was tried** (by hand, 2026-12-01/02, this machine shared with other sessions, load 1 to 7;
wall times under load are unreliable, CPU times less so):

* DuckDB 2.0.1 (`memory_limit='256MB'`, `temp_directory` next to the parts, 2 threads, the part
  registered as an Arrow stream, a `row_number()` window for the de-duplication, `ORDER BY`, result
  streamed as Arrow batches into our formatter), 1M rows, load about 4: **677 MB peak, 22 s**; plain
  `ORDER BY` without the window: 677 MB, 8.9 s. Ours at the time: 340 MB, 2.3 s. The limit bounds
  DuckDB's buffer manager, not the Arrow scan and result, and DuckDB is a 40 MB dependency: not used.
* Memory-order and run sizes, 1M / 4M rows, and the whole command at 10k / 200k labels, one run
  each, load 5 to 7: runs of 1/8 of the budget: 358-373 / 442 MB, command 218 / 357 MB; 1/16:
  283-294 / 347 MB, command 213 / 331 MB; 1/24: 266-278 / 303 MB, command 213 / 311 MB; CPU within
  10% of each other (1M: 5.3-6.6 CPU s under that load; 2.6-2.8 CPU s at load 1). Chosen: 1/24.
* Before this change, same machine, load 1-2: 1M rows 2.06-2.8 s wall, 959-1041 MB; 4M rows 12.5 s,
  2875 MB. After, same conditions, runs of 1/8: 1M 2.3-2.6 s, 336-340 MB; 4M 13.3 s, 342 MB.
* Arrow's allocator: the pool (mimalloc) keeps freed pages per thread; asking it to release them
  between chunks and runs saves about 60 MB of peak at no measurable cost. jemalloc and the C
  allocator (`ARROW_DEFAULT_MEMORY_POOL`) were tried: within 10-30 MB of mimalloc, no better ratio in
  the whole command (182 / 281 MB with the C allocator), so the default pool stays.

**Where the aggregate time goes** (1M rows spilled, load about 1, wall per phase in-process): scatter
0.67 s (hash of `esl_id` 0.05-0.2 s, grouping rows by bucket and writing them 0.4 s), reading buckets
back 0.2 s, rendering CSV lines 0.9-1.0 s (timestamps 0.3 s, the quoting scan 0.35 s, joining cells
0.2 s), writing sorted runs 0.3 s, the merge 0.4 s. At 4M rows the merge took 3.3 s, 1.7 s of it
Python comparing keys; numpy's `searchsorted` on the frequency brought it to 2.4 s (0.9 s writing the
CSV itself, 0.5 s Arrow's sort of gathered rows). Counting timestamp days instead of sorting them
(`np.unique`) saved about 0.15 s per 1M rows in both paths. On this VM page faults are expensive
(sys time is a third of the CPU time), so reusing few buffers matters more than kernels.

**Speed, second pass** (2026-12-02; py-spy over all threads and per-thread `getrusage`, 1M rows
spilled, load 3-8). The snapshot (typed columns and the Parquet write, added with the fleet history)
had become the largest cost, on the main thread: it now runs on a thread of its own beside the
rendering (one chunk in flight), dictionary-encodes only its repeating columns (the write about 40%
cheaper, the file smaller), makes empty cells null without copying them and groups rows by server
with a stable numpy sort. The quote scan uses bytes' `memchr` instead of `np.isin` (30x); the clock
table is built by Arrow instead of 86,400 f-strings; the key hash runs in 16 KB slices, under the C
allocator's mmap threshold (72,000 page faults fewer); the no-duplicate test sorts the 64-bit bucket
hashes instead of counting distinct strings (3x); the scatter no longer hands memory back between
chunks (40,000 faults). Tried and dropped: Arrow's CSV writer to join the cells (it quotes every
string, or refuses structural bytes; with stand-in bytes swapped back it was slower than the join
kernel), reading the next bucket ahead (no gain, 14 MB more). Not done: avoiding pandas' import
(0.3 CPU s, 38 MB): pyarrow loads it for `pa.array`, `to_numpy` and every Python scalar handed to a
kernel. Peak RSS is mostly allocator retention: at 1M rows Arrow's live memory peaks at 55 MB while
RSS is 300-315 MB; `MIMALLOC_PURGE_DELAY=0` gives 258 MB, Arrow's system pool with
`MALLOC_ARENA_MAX=1` 235 MB, each with 3-4x the page faults (slower on this VM).

**The whole command and 1.2×** (by hand, load 5-7: 213 MB at 10k labels, 311 MB at 200k: 1.46×,
not met). Its fetch phase stays flat (165 MB at 100k labels on 50 servers, sampled every 50 ms), but
the aggregate phase adds about 50 MB at 10k labels and about 110 MB once a partition is a few runs
(a run's working set, Arrow's compute and allocator arenas, pandas, which pyarrow loads at its first
Python-scalar conversion), and then no more with size: the aggregate step alone is flat from 1M to
4M rows, so 1M labels should land where 200k does. Meeting 1.2× would take runs of a few MB, far
below what the budget allows, and a slower merge.
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
