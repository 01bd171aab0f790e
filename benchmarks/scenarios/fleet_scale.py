"""Fleet scale (issue 11, target 6): 1,000 simulated servers served by one simulator process, through
the standalone command and through ``airflow dags test esl_export``, 50 servers per batch (20
partitions; 20 mapped fetch tasks in the DAG).

* **The fleet**: ``--stores 3 --esls 60 --page-size 30``. The dataset always leaves one store of a
  server with two or more stores empty (clients must cope with empty stores), so no arguments give
  exactly 2 stores: this is 2 stores × 30 labels (one page each), an empty store and ``default``
  (skipped): 64 requests a server.
* **Standalone**: ``esl-export fetch`` with every server given as ``esl_{i}=URL`` (named as the DAG
  names them, by connection id), ``--servers-per-batch 50``, report off (its default), the other
  defaults.
* **DAG**: ``airflow dags test esl_export DATE -c '{"servers_per_batch": 50}'``, connections
  ``esl_{i}`` as ``AIRFLOW_CONN_ESL_{i}``, the Variable ``esl_servers`` listing them in order, on a
  fresh SQLite Airflow home (``db migrate`` and the pool untimed). One repetition: ``dags test`` runs
  the 20 mapped tasks one after another, each with ``max_threads`` 3, about 2 minutes. It writes the
  report too, as the DAG always does.
* **Rows**: the (server, esl_id) pairs of each run's CSVs, each exactly once, must equal those of the
  dataset's labels within the lookback (computed from the very dataset served), and the two runs'
  CSVs must be byte-identical.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.bench import CUTOFF_MS, DATE, PARTITIONS, RUN_TIMEOUT_S, Bench, Scenario, describe, ours
from benchmarks.harness import FleetSpec, Simulator, count_rows, measure
from benchmarks.network import fleet_facts, served_fleet
from benchmarks.scenarios.end_to_end import AIRFLOW, airflow_env, connect, prepare_airflow
from benchmarks.tables import Row, find

FULL = FleetSpec(servers=1000, stores=3, esls=60, page_size=30, seed=11)
QUICK = FleetSpec(servers=20, stores=3, esls=60, page_size=30, seed=11)
FULL_BATCH, QUICK_BATCH = 50, 10
STANDALONE = "standalone esl-export fetch"
DAG = "airflow dags test esl_export"

MEASURED = """\
**Where the per-server cost went** (by hand, 2026-12-02, load 4-6 on the 2 shared cores: CPU s of the
whole command, user + sys; `py-spy --gil` for where). Before, the command ran its 32 servers in flight
on 32 threads, one event loop each: 1,000 servers took 21.5-25.3 CPU s (two runs) where 4 servers ×
16,000 labels, about the same 64,000 requests, took 15.6-19.1. Now the servers in flight share at
most 4 threads (`MAX_LOOP_THREADS`), several servers on each loop: 19.2 CPU s (two runs; with 1
loop 21.5-27.0, 2 loops 20.2-21.0, 8 loops 19.4-19.9; these runs include the next fix). The CSV
quoting scan ran `np.isin` once per Arrow chunk, and a partition holds a chunk per store: 1.5 s of
the 1,000-server run, now a `bytes` search (memchr), many times cheaper per chunk. What remains per server
(`py-spy`): its session and 1-4 TCP connections (about 0.6 s per 1,000 servers), the adaptive
limiter's ramp from 1 in flight (about 1 s), its log lines (about 0.5 s).
"""


def _expected_keys(spec: FleetSpec, names: list[str]) -> Counter[tuple[str, str]]:
    """(server, esl_id) of every label a correct export publishes, from the dataset served."""
    fleet = served_fleet(spec)
    return Counter(
        (names[server.index], esl["esl_id"])
        for server in fleet.servers
        for esls in server.real_stores.values()
        for esl in esls
        if esl["last_hb_time"] >= CUTOFF_MS
    )


def _published_keys(folder: Path) -> Counter[tuple[str, str]]:
    keys: Counter[tuple[str, str]] = Counter()
    for path in sorted(folder.glob(PARTITIONS)):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            esl_id, server = header.index("esl_id"), header.index("server")
            keys.update((row[server], row[esl_id]) for row in reader)
    return keys


def _csvs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(PARTITIONS))}


def _one(
    bench: Bench,
    row: Row,
    log_name: str,
    cmd: list[str],
    sim: Simulator,
    env: dict[str, str] | None,
    folder: Path,
    expected: Counter[tuple[str, str]],
) -> bool:
    """Run and measure ``cmd``; whether it published exactly the expected labels (else noted)."""
    run = measure(
        cmd, log_path=bench.log(row.label.split(",")[0]), timeout_s=RUN_TIMEOUT_S, simulator=sim, env=env
    )
    row.runs.append(run)
    bench.say(
        f"  {row.label}: {run.wall_s:.1f} s, {run.cpu_s:.1f} CPU s, {run.peak_rss_mb:.0f} MB, "
        f"exit {run.exit_code}"
    )
    if not run.ok:
        return False
    run.rows = count_rows(folder, PARTITIONS)
    got = _published_keys(folder)
    if got == expected:
        return True
    missing, extra = sum((expected - got).values()), sum((got - expected).values())
    row.note = f"NOT the expected rows: {missing} missing, {extra} extra or repeated"
    return False


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
    batch = bench.pick(FULL_BATCH, QUICK_BATCH)
    names = [f"esl_{i}" for i in range(spec.servers)]
    expected = _expected_keys(spec, names)
    env = airflow_env(bench.work / "fleet_airflow_home", names)
    prepare_airflow(bench, env)
    out = bench.work / "fleet"
    cli_row = Row(f"{STANDALONE}, servers_per_batch {batch}")
    dag_row = Row(f"{DAG}, servers_per_batch {batch}")
    checks: dict[str, bool] = {}
    with Simulator(spec, DATE, bench.log("simulator")) as sim:
        connect(env, sim.urls)
        named = [f"{name}={url}" for name, url in zip(names, sim.urls, strict=True)]
        cli = ours("", "--servers-per-batch", str(batch)).argv(named, out / "cli")
        checks["standalone"] = _one(bench, cli_row, "standalone", cli, sim, None, out / "cli", expected)
        env["AIRFLOW_VAR_ESL_OUTPUT_ROOT"] = str(out / "dag")
        dag = [*AIRFLOW, "dags", "test", "esl_export", DATE, "-c", json.dumps({"servers_per_batch": batch})]
        checks["dag"] = _one(bench, dag_row, "dags-test", dag, sim, env, out / "dag", expected)
    both = checks["standalone"] and checks["dag"]
    checks["identical"] = both and _csvs(out / "cli") == _csvs(out / "dag")
    if both and not checks["identical"]:
        dag_row.note = "the same labels as the standalone command's, but not byte-identical CSVs"
    shutil.rmtree(out, ignore_errors=True)
    facts = fleet_facts(spec)
    needed = f" A complete export sends {facts[0]:,} requests." if facts else ""
    text = (
        describe(spec) + needed + " One run each.\n\n" + (__doc__ or "").split("\n\n", 1)[1].strip()
        + "\n\n" + MEASURED
    )  # fmt: skip
    return {
        "title": "Fleet scale",
        "description": text,
        "spec": spec,
        "rows": [cli_row, dag_row],
        "columns": ("wall_s", "requests", "cpu_s", "cpu_per_1000", "peak_rss_mb", "rows"),
        "expected_rows": sum(expected.values()),
        "checks": checks,
    }


# --- targets of issue 11, target 6 (rows of BENCHMARKS.md's targets table) ---------------------------


def target_cpu(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fleet = find(s.get("fleet", {}).get("rows", []), STANDALONE)
    small = find(s.get("cpu", {}).get("rows", []), "ours (defaults)")
    if not fleet or not small or not fleet.get("cpu_per_1000") or not small.get("cpu_per_1000"):
        return {"ratio": None, "measured": "not measured (needs the fleet and cpu scenarios in one run)"}
    ratio = fleet["cpu_per_1000"] / small["cpu_per_1000"]
    servers = getattr(s["cpu"].get("spec"), "servers", "?")
    dag = find(s["fleet"]["rows"], DAG)
    dag_text = (
        f"; dags test {dag['cpu_per_1000']:.3f} (Airflow included)" if dag and dag.get("cpu_per_1000") else ""
    )
    text = (
        f"CPU s per 1000 requests: {fleet['label']} {fleet['cpu_per_1000']:.3f} ({fleet['requests']:,.0f} "
        f"requests); the CPU-bound scenario's ours (defaults) {small['cpu_per_1000']:.3f} ({servers} "
        f"servers, {small['requests']:,.0f} requests: its start-up weighs more){dag_text}"
    )
    return {"ratio": ratio, "measured": text, "met": ratio <= 1.2, "format": "{:.2f}×"}


def target_rows(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    scenario = s.get("fleet", {})
    checks = scenario.get("checks")
    if not checks:
        return {"ratio": None, "measured": "not measured"}
    counts = "; ".join(f"{r['label'].split(',')[0]}: {r.get('rows') or 0:,.0f}" for r in scenario["rows"])

    def said(ok: bool) -> str:
        return "yes" if ok else "**no**"

    text = (
        f"rows expected {scenario.get('expected_rows') or 0:,}; {counts}; the dataset's (server, esl_id) "
        f"pairs, once each: standalone {said(checks['standalone'])}, dags test {said(checks['dag'])}; "
        f"the two runs' CSVs byte-identical: {said(checks['identical'])}"
    )
    met = all(checks.values())
    return {"ratio": 1.0 if met else 0.0, "measured": text, "met": met, "format": "{:.0%}"}


TARGETS = [
    ("Fleet scale: 1,000 servers, CPU per request within 20% of the 4-server CPU-bound figure", target_cpu),
    ("Fleet scale: CSVs equal the expected rows (standalone and dags test)", target_rows),
]
