"""The README's "Pointing it at real servers" block, run literally as a new user runs it (make test-readme).

A fresh virtualenv, a fresh ``HOME`` (so Airflow's home is the default ``~/airflow``, new), a clean copy
of this checkout as the working directory, and the block from README.md with only the connection's host
and port replaced by a simulated server's. Then: the CSV ``airflow dags test`` wrote is checked against
the simulator's data, and a real api-server, started from that virtualenv, must serve the "ESL exports"
view at ``/esl-exports/`` to the ``admin`` user whose password the README says where to read. If the
README drifts from what works, this fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from esl_operators.csvformat import STANDARD_COLUMNS
from esl_operators.simulator import SimulatorThread, build_fleet, reference_ms_for
from tests.expected import expected_partition
from tests.support import DAY_MS, REPO, copy_checkout, csv_rows, free_port
from tests.ui.harness import Service, token, wait_for_http

pytestmark = [pytest.mark.readme, pytest.mark.timeout(1200)]

SECTION = "## Pointing it at real servers"
HOST, PORT = "--conn-host 10.1.2.3", "--conn-port 9000"
CONNECTION = "esl_sh_001"


def readme_block() -> str:
    """The first ```bash block of the README's section, exactly as written."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    match = re.search(r"^```bash\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert match, f"no ```bash block in README section {SECTION!r}"
    return match.group(1)


def _user_env(home: Path, venv: Path) -> dict[str, str]:
    """This machine's environment as a new user's shell: no Airflow settings, the new venv first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "_AIRFLOW", "ESL_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update({"HOME": str(home), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"})
    return env


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")


def _rest(base: str, path: str, jwt: str) -> Any:
    status, body = _get(f"{base}{path}", {"Authorization": f"Bearer {jwt}", "Accept": "application/json"})
    assert status == 200, f"GET {path}: HTTP {status} {body[:500]}"
    return json.loads(body)


def test_the_readme_block_gives_a_dag_a_dags_test_run_and_the_view(tmp_path: Path) -> None:
    block = readme_block()
    assert block.count(HOST) == 1 and block.count(PORT) == 1, block
    today = dt.datetime.now(dt.UTC).date()
    fleet = build_fleet(servers=1, stores=4, esls=240, seed=9, reference_ms=reference_ms_for(today))
    home, venv = tmp_path / "home", tmp_path / "venv"
    home.mkdir()
    checkout = copy_checkout(tmp_path / "esl-export")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = _user_env(home, venv)

    with SimulatorThread(fleet) as sim:
        script = block.replace(HOST, "--conn-host 127.0.0.1").replace(PORT, f"--conn-port {sim.ports[0]}")
        log = tmp_path / "readme-block.log"
        started = time.monotonic()
        with log.open("wb") as out:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=checkout,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        elapsed = time.monotonic() - started
        output = log.read_text(encoding="utf-8", errors="replace")
        assert result.returncode == 0, output[-6000:]
    print(f"README block: {elapsed:.0f} s (pip install included)")

    airflow_home = home / "airflow"
    dag_file = airflow_home / "dags" / "esl_export.py"
    assert f"wrote {dag_file} (the esl_export DAG of esl-export " in output
    assert dag_file.read_bytes() == (REPO / "dags" / "esl_export.py").read_bytes()

    # `airflow dags test` published exactly the labels of today's window.
    folder = home / "esl_export" / today.isoformat()
    rows = csv_rows(folder / "esl_id_part_1.csv")
    assert rows[0] == list(STANDARD_COLUMNS)
    assert rows[1:] == expected_partition(fleet, {0: CONNECTION}, reference_ms_for(today) - 7 * DAY_MS)
    assert len(rows) > 50
    manifest = json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["anchor_source"], manifest["errors"]) == ("logical_date", [])
    assert (folder / "_SUCCESS").exists()

    # The view, through a real api-server of that virtualenv and Airflow home.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api_log = tmp_path / "api-server.log"
    handle = api_log.open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "airflow"), "api-server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=home,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group: stopped with its workers by our PID
    )
    server = Service(name="api-server", process=process, log=api_log, _handle=handle)
    try:
        wait_for_http(f"{base}/api/v2/monitor/health", server, timeout=180)
        # Without a login our app refuses; Airflow's own page would answer 200 here.
        assert _get(f"{base}/esl-exports/")[0] == 401
        # The README's way to the generated password of the default user.
        passwords = json.loads(
            (airflow_home / "simple_auth_manager_passwords.json.generated").read_text(encoding="utf-8")
        )
        jwt = token(base, "admin", passwords["admin"])
        status, page = _get(f"{base}/esl-exports/", {"Authorization": f"Bearer {jwt}", "Accept": "text/html"})
        assert status == 200, page[:500]
        assert "<title>ESL exports</title>" in page and "<title>Airflow</title>" not in page
        assert f"<b>{today.isoformat()}</b>" in page

        # A new Airflow home loads Airflow's example plugins too; ours is there exactly once.
        plugins = _rest(base, "/api/v2/plugins", jwt)["plugins"]
        [ours] = [p for p in plugins if p["name"] == "esl_exports"]
        assert "EntryPoint(name='esl_exports'" in ours["source"]
        [view] = ours["external_views"]
        assert (view["name"], view["category"], view["href"]) == ("ESL exports", "browse", "esl-exports/")
        errors = _rest(base, "/api/v2/plugins/importErrors", jwt)["import_errors"]
        assert [e for e in errors if "esl" in json.dumps(e)] == []
        assert _rest(base, "/api/v2/dags/esl_export", jwt)["is_paused"] is False
        [run] = _rest(base, "/api/v2/dags/esl_export/dagRuns", jwt)["dag_runs"]
        run_id = urllib.parse.quote(run["dag_run_id"], safe="")
        instances = _rest(base, f"/api/v2/dags/esl_export/dagRuns/{run_id}/taskInstances", jwt)
        fetches = [ti for ti in instances["task_instances"] if ti["task_id"] == "fetch"]
        assert [(ti["state"], ti["pool"]) for ti in fetches] == [("success", "default_pool")]
    finally:
        server.stop()
