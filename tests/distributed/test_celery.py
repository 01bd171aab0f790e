"""Proof on a real distributed engine: CeleryExecutor, PostgreSQL, Redis and two named workers.

The whole Airflow runs on this machine, all on 127.0.0.1: PostgreSQL (metadata and Celery results),
Redis (broker), api-server, scheduler, dag-processor and two ``airflow celery worker`` processes,
``worker-a`` and ``worker-b``, each recording its own name as the task instances' ``hostname``. One
``esl_export`` run over 6 simulated servers (``servers_per_batch`` 1, so 6 mapped fetch tasks) must
spread its fetch tasks over both workers and publish exactly the CSVs the single-machine command
(``python -m esl_operators fetch``) writes for the same servers and date.

Then a dead worker (issue 12): one worker is killed (SIGKILL, its process group and every process
below it, as when its machine dies) while it runs a fetch task against slow servers; the scheduler
notices the missing heartbeats (timeout shortened for the test), the task is retried on the other
worker, and the CSVs again equal the single-machine run's. This test runs last: it leaves one worker.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
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
from tests.ui.harness import AirflowHome, Service
from tests.ui.stack import Rest, Stack, start_stack, wait_until

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

DAY = dt.date(2024, 5, 10)
SERVERS = [f"esl_store_{i}" for i in range(6)]
WORKERS = ["worker-a", "worker-b"]
FETCH_POOL = "esl_working"
# The dead-worker run: two slow servers on another date, one request in flight each, so a fetch task
# lasts long enough (120 labels x 100 ms) for the kill to land in the middle of it.
KILL_DAY = dt.date(2024, 5, 11)
SLOW_SERVERS = ["esl_slow_0", "esl_slow_1"]
SLOW_LATENCY_MS = 100
# The scheduler fails a running task whose heartbeats stopped this long ago (default 300 s); the
# workers' supervisors heartbeat every 5 s ([workers] min_heartbeat_interval), well within it.
HEARTBEAT_TIMEOUT_S = 30


@dataclass
class Cluster:
    stack: Stack
    rest: Rest
    fleet: Fleet
    urls: list[str]
    output_root: Path
    slow_fleet: Fleet
    slow: SimulatorThread
    workers: dict[str, Service]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = missing_reason()
    if reason is not None:
        pytest.fail(f"the distributed test cannot run: {reason}")
    base = tmp_path_factory.mktemp("celery")
    fleet = build_fleet(servers=6, stores=5, esls=240, seed=23, reference_ms=reference_ms_for(DAY))
    slow_fleet = build_fleet(servers=2, stores=3, esls=120, seed=29, reference_ms=reference_ms_for(DAY))
    postgres, redis = Postgres(base), Redis(base)
    stack: Stack | None = None
    # Latency makes each fetch task last long enough that neither worker can drain the queue alone.
    with (
        SimulatorThread(fleet, latency_ms=5) as sim,
        SimulatorThread(slow_fleet, latency_ms=SLOW_LATENCY_MS) as slow,
    ):
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
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                "AIRFLOW_VAR_ESL_OUTPUT_ROOT": str(base / "esl_export"),
                "AIRFLOW_VAR_ESL_SERVERS": json.dumps(SERVERS),
                "PYTHONPATH": str(REPO),  # the hostname callable lives in tests/
                POOL_ENV: FETCH_POOL,  # the fetch tasks' own pool, created below
            }
            env.update(connection_env(SERVERS, sim.ports))
            env.update(connection_env(SLOW_SERVERS, slow.ports))
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
            yield Cluster(
                stack,
                rest,
                fleet,
                sim.urls,
                base / "esl_export",
                slow_fleet,
                slow,
                dict(zip(WORKERS, workers, strict=True)),
            )
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

    assert_same_as_a_single_machine_run(
        cluster.urls, SERVERS, DAY, cluster.output_root, tmp_path / "single", expect=6
    )
    cutoff = reference_ms_for(DAY) - 7 * DAY_MS
    for index in range(6):
        rows = csv_rows(cluster.output_root / DAY.isoformat() / f"esl_id_part_{index + 1}.csv")
        assert rows[1:] == expected_partition(cluster.fleet, {index: SERVERS[index]}, cutoff)
        assert len(rows) > 40


def assert_same_as_a_single_machine_run(
    urls: list[str], connections: list[str], day: dt.date, published: Path, single: Path, *, expect: int
) -> None:
    """The same servers and date on one machine, through the standalone command (no Airflow at all),
    give the same CSV partitions; the server column holds the connection id in Airflow and the URL in
    the standalone command."""
    command = [
        sys.executable,
        "-m",
        "esl_operators",
        "fetch",
        "--date",
        day.isoformat(),
        "--out",
        str(single),
    ]
    for url in urls:
        command += ["--server", url]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ),
        cwd=single.parent,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    distributed_dir, single_dir = published / day.isoformat(), single / day.isoformat()
    names = sorted(p.name for p in distributed_dir.glob("esl_id_part_*.csv"))
    assert names == [f"esl_id_part_{i}.csv" for i in range(1, expect + 1)]
    assert sorted(p.name for p in single_dir.glob("esl_id_part_*.csv")) == names
    connection_of = dict(zip(urls, connections, strict=True))
    for name in names:
        airflow_rows = csv_rows(distributed_dir / name)
        single_rows = csv_rows(single_dir / name)
        assert airflow_rows[0] == single_rows[0]
        translated = [[*row[:2], connection_of[row[2]], *row[3:]] for row in single_rows[1:]]
        assert airflow_rows[1:] == translated
        assert len(airflow_rows) > 10


# --- a dead worker ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (the task runners sit in process groups of their own)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its parent to reap it


def kill_machine(worker: Service) -> list[int]:
    """SIGKILL a worker as if its machine died: its process group, then every process below it that
    left the group (Airflow puts each task runner in a group of its own). Returns the PIDs killed."""
    below = _children(worker.process.pid)
    os.killpg(worker.process.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone with the group
    worker.process.wait(timeout=30)
    wait_until("the killed worker's processes gone", lambda: not any(map(_alive, below)), timeout=30)
    return [worker.process.pid, *below]


def test_a_worker_killed_during_a_fetch_task_is_replaced_by_the_other_and_the_csvs_are_unchanged(
    cluster: Cluster, tmp_path: Path
) -> None:
    rest, stack, slow = cluster.rest, cluster.stack, cluster.slow
    conf = {
        "servers": SLOW_SERVERS,
        "servers_per_batch": 1,
        "max_concurrency": 1,
        "adaptive_concurrency": False,
    }
    status, run = rest.call(
        "POST",
        "/api/v2/dags/esl_export/dagRuns",
        {"logical_date": f"{KILL_DAY.isoformat()}T00:00:00Z", "conf": conf},
    )
    assert status == 200, run
    run_id = run["dag_run_id"]
    labels = [server.esl_count for server in cluster.slow_fleet.servers]

    def a_fetch_in_the_middle() -> dict[str, object] | None:
        for ti in rest.task_instances("esl_export", run_id):
            index = ti["map_index"]
            if ti["task_id"] == "fetch" and ti["state"] == "running" and ti["hostname"] in WORKERS:
                if 20 <= slow.stats[index].details < labels[index] // 2:
                    return dict(ti)
        return None

    victim = wait_until(
        "a fetch task running half-way",
        a_fetch_in_the_middle,
        timeout=300,
        every=0.5,
        services=stack.all_services,
    )
    dead, survivor = victim["hostname"], next(w for w in WORKERS if w != victim["hostname"])
    killed = kill_machine(cluster.workers[str(dead)])
    done_at_kill = slow.stats[int(str(victim["map_index"]))].details
    assert done_at_kill < labels[int(str(victim["map_index"]))]  # killed mid-task, not after it
    # The rest of the stack must stay alive; the dead worker is no longer watched (stop() skips it).
    stack.services.remove(cluster.workers[str(dead)])
    assert len(killed) >= 3  # the worker, its pool processes, the task runner

    finished = stack.wait_for_runs(rest, "esl_export", [run_id], timeout=420)[run_id]
    tis = rest.task_instances("esl_export", run_id)
    assert finished["state"] == "success", [
        (t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tis
    ]
    fetches = {t["map_index"]: t for t in tis if t["task_id"] == "fetch"}
    assert sorted(fetches) == [0, 1]
    retried = set()
    for index in fetches:
        path = f"/api/v2/dags/esl_export/dagRuns/{run_id}/taskInstances/fetch/{index}/tries"
        history = [(t["try_number"], t["state"], t["hostname"]) for t in rest.get(path)["task_instances"]]
        if history[0][2] == dead:
            # The try on the dead worker failed for its missing heartbeats; the retry ran on the other.
            assert history == [(1, "failed", dead), (2, "success", survivor)], history
            retried.add(index)
        else:
            assert history == [(1, "success", survivor)], history
    assert victim["map_index"] in retried
    assert_same_as_a_single_machine_run(
        slow.urls, SLOW_SERVERS, KILL_DAY, cluster.output_root, tmp_path / "single", expect=2
    )
