"""The scheduler itself schedules ``esl_export``: one ``scheduled`` run, for the latest midnight, publishes.

An Airflow of its own (api-server, scheduler, dag-processor on SQLite), because the shared
``esl_airflow`` turns job scheduling off so that its tests know every run. Here it stays on (Airflow's
default), the DAG is unpaused and ``catchup=False`` holds: the scheduler creates exactly one run, of
type ``scheduled``, for the latest complete interval. With ``@daily`` on the cron trigger timetable that
interval is the instant of the last midnight UTC (``data_interval_start == data_interval_end ==
logical_date``), so the run writes the folder named for that midnight's date, looking back from it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators.simulator import Fleet, SimulatorThread, build_fleet, reference_ms_for
from tests.expected import expected_partition
from tests.support import DAY_MS, connection_env, csv_rows
from tests.ui.harness import AirflowHome
from tests.ui.stack import Rest, Stack, start_stack, wait_until

SERVERS = ["esl_sched_0", "esl_sched_1"]


def _midnight(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def scheduling_airflow(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, Rest, Fleet, Path, dt.datetime]]:
    base = tmp_path_factory.mktemp("scheduled")
    root = base / "esl_export"
    started = dt.datetime.now(dt.UTC)
    fleet = build_fleet(servers=2, stores=4, esls=120, seed=9, reference_ms=reference_ms_for(started.date()))
    with SimulatorThread(fleet) as sim:
        env = {
            "AIRFLOW_VAR_ESL_OUTPUT_ROOT": str(root),
            "AIRFLOW_VAR_ESL_SERVERS": json.dumps(SERVERS),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",  # Airflow's default, said out loud
        }
        env.update(connection_env(SERVERS, sim.ports))
        home = AirflowHome.create(base / "home", extra_env=env)
        home.migrate()
        stack = start_stack(home)
        try:
            rest = stack.rest()
            dag = stack.wait_for_dag(rest, "esl_export")
            assert dag["is_paused"] is True  # paused at creation: nothing was scheduled before the test
            yield stack, rest, fleet, root, started
        finally:
            stack.stop()


@pytest.mark.services
@pytest.mark.timeout(600)
def test_the_scheduler_creates_and_runs_the_latest_interval(
    scheduling_airflow: tuple[Stack, Rest, Fleet, Path, dt.datetime],
) -> None:
    stack, rest, fleet, root, started = scheduling_airflow
    assert rest.dag_runs("esl_export") == []
    status, body = rest.call("PATCH", "/api/v2/dags/esl_export", {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, body

    def scheduled() -> list[dict[str, Any]]:
        return rest.dag_runs("esl_export", run_type="scheduled")

    [run] = wait_until("a scheduled run", scheduled, timeout=180, services=stack.all_services)
    run_id = run["dag_run_id"]
    done = stack.wait_for_runs(rest, "esl_export", [run_id], timeout=400)[run_id]
    states = {ti["task_id"]: ti["state"] for ti in rest.task_instances("esl_export", run_id)}
    assert done["state"] == "success", states
    assert done["run_type"] == "scheduled"

    # The latest complete interval of @daily on the cron trigger timetable: the last midnight UTC
    # before the scheduler planned the run (the day can only have turned during this test).
    logical = _time(done["logical_date"])
    assert _time(done["data_interval_start"]) == _time(done["data_interval_end"]) == logical
    assert logical == _midnight(logical)
    assert _midnight(started) <= logical <= _midnight(_time(done["queued_at"]))
    assert logical <= _time(done["queued_at"]) < logical + dt.timedelta(days=1)
    # catchup=False: no run for any earlier day (start_date is 2020-01-01), and no manual run either.
    runs = rest.dag_runs("esl_export")
    assert {r["run_type"] for r in runs} == {"scheduled"}
    assert min(_time(r["logical_date"]) for r in runs) == logical

    ds = logical.date().isoformat()
    assert sorted(p.name for p in root.iterdir()) == [ds]  # the interval's date, and nothing else
    out = root / ds
    manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["date"] == ds
    assert manifest["anchor_source"] == "logical_date"
    assert _time(manifest["anchor"]) == logical
    cutoff_ms = reference_ms_for(logical.date()) - 7 * DAY_MS
    for index, name in enumerate(SERVERS):  # servers_per_batch 1: one partition per server
        rows = csv_rows(out / f"esl_id_part_{index + 1}.csv")
        assert rows[1:] == expected_partition(fleet, {index: name}, cutoff_ms)
        assert len(rows) > 10
    assert (out / "_SUCCESS").exists()
