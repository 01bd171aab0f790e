"""The connection form's **Test** button for ``esl_working`` connections, through a real api-server.

``POST /api/v2/connections/test`` (what the UI's button calls; ``AIRFLOW__CORE__TEST_CONNECTION=Enabled``)
runs ``EslWorkingHook.test_connection()`` inside the api-server against a simulated server that requires
basic auth: a good login lists the stores, a wrong password and a dead port answer why, and no answer
ever holds the password. The form the UI draws comes from ``/ui/connections/hook_meta``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from esl_operators.provider import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from esl_operators.simulator import DEFAULT_STORE, FaultProfile, SimulatorThread, build_fleet
from tests.support import ANCHOR_MS, free_port
from tests.ui.harness import AirflowHome, start_api_server
from tests.ui.stack import Rest, Stack

pytestmark = [pytest.mark.services, pytest.mark.timeout(400)]

LOGIN, PASSWORD = "api", "pw-Test-Button-0815"


@dataclass
class Button:
    rest: Rest
    sim: SimulatorThread
    stores: int


@pytest.fixture(scope="module")
def button(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Button]:
    fleet = build_fleet(servers=1, stores=5, esls=40, seed=3, reference_ms=ANCHOR_MS)
    with SimulatorThread(fleet, faults=FaultProfile(credentials=(LOGIN, PASSWORD))) as sim:
        base = tmp_path_factory.mktemp("conn-test")
        home = AirflowHome.create(base / "home", extra_env={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"})
        home.migrate()
        stack = Stack(home=home, api=start_api_server(home))
        try:
            stores = len({u["user"] for u in fleet.servers[0].users} - {DEFAULT_STORE})
            yield Button(stack.rest(), sim, stores)
        finally:
            stack.stop()


def _test(rest: Rest, **fields: Any) -> tuple[bool, str, str]:
    body = {"connection_id": "esl_store_042", "conn_type": "esl_working", "host": "127.0.0.1", **fields}
    status, answer = rest.call("POST", "/api/v2/connections/test", body, timeout=90)
    assert status == 200, answer
    return answer["status"], answer["message"], json.dumps(answer)


def test_a_good_server_lists_its_stores(button: Button) -> None:
    port = button.sim.ports[0]
    ok, message, raw = _test(button.rest, port=port, login=LOGIN, password=PASSWORD)
    assert (ok, message) == (True, f"OK: {button.stores} stores (default excluded), API v3")
    assert button.stores == 5
    assert PASSWORD not in raw


def test_a_wrong_password_is_named_without_the_password(button: Button) -> None:
    port = button.sim.ports[0]
    wrong = "x" + PASSWORD
    ok, message, raw = _test(button.rest, port=port, login=LOGIN, password=wrong)
    assert (ok, message) == (
        False,
        f"GET http://127.0.0.1:{port}/api3/users: HTTP 401: the server refused the login and password",
    )
    assert wrong not in raw and PASSWORD not in raw


def test_an_unreachable_port_says_so(button: Button, tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        port = blocker.getsockname()[1]
        ok, message, raw = _test(button.rest, port=port, login=LOGIN, password=PASSWORD)
    assert ok is False
    assert message.startswith(
        f"GET http://127.0.0.1:{port}/api3/users: request failed (ClientConnectorError: "
    )
    assert f"Cannot connect to host 127.0.0.1:{port}" in message
    assert message.endswith("(gave up after 2 attempts)")
    assert PASSWORD not in raw


def test_a_stored_connection_is_button_with_its_stored_password(button: Button) -> None:
    """The edit form's Test sends no password: the api-server merges the stored one (same host/port)."""
    port = button.sim.ports[0]
    stored = {
        "connection_id": "esl_saved",
        "conn_type": "esl_working",
        "host": "127.0.0.1",
        "port": port,
        "login": LOGIN,
        "password": PASSWORD,
        "extra": json.dumps({"timeout": 15, "verify": True, "ca_bundle": None}),
    }
    status, body = button.rest.call("POST", "/api/v2/connections", stored)
    assert status == 201, body
    ok, message, raw = _test(button.rest, connection_id="esl_saved", port=port, login=LOGIN)
    assert (ok, message) == (True, f"OK: {button.stores} stores (default excluded), API v3")
    assert PASSWORD not in raw
    port_elsewhere = free_port()
    status, refused = button.rest.call(
        "POST",
        "/api/v2/connections/test",
        {
            "connection_id": "esl_saved",
            "conn_type": "esl_working",
            "host": "127.0.0.1",
            "port": port_elsewhere,
        },
    )
    assert status == 400, refused  # Airflow's own rule: stored credentials only for the stored endpoint


def test_the_form_shows_the_fields_that_apply(button: Button) -> None:
    [meta] = [
        m for m in button.rest.get("/ui/connections/hook_meta") if m["connection_type"] == "esl_working"
    ]
    assert meta["hook_name"] == "Hanshow ESL-Working"
    shown = {name: "url_schema" if name == "schema" else name for name in UI_FIELD_BEHAVIOUR["placeholders"]}
    placeholders = {shown[k]: v for k, v in UI_FIELD_BEHAVIOUR["placeholders"].items() if k != "extra"}
    assert meta["standard_fields"] == {
        "description": None,
        **{
            name: {"hidden": False, "title": "Scheme" if name == "url_schema" else None, "placeholder": text}
            for name, text in placeholders.items()
        },
    }
    assert sorted(meta["extra_fields"]) == sorted(CONN_FIELDS)
    timeout = meta["extra_fields"]["timeout"]
    assert timeout["schema"]["title"] == "Request timeout (s)"
    assert timeout["description"] == CONN_FIELDS["timeout"]["description"]
