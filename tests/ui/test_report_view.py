"""The "ESL exports" view inside a real Airflow UI, driven by headless Chromium.

One api-server (SQLite home, simple auth manager, this repo's plugins folder) serves an output root
holding two published runs whose store codes and descriptions are hostile markup (``HOSTILE``); the
browser logs in through the real login form, opens Browse → ESL exports, follows the link to the
report and checks that its charts rendered, that no dialog ever opened and that no injected element
exists: the hostile text is shown as text. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators.simulator import build_fleet, reference_ms_for
from tests.report_data import HOSTILE, hostile_fleet, publish_run
from tests.support import DS, REPO
from tests.ui.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    USERNAME,
    AirflowHome,
    ApiServer,
    browser_login,
    start_api_server,
    token,
)

pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]

SERVERS = ["esl_store_a", "esl_store_b", "esl_store_c"]
ARTIFACTS = REPO / "artifacts"
WAIT_MS = 30_000
CHARTS = 8  # battery x2, frequency x2, heartbeat x2, chips, screens
# What hostile text would have created had it been taken as markup.
INJECTED = "script, img, iframe, object, embed, [onerror], [onload], svg svg"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowHome, ApiServer]]:
    base = tmp_path_factory.mktemp("ui")
    root = base / "esl_export"
    fleet = hostile_fleet(
        build_fleet(
            servers=3, stores=6, esls=300, seed=7, reference_ms=reference_ms_for(dt.date(2024, 5, 10))
        )
    )
    failure = {
        "server": "esl_store_c",
        "store": "<script>alert(1)</script>",
        "error": "HTTP 503 from /api3/users",
    }
    publish_run(root, DS, fleet, SERVERS, skipped_ids=[{"esl_id": "51-00-00-01", "reason": "detail 404"}])
    (root / DS / "_SUCCESS").write_text("", encoding="utf-8")
    publish_run(root, "2024-05-09", fleet, SERVERS, errors=[failure])
    home = AirflowHome.create(base / "home", extra_env={"AIRFLOW_VAR_ESL_OUTPUT_ROOT": str(root)})
    home.migrate()
    server = start_api_server(home)
    try:
        yield home, server
    finally:
        server.stop()


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_real_server_refuses_anonymous_and_accepts_a_login_token(
    airflow: tuple[AirflowHome, ApiServer],
) -> None:
    home, server = airflow
    view = f"{server.base_url}/esl-exports/"
    assert _status(view) == 401
    assert _status(f"{view}{DS}/esl_id_part_1.csv") == 401
    assert _status(view, {"Authorization": "Bearer not-a-jwt"}) == 403
    assert _status(view, {"Cookie": "_token=not-a-jwt"}) in {401, 403}
    jwt = token(server.base_url, USERNAME, home.password)
    assert _status(view, {"Authorization": f"Bearer {jwt}"}) == 200
    assert _status(f"{view}{DS}/esl_id_part_1.csv", {"Authorization": f"Bearer {jwt}"}) == 200
    assert _status(f"{view}{DS}/..%2f..%2fhome", {"Authorization": f"Bearer {jwt}"}) == 404


def test_view_inside_airflow_and_report_charts(airflow: tuple[AirflowHome, ApiServer]) -> None:
    from playwright.sync_api import sync_playwright

    home, server = airflow
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            _collect_problems(page, problems)

            browser_login(page, server.base_url, USERNAME, home.password)
            page.get_by_role("button", name="Browse").click(timeout=WAIT_MS)
            page.get_by_role("menuitem", name="ESL exports").click(timeout=WAIT_MS)

            view = page.frame_locator("iframe")
            rows = view.locator("tbody tr")
            rows.first.wait_for(timeout=WAIT_MS)
            assert rows.count() == 2
            newest = rows.nth(0)
            assert newest.locator("td").nth(0).inner_text() == DS
            assert newest.locator("td").nth(1).inner_text() == "complete"
            assert "published with 1 error(s)" in rows.nth(1).inner_text()
            manifest = json.loads((_root(home) / DS / "_manifest.json").read_text(encoding="utf-8"))
            assert newest.locator("td").nth(2).inner_text() == f"{manifest['rows']:,}"
            page.screenshot(path=str(ARTIFACTS / "esl-exports-view.png"), full_page=True)

            download = context.request.get(f"{server.base_url}/esl-exports/{DS}/esl_id_part_1.csv")
            assert download.status == 200
            assert "attachment" in download.headers["content-disposition"]
            assert download.text().startswith("esl_id,store,server,")

            newest.get_by_role("link", name="open").click(timeout=WAIT_MS)
            report = view.locator("svg.chart")
            report.first.wait_for(timeout=WAIT_MS)
            _check_charts(report)
            _check_inert(view.locator("body"))
            assert page.locator('img[src="x"], [onerror], [onload]').count() == 0  # Airflow's own page
            page.screenshot(path=str(ARTIFACTS / "esl-report-in-airflow.png"), full_page=True)

            # The report on its own, full length, as a person opening it in a new tab sees it.
            alone = context.new_page()
            _collect_problems(alone, problems)
            alone.goto(f"{server.base_url}/esl-exports/2024-05-09/report.html", timeout=WAIT_MS)
            _check_charts(alone.locator("svg.chart"))
            attention = alone.locator("#attention")
            assert "Needs attention" in attention.inner_text()
            assert "<script>alert(1)</script>" in attention.inner_text()  # shown as text, never run
            _check_inert(alone.locator("body"))
            alone.screenshot(path=str(ARTIFACTS / "esl-report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []


def _root(home: AirflowHome) -> Path:
    return Path(home.env["AIRFLOW_VAR_ESL_OUTPUT_ROOT"])


def _collect_problems(page: Any, problems: list[str]) -> None:
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: _refuse(d, problems))


def _refuse(dialog: Any, problems: list[str]) -> None:
    problems.append(f"dialog opened: {dialog.message}")
    dialog.dismiss()  # a listened-to dialog is not dismissed by Playwright: the page would hang


def _check_inert(body: Any) -> None:
    """The report's hostile store codes and descriptions are on the page as text, and made nothing."""
    assert body.locator(INJECTED).count() == 0
    stores = body.locator("#battery table").inner_text()
    silent = body.locator("#heartbeat table").inner_text()
    assert sum(text in stores for text in HOSTILE) >= 2, stores
    assert sum(text in silent for text in HOSTILE) >= 2, silent  # descriptions and store codes
    # The charts' tick labels are text nodes of the SVG, not elements of their own.
    ticks = body.locator("svg.chart text").all_text_contents()
    assert any(text.startswith("</svg>") for text in ticks)


def _check_charts(charts: Any) -> None:
    """Every chart drew its bars and axes with a real size (not just an empty <svg>)."""
    assert charts.count() == CHARTS
    for index in range(CHARTS):
        chart = charts.nth(index)
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 150, box
        assert chart.locator("path").count() > 5
        assert chart.locator("text").count() > 5
