"""End to end: ``airflow dags test esl_export`` against the standalone command, same servers and date."""

from __future__ import annotations

import json
import os
import shutil

from benchmarks.bench import DATE, PARTITIONS, Bench, Scenario, describe, ours
from benchmarks.harness import PYTHON, REPO, FleetSpec, Simulator
from benchmarks.tables import Row

FULL = FleetSpec(servers=3, stores=6, esls=400, latency_ms=5, capacity=8, seed=7)
QUICK = FleetSpec(servers=2, stores=3, esls=60, page_size=20, latency_ms=5, capacity=8, seed=7)


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
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
