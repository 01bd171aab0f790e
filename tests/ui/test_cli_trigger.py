"""``airflow dags trigger esl_export --logical-date D`` for a past date, run by a real scheduler.

Airflow's CLI sets such a run's ``data_interval_end`` to the trigger time, not to D. The export must
still anchor on D, so the run keeps exactly the labels of D's window, as a scheduled run or a backfill
of D does, and its manifest says so (``anchor_source``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from esl_operators.simulator import reference_ms_for
from tests.expected import expected_partition
from tests.support import DAY_MS, csv_rows
from tests.ui.stack import EslAirflow, wait_until


@pytest.mark.services
@pytest.mark.timeout(600)
def test_cli_trigger_for_a_past_date_keeps_exactly_that_dates_window(esl_airflow: EslAirflow) -> None:
    rest, stack, fleet = esl_airflow.rest, esl_airflow.stack, esl_airflow.fleet
    day = esl_airflow.reference_day - dt.timedelta(days=5)  # the backfill test uses 1..3 days back
    known = {r["dag_run_id"] for r in rest.dag_runs("esl_export")}

    stack.home.airflow("dags", "trigger", "esl_export", "--logical-date", day.isoformat())

    def new_run() -> dict[str, Any] | None:
        runs = [r for r in rest.dag_runs("esl_export") if r["dag_run_id"] not in known]
        return runs[0] if len(runs) == 1 else None

    run = wait_until("the CLI-triggered run", new_run, timeout=60, services=stack.all_services)
    assert (run["run_type"], run["logical_date"][:10]) == ("manual", day.isoformat())
    # What made the old anchor wrong: the interval ends at the trigger time, days after D.
    assert run["data_interval_end"][:10] > day.isoformat()
    done = stack.wait_for_runs(rest, "esl_export", [run["dag_run_id"]], timeout=540)[run["dag_run_id"]]
    states = {ti["task_id"]: ti["state"] for ti in rest.task_instances("esl_export", run["dag_run_id"])}
    assert done["state"] == "success", states

    out = esl_airflow.output_root / day.isoformat()
    manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["anchor"] == f"{day.isoformat()}T00:00:00Z"
    assert manifest["anchor_source"] == "logical_date"
    assert manifest["heartbeat_cutoff"] == f"{(day - dt.timedelta(days=7)).isoformat()}T00:00:00Z"
    cutoff = reference_ms_for(day) - 7 * DAY_MS
    triggered_cutoff = (
        int(dt.datetime.fromisoformat(run["data_interval_end"].replace("Z", "+00:00")).timestamp() * 1000)
        - 7 * DAY_MS
    )
    for index, name in enumerate(esl_airflow.servers):  # servers_per_batch 1: one partition each
        rows = csv_rows(out / f"esl_id_part_{index + 1}.csv")[1:]
        assert rows == expected_partition(fleet, {index: name}, cutoff)
        # The fleet makes the difference visible: anchoring on the trigger time would keep fewer labels.
        assert len(expected_partition(fleet, {index: name}, triggered_cutoff)) < len(rows)
    assert (out / "_SUCCESS").exists()
