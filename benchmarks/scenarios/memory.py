"""Memory: peak RSS of our fetch step (``run_batch``) at two fleet sizes, and of the imports alone."""

from __future__ import annotations

from benchmarks.bench import Bench, Client, Scenario
from benchmarks.harness import PYTHON, FleetSpec
from benchmarks.tables import Row

FULL = (
    FleetSpec(servers=1, stores=20, esls=20_000, seed=4),
    FleetSpec(servers=1, stores=20, esls=200_000, seed=4),
)
QUICK = (
    FleetSpec(servers=1, stores=3, esls=200, seed=4),
    FleetSpec(servers=1, stores=3, esls=2_000, seed=4),
)


def run(bench: Bench) -> Scenario:
    """One run each (RSS barely varies)."""
    sizes = bench.pick(FULL, QUICK)
    rows: list[Row] = []
    for spec in sizes:
        client = Client(
            f"ours, fetch step, {spec.esls:,} ESLs",
            ("benchmarks.fetch_only",),
            ("--max-records-per-store", "10000000"),
            rows_glob="*/_parts/batch-*.json",
        )
        rows += bench.clients(spec, [client], reps=1)
    imports = Row("imports only (python -c 'import esl_operators.cli')")
    imports.runs.append(bench.run_step([PYTHON, "-c", "import esl_operators.cli"], "imports"))
    rows.append(imports)
    small, large = sizes
    text = (
        f"One server, latency 0, {small.stores} stores; {small.esls:,} vs {large.esls:,} ESLs in one "
        "fetch task (`benchmarks/fetch_only.py`: `run_batch` alone, as a fetch task runs it). One run each."
    )
    return {
        "title": "Memory",
        "description": text,
        "rows": rows,
        "columns": ("wall_s", "requests", "peak_rss_mb", "rows"),
    }
