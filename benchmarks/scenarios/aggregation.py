"""Aggregation: one large part file sorted into partitions by ours (with and without the report) and
by naive pandas, each step a ``python -m benchmarks.aggregation`` process of its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.aggregation import MANIFEST
from benchmarks.bench import DATE, Bench, Scenario
from benchmarks.harness import PYTHON
from benchmarks.tables import Row

FULL = 1_000_000  # part rows
QUICK = 20_000


def run(bench: Bench) -> Scenario:
    part_rows = bench.pick(FULL, QUICK)
    root = bench.work / "aggregation"
    generate = [
        PYTHON,
        "-m",
        "benchmarks.aggregation",
        "generate",
        "--root",
        str(root),
        "--rows",
        str(part_rows),
    ]
    made = root / MANIFEST  # written last by the generator
    ours_row = Row("ours, partitions (aggregate_run, report=False)")
    report_row = Row("ours with report.html (aggregate_run, the DAG's aggregate task)")
    pandas_row = Row("naive pandas (read_csv / sort_values / to_csv)")
    for _ in range(bench.reps):
        if not made.exists() or not Path(json.loads(made.read_text())["part"]).exists():
            # (Re)made, untimed: an aggregate step may tidy its parts away.
            if not bench.run_step(generate, "generate").ok:
                raise RuntimeError("generating the aggregation input failed (rerun with --keep-logs DIR)")
        for row, step, glob in (
            (ours_row, "ours", f"{DATE}/esl_id_part_*.csv"),
            (report_row, "ours-report", f"{DATE}/esl_id_part_*.csv"),
            (pandas_row, "pandas", f"pandas/{DATE}/esl_id_part_*.csv"),
        ):
            cmd = [PYTHON, "-m", "benchmarks.aggregation", step, "--root", str(root)]
            row.runs.append(bench.run_step(cmd, step, rows=(root, glob)))
    shutil.rmtree(root, ignore_errors=True)
    text = (
        f"{part_rows:,} synthetic part rows (4 servers, 200 stores) in one part file "
        "written by `PartWriter`, each step in its own process, interpreter start and imports included. "
        "Ours also drops failed stores and duplicates, formats timestamps, checks counts and writes the "
        "manifest (the second row also renders the fleet report's charts); pandas only sorts."
    )
    return {
        "title": "Aggregation",
        "description": text,
        "rows": [ours_row, report_row, pandas_row],
        "columns": ("wall_s", "cpu_s", "peak_rss_mb", "rows"),
    }
