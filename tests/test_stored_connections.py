"""``airflow dags test`` with connections stored by ``airflow connections add``, as a user makes them.

Both commands run as subprocesses on the session's SQLite home (tests/conftest.py): the connections
live in the metadata database, not in ``AIRFLOW_CONN_*`` variables, so the task must find them through
the in-process supervisor of ``dags test``. A missing connection must fail its task at once (no
retries, although the DAG retries fetch tasks twice, a minute apart) and say how to create it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esl_operators.csvformat import STANDARD_COLUMNS
from esl_operators.simulator import Fleet, SimulatorThread
from tests.expected import expected_partition
from tests.support import ANCHOR_MS, DAY_MS, csv_rows

pytestmark = pytest.mark.timeout(300)
PASSWORD = "stored-secret-4711"


def _airflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))},
    )


def _add_connection(conn_id: str, port: int, cwd: Path) -> None:
    added = _airflow(
        "connections", "add", conn_id, "--conn-type", "http", "--conn-host", "127.0.0.1",
        "--conn-port", str(port), "--conn-login", "api", "--conn-password", PASSWORD,
        cwd=cwd,
    )  # fmt: skip
    assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-2000:]
    assert f"Successfully added `conn_id`={conn_id}" in added.stdout


def _task_states(day: dt.date) -> dict[tuple[str, int], tuple[str | None, int]]:
    """(task_id, map_index) -> (state, try_number) of the run of ``day``, from the metadata database."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == "esl_export", DagRun.logical_date == moment)
        ).one()
        return {
            (ti.task_id, ti.map_index): (ti.state, ti.try_number)
            for ti in run.get_task_instances(session=session)
        }


def test_dags_test_uses_connections_stored_with_the_cli(
    airflow_db: str, simulator: SimulatorThread, small_fleet: Fleet, tmp_path: Path
) -> None:
    names = ["esl_stored_a", "esl_stored_b"]
    for name, port in zip(names, simulator.ports[:2], strict=True):
        _add_connection(name, port, tmp_path)
    listed = _airflow("connections", "list", "--output", "json", cwd=tmp_path)
    assert {c["conn_id"] for c in json.loads(listed.stdout)} >= set(names)

    out = tmp_path / "out"
    conf = {"servers": names, "servers_per_batch": 1, "output_root": str(out)}
    result = _airflow("dags", "test", "esl_export", "2024-05-11", "--conf", json.dumps(conf), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert PASSWORD not in output

    folder = out / "2024-05-11"
    cutoff = ANCHOR_MS + DAY_MS - 7 * DAY_MS  # midnight of the logical date, minus the lookback
    for index, name in enumerate(names):
        rows = csv_rows(folder / f"esl_id_part_{index + 1}.csv")
        assert rows[0] == list(STANDARD_COLUMNS)
        assert rows[1:] == expected_partition(small_fleet, {index: name}, cutoff)
        assert len(rows) > 50
    manifest = json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["anchor"], manifest["anchor_source"]) == ("2024-05-11T00:00:00Z", "logical_date")
    assert manifest["errors"] == []
    assert (folder / "_SUCCESS").exists()


def test_a_missing_connection_fails_its_task_at_once_saying_how_to_create_it(
    airflow_db: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    _add_connection("esl_stored_here", simulator.ports[0], tmp_path)
    out = tmp_path / "out"
    conf = {
        "servers": ["esl_stored_here", "esl_never_added"],
        "servers_per_batch": 1,
        "output_root": str(out),
    }
    result = _airflow("dags", "test", "esl_export", "2024-05-12", "--conf", json.dumps(conf), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert (
        "esl_operators.hooks.MissingConnectionError: Airflow connection 'esl_never_added' is not defined "
        "(looked up in AIRFLOW_CONN_ESL_NEVER_ADDED, the secrets backends and the metadata database); "
        "create it with: airflow connections add esl_never_added --conn-type http --conn-host HOST "
        "--conn-port PORT [--conn-login USER --conn-password PASSWORD]"
    ) in output

    from airflow.dag_processing.dagbag import DagBag

    fetch = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags["esl_export"].get_task("fetch")
    assert fetch.retries == 2  # so a try_number of 1 below means: not retried
    states = _task_states(dt.date(2024, 5, 12))
    assert states[("fetch", 1)] == ("failed", 1)
    assert states[("fetch", 0)] == ("success", 1)
    assert states[("aggregate", -1)][0] == "upstream_failed"
    assert "up_for_retry" not in output
    assert not (out / "2024-05-12" / "_SUCCESS").exists()
