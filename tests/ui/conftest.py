"""Browser tests: marked ``ui``, skipped with the reason when Chromium or Playwright is missing.

Also the shared running Airflow (``esl_airflow``) of the trigger and backfill tests.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest

from esl_operators.config import POOL_ENV
from esl_operators.simulator import SimulatorThread, build_fleet, reference_ms_for
from tests.support import connection_env
from tests.ui.harness import AirflowHome, chromium_missing_reason
from tests.ui.stack import EslAirflow, start_stack


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ui: drives a real api-server with headless Chromium (make test-ui)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = chromium_missing_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("ui"):
            item.add_marker(pytest.mark.skip(reason=reason))


# --- one running Airflow (api-server, scheduler, dag-processor) for the trigger and backfill tests ---

SERVERS = ["esl_sim_0", "esl_sim_1", "esl_sim_2"]
FETCH_POOL = "esl_working"


@pytest.fixture(scope="session")
def esl_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EslAirflow]:
    """Simulator + api-server + scheduler + dag-processor; esl_export is unpaused.

    The fetch tasks run in a pool of their own (``ESL_EXPORT_POOL``, created first), so the named-pool
    path is what the scheduler exercises here; the README's path (test_readme_path.py) uses default_pool.

    The scheduler creates no scheduled runs (``use_job_schedule = False``): the only runs are the
    ones the tests trigger or backfill, so each test knows exactly which runs are its own.
    """
    base = tmp_path_factory.mktemp("airflow-stack")
    root = base / "esl_export"
    today = dt.datetime.now(dt.UTC).date()
    fleet = build_fleet(servers=3, stores=5, esls=180, seed=5, reference_ms=reference_ms_for(today))
    with SimulatorThread(fleet) as sim:
        env = {
            "AIRFLOW_VAR_ESL_OUTPUT_ROOT": str(root),
            "AIRFLOW_VAR_ESL_SERVERS": json.dumps(SERVERS),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            POOL_ENV: FETCH_POOL,
        }
        env.update(connection_env(SERVERS, sim.ports))
        home = AirflowHome.create(base / "home", extra_env=env)
        home.migrate()
        home.airflow("pools", "set", FETCH_POOL, "4", "ESL-Working fetch tasks")
        stack = start_stack(home)
        try:
            rest = stack.rest()
            stack.wait_for_dag(rest, "esl_export")
            status, body = rest.call("PATCH", "/api/v2/dags/esl_export", {"is_paused": False})
            assert status == 200 and body["is_paused"] is False, body
            yield EslAirflow(stack, rest, fleet, today, root, SERVERS)
        finally:
            stack.stop()
