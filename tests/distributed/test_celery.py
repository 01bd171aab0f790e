"""Proof on a real distributed engine: CeleryExecutor, PostgreSQL, Redis and two named workers.

The whole Airflow runs on this machine, all on 127.0.0.1: PostgreSQL (metadata and Celery results),
Redis (broker), api-server, scheduler, dag-processor and two ``airflow celery worker`` processes,
``worker-a`` and ``worker-b``, each recording its own name as the task instances' ``hostname``. One
``esl_export`` run over 6 simulated servers (``servers_per_batch`` 1, so 6 mapped fetch tasks) must
spread its fetch tasks over both workers and publish exactly the CSVs the single-machine command
(``python -m esl_operators fetch``) writes for the same servers and date.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from esl_operators.config import POOL_ENV
from esl_operators.simulator import Fleet, SimulatorThread, build_fleet, reference_ms_for
from tests.distributed.services import Postgres, Redis, missing_reason
from tests.expected import expected_partition
from tests.support import DAY_MS, REPO, connection_env, csv_rows
from tests.ui.harness import AirflowHome
from tests.ui.stack import Rest, Stack, start_stack, wait_until

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

DAY = dt.date(2024, 5, 10)
SERVERS = [f"esl_store_{i}" for i in range(6)]
WORKERS = ["worker-a", "worker-b"]
FETCH_POOL = "esl_working"


@dataclass
class Cluster:
    stack: Stack
    rest: Rest
    fleet: Fleet
    urls: list[str]
    output_root: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = missing_reason()
    if reason is not None:
        pytest.fail(f"the distributed test cannot run: {reason}")
    base = tmp_path_factory.mktemp("celery")
    fleet = build_fleet(servers=6, stores=5, esls=240, seed=23, reference_ms=reference_ms_for(DAY))
    postgres, redis = Postgres(base), Redis(base)
    stack: Stack | None = None
    # Latency makes each fetch task last long enough that neither worker can drain the queue alone.
    with SimulatorThread(fleet, latency_ms=5) as sim:
        try:
            postgres.start()
            redis.start()
            env = {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url,
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres.url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.distributed.naming.worker_name",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW_VAR_ESL_OUTPUT_ROOT": str(base / "esl_export"),
                "AIRFLOW_VAR_ESL_SERVERS": json.dumps(SERVERS),
                "PYTHONPATH": str(REPO),  # the hostname callable lives in tests/
                POOL_ENV: FETCH_POOL,  # the fetch tasks' own pool, created below
            }
            env.update(connection_env(SERVERS, sim.ports))
            home = AirflowHome.create(base / "home", extra_env=env)
            home.migrate()
            home.airflow("pools", "set", FETCH_POOL, "8", "ESL-Working fetch tasks")
            stack = start_stack(home)
            workers = [
                stack.add(
                    name,
                    "celery",
                    "worker",
                    "-H",
                    f"{name}@%h",
                    "--skip-serve-logs",
                    env={"WORKER_NAME": name},
                )
                for name in WORKERS
            ]
            for worker in workers:
                wait_until(
                    f"{worker.name} ready",
                    lambda w=worker: f"{w.name}@" in w.tail(200_000) and " ready." in w.tail(200_000),
                    timeout=180,
                    services=stack.all_services,
                )
            rest = stack.rest()
            stack.wait_for_dag(rest, "esl_export")
            status, body = rest.call("PATCH", "/api/v2/dags/esl_export", {"is_paused": False})
            assert status == 200, body
            yield Cluster(stack, rest, fleet, sim.urls, base / "esl_export")
        finally:
            try:
                if stack is not None:
                    stack.stop()
            finally:
                try:
                    redis.stop()
                finally:
                    postgres.stop()


def test_fetch_tasks_spread_over_two_celery_workers_and_match_a_single_machine_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    rest, stack = cluster.rest, cluster.stack
    status, run = rest.call(
        "POST",
        "/api/v2/dags/esl_export/dagRuns",
        {"logical_date": f"{DAY.isoformat()}T00:00:00Z", "conf": {"servers_per_batch": 1}},
    )
    assert status == 200, run
    run_id = run["dag_run_id"]
    finished = stack.wait_for_runs(rest, "esl_export", [run_id], timeout=600)[run_id]
    tis = rest.task_instances("esl_export", run_id)
    assert finished["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]

    fetches = sorted((t for t in tis if t["task_id"] == "fetch"), key=lambda t: t["map_index"])
    assert [t["map_index"] for t in fetches] == list(range(6))
    assert {t["state"] for t in fetches} == {"success"}
    assert {t["hostname"] for t in fetches} == set(WORKERS), [
        (t["map_index"], t["hostname"]) for t in fetches
    ]
    assert {t["queue"] for t in fetches} == {"default"}
    assert {t["pool"] for t in fetches} == {FETCH_POOL}

    # The same servers and date on one machine, through the standalone command (no Airflow at all).
    single = tmp_path / "single"
    command = [
        sys.executable,
        "-m",
        "esl_operators",
        "fetch",
        "--date",
        DAY.isoformat(),
        "--out",
        str(single),
    ]
    for url in cluster.urls:
        command += ["--server", url]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    distributed_dir, single_dir = cluster.output_root / DAY.isoformat(), single / DAY.isoformat()
    names = sorted(p.name for p in distributed_dir.glob("esl_id_part_*.csv"))
    assert names == [f"esl_id_part_{i}.csv" for i in range(1, 7)]
    assert sorted(p.name for p in single_dir.glob("esl_id_part_*.csv")) == names
    # The server column holds the connection id in Airflow and the URL in the standalone command.
    connection_of = dict(zip(cluster.urls, SERVERS, strict=True))
    cutoff = reference_ms_for(DAY) - 7 * DAY_MS
    for index, name in enumerate(names):
        airflow_rows = csv_rows(distributed_dir / name)
        single_rows = csv_rows(single_dir / name)
        assert airflow_rows[0] == single_rows[0]
        translated = [[*row[:2], connection_of[row[2]], *row[3:]] for row in single_rows[1:]]
        assert airflow_rows[1:] == translated
        assert airflow_rows[1:] == expected_partition(cluster.fleet, {index: SERVERS[index]}, cutoff)
        assert len(airflow_rows) > 40
