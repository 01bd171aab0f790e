"""The "ESL exports" view of an ``s3://`` output root in a real Airflow UI, driven by headless Chromium.

As ``test_report_view.py``, with the runs in a bucket of a local S3 server (moto, on 127.0.0.1, as
``tests/test_s3.py`` starts it) instead of a folder: the Variable names ``s3://esl_s3@bucket/esl``, and
the connection ``esl_s3`` lives in the metadata database, where the api-server (not a task) reads it.
The browser logs in, opens Browse → ESL exports, opens the report from the bucket and checks its
charts and that its hostile text stayed text; a CSV download is the bucket's object, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from esl_operators.simulator import build_fleet, reference_ms_for
from tests.report_data import hostile_fleet, publish_run
from tests.support import DS
from tests.test_s3 import BUCKET, KEY, _client, s3_endpoint
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
from tests.ui.test_report_view import (
    ARTIFACTS,
    SERVERS,
    WAIT_MS,
    _check_charts,
    _check_inert,
    _collect_problems,
    _status,
)

pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]
__all__ = ["s3_endpoint"]  # the moto server fixture of tests/test_s3.py

PREFIX = "esl"
CONN_ID = "esl_s3"


@pytest.fixture(scope="module")
def airflow_s3(
    tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str
) -> Iterator[tuple[AirflowHome, ApiServer, Path]]:
    """Two published runs written locally, copied key by key into the bucket; an api-server on it."""
    base = tmp_path_factory.mktemp("ui-s3")
    local = base / "esl_export"  # never shown to the api-server: the reference bytes only
    fleet = hostile_fleet(
        build_fleet(
            servers=3, stores=6, esls=300, seed=7, reference_ms=reference_ms_for(dt.date(2024, 5, 10))
        )
    )
    failure = {"server": "esl_store_c", "store": "<script>alert(1)</script>", "error": "HTTP 503"}
    publish_run(local, DS, fleet, SERVERS)
    (local / DS / "_SUCCESS").write_text("", encoding="utf-8")
    publish_run(local, "2024-05-09", fleet, SERVERS, errors=[failure])
    client = _client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(
            Bucket=BUCKET, Key=f"{PREFIX}/{path.relative_to(local).as_posix()}", Body=path.read_bytes()
        )
    env = {
        "AIRFLOW_VAR_ESL_OUTPUT_ROOT": f"s3://{CONN_ID}@{BUCKET}/{PREFIX}",
        "AWS_EC2_METADATA_DISABLED": "true",  # never probe an instance-metadata address
    }
    home = AirflowHome.create(base / "home", extra_env=env)
    home.migrate()
    extra = json.dumps({"endpoint_url": s3_endpoint, "region_name": "us-east-1"})
    home.airflow(
        "connections", "add", CONN_ID, "--conn-type", "aws",
        "--conn-login", KEY, "--conn-password", KEY, "--conn-extra", extra,
    )  # fmt: skip
    server = start_api_server(home)
    try:
        yield home, server, local
    finally:
        server.stop()


def test_report_opened_from_s3(airflow_s3: tuple[AirflowHome, ApiServer, Path]) -> None:
    from playwright.sync_api import sync_playwright

    home, server, local = airflow_s3
    view = f"{server.base_url}/esl-exports/"
    assert _status(view) == 401  # the same protections as for a folder
    assert _status(f"{view}{DS}/esl_id_part_1.csv") == 401
    bearer = {"Authorization": f"Bearer {token(server.base_url, USERNAME, home.password)}"}
    assert _status(f"{view}{DS}/..%2f..%2fesl%2f{DS}%2freport.html", bearer) == 404
    assert _status(f"{view}{DS}/_parts%2fbatch-0.arrow", bearer) == 404
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

            frame = page.frame_locator("iframe")
            frame.get_by_text(f"s3://{BUCKET}/{PREFIX}").first.wait_for(timeout=WAIT_MS)
            rows = frame.locator("tbody tr")
            assert rows.count() == 2
            newest = rows.nth(0)
            assert newest.locator("td").nth(0).inner_text() == DS
            assert newest.locator("td").nth(1).inner_text() == "complete"
            assert "published with 1 error(s)" in rows.nth(1).inner_text()
            manifest = json.loads((local / DS / "_manifest.json").read_text(encoding="utf-8"))
            assert newest.locator("td").nth(2).inner_text() == f"{manifest['rows']:,}"

            download = context.request.get(f"{view}{DS}/esl_id_part_1.csv")
            assert download.status == 200
            assert download.headers["content-disposition"] == f'attachment; filename="{DS}_esl_id_part_1.csv"'
            assert download.body() == (local / DS / "esl_id_part_1.csv").read_bytes()

            newest.get_by_role("link", name="open").click(timeout=WAIT_MS)
            report = frame.locator("svg.chart")
            report.first.wait_for(timeout=WAIT_MS)
            _check_charts(report)
            _check_inert(frame.locator("body"))
            assert page.locator('img[src="x"], [onerror], [onload]').count() == 0  # Airflow's own page
            page.screenshot(path=str(ARTIFACTS / "esl-report-from-s3.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
