"""End to end: ``airflow dags test esl_export`` against the standalone command, same servers and date."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from benchmarks.bench import DATE, PARTITIONS, Bench, Scenario, describe, ours
from benchmarks.harness import PYTHON, REPO, FleetSpec, Simulator
from benchmarks.tables import Row

FULL = FleetSpec(servers=3, stores=6, esls=400, latency_ms=5, capacity=8, seed=7)
QUICK = FleetSpec(servers=2, stores=3, esls=60, page_size=20, latency_ms=5, capacity=8, seed=7)


AIRFLOW = [PYTHON, "-m", "airflow"]


def airflow_env(home: Path, names: list[str]) -> dict[str, str]:
    """This process's environment with a fresh Airflow home, the repository's DAG folder and the
    Variable ``esl_servers`` = ``names`` (and no AIRFLOW_* setting of the caller's)."""
    home.mkdir()
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
    return env


def prepare_airflow(bench: Bench, env: dict[str, str]) -> None:
    """``db migrate`` and the ``esl_working`` pool (untimed set-up)."""
    for step, cmd in (
        ("migrate", [*AIRFLOW, "db", "migrate"]),
        ("pool", [*AIRFLOW, "pools", "set", "esl_working", "16", "esl"]),
    ):
        if not bench.run_step(cmd, step, env).ok:
            raise RuntimeError(f"airflow {step} failed (rerun with --keep-logs DIR to see why)")


def connect(env: dict[str, str], urls: list[str]) -> None:
    """Connection ``esl_{i}`` (``AIRFLOW_CONN_ESL_{i}``) to the simulated server ``urls[i]``."""
    for i, url in enumerate(urls):
        port = url.rsplit(":", 1)[1]
        connection = {"conn_type": "http", "host": "127.0.0.1", "port": int(port)}
        env[f"AIRFLOW_CONN_ESL_{i}"] = json.dumps(connection)


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
    env = airflow_env(bench.work / "airflow_home", [f"esl_{i}" for i in range(spec.servers)])
    prepare_airflow(bench, env)
    dag_row, cli_row = Row("airflow dags test esl_export"), Row("standalone esl-export fetch")
    with Simulator(spec, DATE, bench.log("simulator")) as sim:
        connect(env, sim.urls)
        for rep in range(bench.reps):
            out = bench.work / f"e2e-{rep}"
            env["AIRFLOW_VAR_ESL_OUTPUT_ROOT"] = str(out / "dag")
            dag = [*AIRFLOW, "dags", "test", "esl_export", DATE]
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
