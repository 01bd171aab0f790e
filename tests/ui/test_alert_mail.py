"""The alert mail from a real dag-processor: where Airflow runs DAG callbacks outside ``dag.test()``.

A run triggered through the REST API with a connection id nobody defined fails its fetch task at once;
the scheduler marks the run failed and the dag-processor runs the DAG's failure callback, which mails
through a real SMTP server on 127.0.0.1 (connection stored through the REST API) exactly once, naming
the date, the batch that left no manifest and the failed task, with a link to the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.smtp import FROM, Inbox, html_of, smtp_server
from tests.smtp import PASSWORD as SMTP_PASSWORD
from tests.ui.stack import EslAirflow, wait_until

pytestmark = [
    pytest.mark.services,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

DAY = "2023-01-17"  # a date no other test of the shared stack writes


@pytest.fixture
def smtp() -> Iterator[Inbox]:
    with smtp_server() as inbox:
        yield inbox


def test_a_failed_run_mails_once_from_the_dag_processor(esl_airflow: EslAirflow, smtp: Inbox) -> None:
    rest, stack = esl_airflow.rest, esl_airflow.stack
    conn = smtp.connection()
    stored = {
        "connection_id": "esl_alert_smtp",
        "conn_type": "smtp",
        "host": conn["host"],
        "port": conn["port"],
        "login": conn["login"],
        "password": conn["password"],
        "extra": json.dumps(conn["extra"]),
    }
    status, body = rest.call("POST", "/api/v2/connections", stored)
    assert status == 201, body
    conf = {
        "servers": ["esl_alert_missing"],
        "notify_to": "ops@example.com",
        "notify_conn_id": "esl_alert_smtp",
    }
    status, run = rest.call(
        "POST", "/api/v2/dags/esl_export/dagRuns", {"logical_date": f"{DAY}T00:00:00Z", "conf": conf}
    )
    assert status == 200, run
    run_id = run["dag_run_id"]
    done = stack.wait_for_runs(rest, "esl_export", [run_id], timeout=300)[run_id]
    assert done["state"] == "failed"

    wait_until("the alert mail", lambda: smtp.mails, timeout=180, services=stack.all_services)
    [(rcpt, raw)] = smtp.mails
    assert rcpt == ["ops@example.com"]
    message, text = html_of(raw)
    assert message["Subject"] == f"esl_export {DAY}: run failed (0 errors, 1 batch(es) without a manifest)"
    assert message["From"] == FROM
    assert "<li>batch 0: esl_alert_missing</li>" in text
    assert "Last failed task: <code>fetch[0]</code>" in text
    assert f"{rest.base_url}/dags/esl_export/runs/" in text
    assert "report.html" not in text
    assert SMTP_PASSWORD.encode() not in raw
