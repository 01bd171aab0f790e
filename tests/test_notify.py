"""Alert mails through a real SMTP server on 127.0.0.1 (aiosmtpd, with AUTH) from real ``dag.test()`` runs.

One failed batch gives exactly one mail naming the date, the failed servers and stores with their
reasons (the batch manifest's words) and the failed task; a clean run gives none; a ``skip`` run that
published with errors gives one with the report's link. No mail holds a password (the ESL servers' or
the SMTP server's). The DAG callbacks run in-process under ``dag.test()``, as in the dag-processor.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators.exceptions import ConfigError
from esl_operators.notify import Alert, gather_alert, recipients
from esl_operators.simulator import FaultProfile, Fleet, SimulatorThread
from esl_operators.templating import render
from tests.smtp import FROM, Inbox, html_of, smtp_server
from tests.smtp import PASSWORD as SMTP_PASSWORD
from tests.support import ANCHOR, BASIC_AUTH_WARNINGS, load_dag, without_retries

pytestmark = [
    pytest.mark.timeout(300),
    *BASIC_AUTH_WARNINGS,
    # AUTH without TLS: the test server listens on loopback only.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

ESL_PASSWORD = "esl-pw-alert-5150"
BASE_URL = "http://airflow.example.test:8080"
TO = ["ops@example.com", "oncall@example.org"]
SERVERS = ["esl_al_0", "esl_al_1", "esl_al_2"]


@pytest.fixture(scope="module")
def smtp() -> Iterator[Inbox]:
    with smtp_server() as inbox:
        yield inbox


def _busy_store_profile(fleet: Fleet) -> FaultProfile:
    """Server 2 answers 503 to the first page of some stores (its store list works): with one attempt
    per request, those stores fail and the rest of the server is fetched."""
    stores = [u["user"] for u in fleet.servers[2].users if u["user"] != "default"]
    for seed in range(200):
        profile = FaultProfile(seed=seed, transient_rate=0.25, transient_kinds=("503",))
        failing = [s for s in stores if profile.transient_kind(f"/api3/{s}/esls/page/1")]
        if profile.transient_kind("/api3/users") is None and 1 <= len(failing) < len(stores):
            return profile
    raise AssertionError("no seed gives a partly failing server")


@pytest.fixture(scope="module")
def busy_sim(small_fleet: Fleet) -> Iterator[SimulatorThread]:
    with SimulatorThread(small_fleet, faults={2: _busy_store_profile(small_fleet)}) as sim:
        yield sim


@pytest.fixture
def wired(airflow_db: str, monkeypatch: pytest.MonkeyPatch, smtp: Inbox, busy_sim: SimulatorThread) -> Inbox:
    for name, esl_port in zip(SERVERS, busy_sim.ports, strict=True):
        conn = {"conn_type": "esl_working", "host": "127.0.0.1", "port": esl_port}
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{name.upper()}", json.dumps({**conn, "login": "api", "password": ESL_PASSWORD})
        )
    monkeypatch.setenv("AIRFLOW_CONN_ESL_SMTP", json.dumps(smtp.connection()))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
    smtp.mails.clear()
    return smtp


def _run(tmp_path: Path, **conf: Any) -> str:
    base = {
        "servers": SERVERS,
        "servers_per_batch": 2,
        "retry_attempts": 1,
        "output_root": str(tmp_path),
        "notify_to": ", ".join(TO),
        "notify_conn_id": "esl_smtp",
    }
    return str(without_retries(load_dag()).test(logical_date=ANCHOR, run_conf={**base, **conf}).state)


def _read(raw: bytes) -> tuple[email.message.EmailMessage, str]:
    message, text = html_of(raw)
    for secret in (ESL_PASSWORD, SMTP_PASSWORD):
        assert secret.encode() not in raw and secret not in text
    return message, text


def _assert_names(errors: list[dict[str, str]], text: str) -> None:
    for error in errors:
        store = error["store"] or "(whole server)"
        row = f"<tr><td>{html.escape(error['server'])}</td><td>{html.escape(store)}</td>"
        row += f"<td>{html.escape(error['error'])}</td></tr>"
        assert row in text


def test_one_failed_batch_gives_exactly_one_mail_with_its_failures(wired: Inbox, tmp_path: Path) -> None:
    assert _run(tmp_path) == "failed"
    batch = json.loads((tmp_path / "2024-05-10" / "_parts" / "batch-1.json").read_text(encoding="utf-8"))
    errors = batch["errors"]
    assert errors and {e["server"] for e in errors} == {"esl_al_2"} and all(e["store"] for e in errors)
    assert json.loads((tmp_path / "2024-05-10" / "_parts" / "batch-0.json").read_text())["errors"] == []

    [(rcpt, raw)] = wired.mails
    assert rcpt == TO
    message, text = _read(raw)
    assert message["Subject"] == f"esl_export 2024-05-10: run failed ({len(errors)} errors)"
    assert message["From"] == FROM
    assert message["To"] == ", ".join(TO)
    assert "esl_export 2024-05-10: the run failed" in text
    assert "Last failed task: <code>fetch[1]</code>" in text
    _assert_names(errors, text)
    assert text.count("<tr><td>") == len(errors)
    assert "report.html" not in text  # nothing was published
    assert f"{BASE_URL}/dags/esl_export/runs/manual__" in text


def test_a_clean_run_gives_no_mail(wired: Inbox, tmp_path: Path) -> None:
    assert _run(tmp_path, servers=SERVERS[:2]) == "success"
    assert json.loads((tmp_path / "2024-05-10" / "_manifest.json").read_text())["errors"] == []
    assert wired.mails == []


def test_a_skip_run_with_errors_gives_one_mail_linking_the_report(wired: Inbox, tmp_path: Path) -> None:
    assert _run(tmp_path, on_server_error="skip") == "success"
    manifest = json.loads((tmp_path / "2024-05-10" / "_manifest.json").read_text(encoding="utf-8"))
    errors = manifest["errors"]
    assert errors
    [(rcpt, raw)] = wired.mails
    assert rcpt == TO
    message, text = _read(raw)
    assert message["Subject"] == f"esl_export 2024-05-10: published with {len(errors)} errors"
    assert "esl_export 2024-05-10: published with errors" in text
    _assert_names(errors, text)
    report = f"{BASE_URL}/esl-exports/2024-05-10/report.html"
    assert f'<a href="{report}">{report}</a>' in text
    assert (tmp_path / "2024-05-10" / "report.html").exists()


# --- the pieces -----------------------------------------------------------------------------------


def test_addresses_come_from_the_param_else_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert recipients("a@example.com; b@example.com") == ["a@example.com", "b@example.com"]
    assert recipients(None) == []
    monkeypatch.setenv("AIRFLOW_VAR_ESL_NOTIFY_TO", "night@example.com, day@example.com")
    assert recipients(None) == ["night@example.com", "day@example.com"]
    monkeypatch.setenv("AIRFLOW_VAR_ESL_NOTIFY_TO", "not an address")
    with pytest.raises(ConfigError, match="Variable 'esl_notify_to' must be mail addresses"):
        recipients(None)


def test_a_batch_without_its_own_manifest_is_named(tmp_path: Path) -> None:
    parts = tmp_path / "2024-05-10" / "_parts"
    parts.mkdir(parents=True)
    error = {"server": "esl_a", "store": "S1", "error": "esl_a: store 'S1' page 1: HTTP 503"}
    (parts / "batch-0.json").write_text(json.dumps({"servers": {"esl_a": {}}, "errors": [error]}))
    (parts / "batch-2.json").write_text(json.dumps({"servers": {"esl_old": {}}, "errors": [error]}))  # stale
    params = {"servers": ["esl_a", "esl_b", "esl_c"], "servers_per_batch": 1, "output_root": str(tmp_path)}
    context = {
        "logical_date": ANCHOR,
        "run_id": "manual__2024-05-10",
        "ti": types.SimpleNamespace(task_id="fetch", map_index=2),
    }
    alert = gather_alert(context, params, failed=True)
    assert alert is not None
    assert (alert.errors, alert.silent_batches, alert.failed_task) == (
        [error],
        [(1, ["esl_b"]), (2, ["esl_c"])],
        "fetch[2]",
    )
    assert alert.subject == "esl_export 2024-05-10: run failed (1 error, 2 batch(es) without a manifest)"
    assert "<li>batch 1: esl_b</li>" in render("alert.html", alert=alert)


def test_server_text_in_a_mail_is_inert() -> None:
    hostile = {"server": "esl_<b>", "store": "{{ 7 * 7 }}<script>x()</script>", "error": 'a & b "quoted"'}
    alert = Alert(ds="2024-05-10", run_id="r", failed=False, run_url="http://x/runs/r", errors=[hostile])
    text = render("alert.html", alert=alert)
    assert "<script>" not in text and "<b>" not in text
    assert "{{ 7 * 7 }}&lt;script&gt;x()&lt;/script&gt;" in text and "49" not in text
    assert "a &amp; b &quot;quoted&quot;" in text


def test_a_run_refused_for_its_settings_says_why() -> None:
    context = {
        "logical_date": ANCHOR,
        "run_id": "manual__r",
        "ti": types.SimpleNamespace(task_id="plan_batches"),
    }
    alert = gather_alert(context, {"servers_per_batch": 0}, failed=True)
    assert alert is not None
    assert alert.notes == [
        "the run's settings were refused: param 'servers_per_batch' must be between 1 and 1000, got 0"
    ]
    assert (alert.errors, alert.silent_batches, alert.failed_task) == ([], [], "plan_batches")
    assert gather_alert(context, {"servers_per_batch": 0}, failed=False) is None  # never a publish
