"""Benchmark harness: ``make bench`` = ``python benchmarks/run.py --out BENCHMARKS.md``.

Runs every scenario of issue 6 side by side (the simulator in a separate process, every client in
its own process, repetitions interleaved, medians) and writes BENCHMARKS.md plus, with ``--json``,
the raw summaries. ``--quick`` uses tiny sizes and one repetition (the harness test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (make bench): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.aggregation import MANIFEST as AGGREGATION_MANIFEST
from benchmarks.harness import PYTHON, REPO, FleetSpec, Measurement, Simulator, count_rows, measure
from benchmarks.report import render
from benchmarks.tables import Row

DATE = "2024-05-10"  # the simulator's reference date and every client's --date
CUTOFF_MS = int(datetime(2024, 5, 3, tzinfo=UTC).timestamp()) * 1000  # 7-day lookback
DEFAULT_CONCURRENCY = 4  # ours' default --max-concurrency, and the legacy semaphore
RUN_TIMEOUT_S = 600.0
PARTITIONS = "*/esl_id_part_*.csv"  # published CSVs under an output root
NETWORK_COLUMNS = ("wall_s", "requests", "req_per_s", "cpu_per_1000", "peak_rss_mb", "rows")


@dataclass(frozen=True)
class Sizes:
    latency: FleetSpec
    cpu: FleetSpec
    capacity: FleetSpec
    memory: tuple[FleetSpec, FleetSpec]
    e2e: FleetSpec
    aggregation_rows: int
    legacy_sleep_s: float


FULL = Sizes(
    # 20 ms, capacity 8, 4 servers; stores small enough that 1 s per page stays bounded.
    latency=FleetSpec(servers=4, stores=6, esls=400, latency_ms=20, capacity=8, seed=1),
    cpu=FleetSpec(servers=2, stores=40, esls=3000, seed=2),
    capacity=FleetSpec(servers=1, stores=8, esls=300, latency_ms=20, capacity=4, overload_status=503, seed=3),
    memory=(
        FleetSpec(servers=1, stores=20, esls=20_000, seed=4),
        FleetSpec(servers=1, stores=20, esls=200_000, seed=4),
    ),
    e2e=FleetSpec(servers=3, stores=6, esls=400, latency_ms=5, capacity=8, seed=7),
    aggregation_rows=1_000_000,
    legacy_sleep_s=1.0,
)
QUICK = Sizes(
    latency=FleetSpec(servers=2, stores=3, esls=60, page_size=20, latency_ms=5, capacity=8, seed=1),
    cpu=FleetSpec(servers=1, stores=3, esls=100, page_size=20, seed=2),
    capacity=FleetSpec(
        servers=1, stores=3, esls=60, page_size=20, latency_ms=5, capacity=4, overload_status=503
    ),
    memory=(
        FleetSpec(servers=1, stores=3, esls=200, seed=4),
        FleetSpec(servers=1, stores=3, esls=2_000, seed=4),
    ),
    e2e=FleetSpec(servers=2, stores=3, esls=60, page_size=20, latency_ms=5, capacity=8, seed=7),
    aggregation_rows=20_000,
    legacy_sleep_s=0.05,
)


@dataclass(frozen=True)
class Client:
    """A command run against the simulated servers: ``python -m <prefix> --server ... <extra>``."""

    label: str
    prefix: tuple[str, ...]
    extra: tuple[str, ...] = ()
    rows_glob: str = PARTITIONS

    def argv(self, urls: Sequence[str], out: Path) -> list[str]:
        servers = [arg for url in urls for arg in ("--server", url)]
        return [PYTHON, "-m", *self.prefix, *servers, "--date", DATE, "--out", str(out), *self.extra]


def ours(label: str, *extra: str) -> Client:
    return Client(label, ("esl_operators", "fetch"), extra)


def baselines(sizes: Sizes) -> list[Client]:
    return [
        Client(
            f"legacy-style, sleep {sizes.legacy_sleep_s:g} s/page",
            ("benchmarks.legacy",),
            ("--page-sleep", str(sizes.legacy_sleep_s)),
        ),
        Client("legacy-style, no sleep", ("benchmarks.legacy",), ("--page-sleep", "0")),
        Client("requests + threads(16)", ("benchmarks.requests_threads",)),
    ]


class Bench:
    """Scenario runner: a scratch folder, the repetition count, the logs of every run."""

    def __init__(self, sizes: Sizes, reps: int, work: Path, say: Callable[[str], None]) -> None:
        self.sizes = sizes
        self.reps = reps
        self.work = work
        self.say = say
        self._runs = 0

    def log(self, name: str) -> Path:
        self._runs += 1
        return self.work / f"{self._runs:03d}-{name}.log"

    def clients(self, spec: FleetSpec, clients: Sequence[Client], reps: int | None = None) -> list[Row]:
        """Each client ``reps`` times against one simulator, repetitions interleaved (rep 1 of all
        clients, then rep 2...) so slow drift of the machine hits every client alike."""
        rows = {c.label: Row(c.label) for c in clients}
        with Simulator(spec, DATE, self.log("simulator")) as sim:
            for rep in range(reps or self.reps):
                for client in clients:
                    out = self.work / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    run = measure(
                        client.argv(sim.urls, out),
                        log_path=self.log("client"),
                        timeout_s=RUN_TIMEOUT_S,
                        simulator=sim,
                    )
                    if run.ok:
                        run.rows = count_rows(out, client.rows_glob)
                    rows[client.label].runs.append(run)
                    self.say(f"  {client.label} #{rep + 1}: {_brief(run)}")
        return list(rows.values())

    def run_step(
        self,
        cmd: Sequence[str],
        name: str,
        env: dict[str, str] | None = None,
        rows: tuple[Path, str] | None = None,
    ) -> Measurement:
        """One measured command; ``rows``: (folder, glob) of the CSVs whose rows it published."""
        run = measure(cmd, log_path=self.log(name), timeout_s=RUN_TIMEOUT_S, env=env)
        if run.ok and rows is not None:
            run.rows = count_rows(*rows)
        self.say(f"  {name}: {_brief(run)}")
        return run


def _brief(run: Measurement) -> str:
    text = f"{run.wall_s:.2f} s, {run.cpu_s:.2f} CPU s, {run.peak_rss_mb:.0f} MB, rows {run.rows}"
    if run.requests is not None:
        text += f", {run.requests} requests ({run.overloaded} refused)"
    return text if run.ok else f"{text}, FAILED exit {run.exit_code}: {run.log_tail}"


def fleet_facts(spec: FleetSpec) -> tuple[int, int] | None:
    """(requests a complete export needs, rows it must publish), from the very dataset served.

    users once per server; per real store, its pages (an empty store still answers page 1) and one
    detail per label. None for fleets too large to build twice cheaply.
    """
    if spec.servers * spec.esls > 100_000:
        return None
    from esl_operators.simulator import build_fleet, reference_ms_for

    fleet = build_fleet(
        servers=spec.servers,
        stores=spec.stores,
        esls=spec.esls,
        page_size=spec.page_size,
        seed=spec.seed,
        reference_ms=reference_ms_for(datetime.strptime(DATE, "%Y-%m-%d").date()),
    )
    needed = rows = 0
    for server in fleet.servers:
        needed += 1
        for esls in server.real_stores.values():
            needed += max(1, math.ceil(len(esls) / spec.page_size)) + len(esls)
            rows += sum(1 for esl in esls if esl["last_hb_time"] >= CUTOFF_MS)
    return needed, rows


def floor_row(spec: FleetSpec, needed: int, concurrency: int = DEFAULT_CONCURRENCY) -> Row:
    label = "floor (computed)"
    if not spec.latency_ms:
        return Row(label, computed={"requests": needed}, note="no floor without latency")
    in_flight = spec.servers * (min(spec.capacity, concurrency) if spec.capacity else concurrency)
    rate = in_flight / (spec.latency_ms / 1000)
    note = (
        f"{needed:,} requests / ({spec.servers} servers × min(capacity {spec.capacity or '∞'}, "
        f"concurrency {concurrency}) / {spec.latency_ms:g} ms)"
    )
    return Row(label, computed={"wall_s": needed / rate, "requests": needed, "req_per_s": rate}, note=note)


def check_rows(rows: list[Row], expected: int | None) -> None:
    """Flag any client whose row count differs from what the dataset says must be published."""
    if expected is None:
        return
    for row in rows:
        got = {r.rows for r in row.runs if r.ok}
        if got and got != {expected}:
            extra = f"rows {sorted(got)} != expected {expected:,}"
            row.note = f"{row.note}; {extra}" if row.note else extra


def has_adaptive_flag() -> bool:
    help_text = subprocess.run(
        [PYTHON, "-m", "esl_operators", "fetch", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    return "--no-adaptive-concurrency" in help_text


def network_scenario(
    bench: Bench, spec: FleetSpec, clients: list[Client], title: str, text: str
) -> dict[str, Any]:
    facts = fleet_facts(spec)
    rows = bench.clients(spec, clients)
    if facts is not None:
        check_rows(rows, facts[1])
        rows.append(floor_row(spec, facts[0]))
    return {
        "title": title,
        "description": text,
        "spec": spec,
        "columns": NETWORK_COLUMNS,
        "expected_rows": facts[1] if facts else None,
        "rows": rows,
    }


def latency_bound(bench: Bench) -> dict[str, Any]:
    spec = bench.sizes.latency
    n = str(spec.servers)
    clients = [
        ours("ours (defaults)"),
        ours(
            f"ours, all {n} servers at once (--servers-per-batch {n} --max-threads {n})",
            "--servers-per-batch",
            n,
            "--max-threads",
            n,
        ),
        *baselines(bench.sizes),
    ]
    return network_scenario(bench, spec, clients, "Latency-bound", describe(spec))


def cpu_bound(bench: Bench) -> dict[str, Any]:
    spec = bench.sizes.cpu
    clients = [ours("ours (defaults)"), *baselines(bench.sizes)]
    text = describe(spec) + " The simulator serves from its own process; CPU is the client's alone."
    return network_scenario(bench, spec, clients, "CPU-bound", text)


def capacity_limited(bench: Bench) -> dict[str, Any]:
    spec = bench.sizes.capacity
    adaptive = has_adaptive_flag()
    fixed = ("--no-adaptive-concurrency",) if adaptive else ()
    clients = [
        ours("ours (defaults)"),
        ours("ours, fixed 1", "--max-concurrency", "1", *fixed),
        ours("ours, fixed 16", "--max-concurrency", "16", *fixed),
    ]
    if adaptive:
        clients.append(ours("ours, adaptive, max 16", "--max-concurrency", "16"))
    clients += baselines(bench.sizes)
    text = describe(spec) + " Requests beyond the capacity are refused at once with 503 + Retry-After: 0."
    if not adaptive:
        text += (
            " `esl-export fetch --help` has no `--no-adaptive-concurrency` yet: the fixed rows ran"
            " with the engine's default limiter, and the adaptive row is skipped."
        )
    result = network_scenario(bench, spec, clients, "Capacity-limited (overload answers 503)", text)
    result["columns"] = (*NETWORK_COLUMNS, "overloaded")
    result["adaptive_available"] = adaptive
    return result


def memory(bench: Bench) -> dict[str, Any]:
    """Peak RSS of our fetch step (run_batch) at two fleet sizes; one run each (RSS barely varies)."""
    rows: list[Row] = []
    for spec in bench.sizes.memory:
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
    small, large = bench.sizes.memory
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


def aggregation(bench: Bench) -> dict[str, Any]:
    root = bench.work / "aggregation"
    generate = [
        PYTHON,
        "-m",
        "benchmarks.aggregation",
        "generate",
        "--root",
        str(root),
        "--rows",
        str(bench.sizes.aggregation_rows),
    ]
    made = root / AGGREGATION_MANIFEST  # written last by the generator
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
        f"{bench.sizes.aggregation_rows:,} synthetic part rows (4 servers, 200 stores) in one part file "
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


def end_to_end(bench: Bench) -> dict[str, Any]:
    spec = bench.sizes.e2e
    home = bench.work / "airflow_home"
    home.mkdir()
    names = [f"esl_{i}" for i in range(spec.servers)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW_VAR_ESL_SERVERS": json.dumps(names),
        }
    )
    airflow = [PYTHON, "-m", "airflow"]
    for step, cmd in (
        ("migrate", [*airflow, "db", "migrate"]),
        ("pool", [*airflow, "pools", "set", "esl_working", "16", "esl"]),
    ):
        if not bench.run_step(cmd, step, env).ok:
            raise RuntimeError(f"airflow {step} failed (rerun with --keep-logs DIR to see why)")
    dag_row, cli_row = Row("airflow dags test esl_export"), Row("standalone esl-export fetch")
    with Simulator(spec, DATE, bench.log("simulator")) as sim:
        for i, url in enumerate(sim.urls):
            port = url.rsplit(":", 1)[1]
            env[f"AIRFLOW_CONN_ESL_{i}"] = json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": int(port)}
            )
        for rep in range(bench.reps):
            out = bench.work / f"e2e-{rep}"
            env["AIRFLOW_VAR_ESL_OUTPUT_ROOT"] = str(out / "dag")
            dag = [*airflow, "dags", "test", "esl_export", DATE]
            dag_row.runs.append(bench.run_step(dag, "dags-test", env, rows=(out / "dag", PARTITIONS)))
            cli = ours("").argv(sim.urls, out / "cli")
            cli_row.runs.append(bench.run_step(cli, "standalone", rows=(out / "cli", PARTITIONS)))
            shutil.rmtree(out, ignore_errors=True)
    text = (
        describe(spec) + " Same servers, date and defaults; the Airflow home is a fresh SQLite one "
        "(`db migrate` and the pool are set up first, untimed)."
    )
    return {
        "title": "End to end",
        "description": text,
        "rows": [dag_row, cli_row],
        "columns": ("wall_s", "cpu_s", "peak_rss_mb", "rows"),
    }


def failed_scenario(name: str, exc: BaseException) -> dict[str, Any]:
    text = f"**The scenario failed and was not measured**: {type(exc).__name__}: {exc}"
    return {"title": name, "description": text, "rows": [], "columns": ()}


def describe(spec: FleetSpec) -> str:
    capacity = f"capacity {spec.capacity}" if spec.capacity else "no capacity limit"
    return (
        f"{spec.servers} server(s) × {spec.stores} stores × {spec.esls:,} ESLs, {spec.page_size} per page, "
        f"{spec.latency_ms:g} ms latency, {capacity}."
    )


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "latency": latency_bound,
    "cpu": cpu_bound,
    "capacity": capacity_limited,
    "memory": memory,
    "aggregation": aggregation,
    "e2e": end_to_end,
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
    sizes = QUICK if args.quick else FULL
    reps = args.repetitions or (1 if args.quick else 3)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="esl-bench-") as scratch:
        work = Path(scratch)
        if args.keep_logs:
            work = args.keep_logs
            work.mkdir(parents=True, exist_ok=True)
        bench = Bench(sizes, reps, work, say=lambda line: print(line, flush=True))
        for name in chosen:
            print(f"== {name}", flush=True)
            try:
                results[name] = SCENARIOS[name](bench)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                # One broken scenario (e.g. Airflow cannot migrate) must not hide the others' numbers.
                print(f"  scenario {name} failed: {exc}", flush=True)
                results[name] = failed_scenario(name, exc)
    total_s = time.monotonic() - started
    summaries = {name: {**r, "rows": [row.summary() for row in r["rows"]]} for name, r in results.items()}
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
        args.json.write_text(json.dumps(payload, indent=2, default=_jsonable), encoding="utf-8")
    print(f"wrote {args.out} in {total_s / 60:.1f} min")
    return 0


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    raise TypeError(f"not JSON serialisable: {value!r}")


if __name__ == "__main__":
    sys.exit(main())
