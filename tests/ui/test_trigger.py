"""Trigger ``esl_export`` from the Airflow UI's trigger form, as a person would, and check the CSVs.

A real api-server, scheduler and dag-processor (``esl_airflow`` in conftest.py) run the DAG against the
simulator; headless Chromium logs in, opens the DAG, clicks Trigger, changes two number fields
(spinbuttons) and submits. The run is then followed through the REST API. The filled form is saved as
``artifacts/esl-trigger-form.png``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from esl_operators.csvformat import STANDARD_COLUMNS
from tests.expected import expected_partition
from tests.support import DAY_MS, REPO, csv_rows
from tests.ui.harness import CHROMIUM, CHROMIUM_ARGS, USERNAME, browser_login
from tests.ui.stack import EslAirflow, wait_until

ARTIFACTS = REPO / "artifacts"
WAIT_MS = 30_000


def _epoch_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.services
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 65}, "max_concurrency"),
        ({"header_style": "fancy"}, "header_style"),
        ({"servers_per_batch": "two"}, "servers_per_batch"),
        ({"spreadsheet_safe": "maybe"}, "spreadsheet_safe"),
    ],
)
def test_rest_api_refuses_invalid_params_before_a_run_exists(
    esl_airflow: EslAirflow, conf: dict[str, Any], problem: str
) -> None:
    rest = esl_airflow.rest
    before = len(rest.dag_runs("esl_export"))
    status, body = rest.call("POST", "/api/v2/dags/esl_export/dagRuns", {"logical_date": None, "conf": conf})
    assert status == 400, body
    assert f"Invalid input for param {problem}" in str(body)
    assert len(rest.dag_runs("esl_export")) == before  # refused: no run was created


@pytest.mark.ui
@pytest.mark.timeout(600)
def test_trigger_form_run_publishes_the_chosen_layout(esl_airflow: EslAirflow) -> None:
    from playwright.sync_api import sync_playwright

    rest, stack = esl_airflow.rest, esl_airflow.stack
    known = {r["dag_run_id"] for r in rest.dag_runs("esl_export")}
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            browser_login(page, stack.api.base_url, USERNAME, stack.home.password)
            page.goto(f"{stack.api.base_url}/dags/esl_export", timeout=WAIT_MS)
            page.get_by_role("button", name="Trigger").first.click(timeout=WAIT_MS)
            form = page.get_by_role("dialog")
            form.get_by_text("Run Parameters").wait_for(timeout=WAIT_MS)

            # The form explains itself: titles and descriptions from the DAG's params, bounds on numbers.
            for title in ("Servers per batch", "Requests in flight per server", "CSV header style"):
                form.locator("label").filter(has_text=title).first.wait_for(timeout=WAIT_MS)
            form.get_by_text("Servers per fetch task; each batch becomes one esl_id_part_N.csv.").wait_for(
                timeout=WAIT_MS
            )
            concurrency = form.get_by_role("spinbutton", name="Requests in flight per server")
            assert concurrency.get_attribute("aria-valuemin") == "1"
            assert concurrency.get_attribute("aria-valuemax") == "64"

            per_batch = form.get_by_role("spinbutton", name="Servers per batch")
            per_batch.fill("2", timeout=WAIT_MS)
            lookback = form.get_by_role("spinbutton", name="Heartbeat lookback (days)")
            lookback.fill("3", timeout=WAIT_MS)
            per_batch.click(timeout=WAIT_MS)  # leave the field so the form takes the value
            assert (per_batch.input_value(), lookback.input_value()) == ("2", "3")
            page.screenshot(path=str(ARTIFACTS / "esl-trigger-form.png"), full_page=True)

            form.get_by_role("button", name="Trigger").last.click(timeout=WAIT_MS)
            form.wait_for(state="hidden", timeout=WAIT_MS)
        finally:
            browser.close()
    assert problems == []

    def new_run() -> dict[str, Any] | None:
        runs = [r for r in rest.dag_runs("esl_export") if r["dag_run_id"] not in known]
        return runs[0] if len(runs) == 1 else None

    run = wait_until("the run the form triggered", new_run, timeout=60, services=stack.all_services)
    assert run["run_type"] == "manual"
    assert run["conf"]["servers_per_batch"] == 2 and run["conf"]["lookback_days"] == 3
    done = stack.wait_for_runs(rest, "esl_export", [run["dag_run_id"]], timeout=300)[run["dag_run_id"]]
    states = {ti["task_id"]: ti["state"] for ti in rest.task_instances("esl_export", run["dag_run_id"])}
    assert done["state"] == "success", states

    # The heartbeat anchor is the run's logical date (the form's, which defaults to now), never the clock.
    anchor = done["logical_date"]
    ds = anchor[:10]
    cutoff = _epoch_ms(anchor) - 3 * DAY_MS
    out = esl_airflow.output_root / ds
    manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["anchor_source"] == "logical_date"
    assert manifest["params"]["servers_per_batch"] == 2 and manifest["params"]["lookback_days"] == 3
    assert sorted(p.name for p in out.glob("esl_id_part_*.csv")) == ["esl_id_part_1.csv", "esl_id_part_2.csv"]
    fleet, names = esl_airflow.fleet, esl_airflow.servers
    part1, part2 = csv_rows(out / "esl_id_part_1.csv"), csv_rows(out / "esl_id_part_2.csv")
    assert part1[0] == list(STANDARD_COLUMNS)
    assert part1[1:] == expected_partition(fleet, {0: names[0], 1: names[1]}, cutoff)
    assert part2[1:] == expected_partition(fleet, {2: names[2]}, cutoff)
    assert len(part1) > 20 and len(part2) > 10
    assert (out / "_SUCCESS").exists()
