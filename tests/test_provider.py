"""The package as an Airflow provider: the ``esl_working`` connection type, its form, its Test answer, and
runs over ``esl_working`` connections next to ``http`` ones (``dag.test()`` and ``airflow dags test``).

The Test button through a real api-server's REST API: tests/ui/test_connection_test.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esl_operators import __version__
from esl_operators.csvformat import STANDARD_COLUMNS
from esl_operators.exceptions import ConfigError
from esl_operators.hooks import EslWorkingHook, probe, resolve_targets
from esl_operators.provider import CONN_FIELDS, CONN_TYPE, UI_FIELD_BEHAVIOUR, get_provider_info
from esl_operators.simulator import DEFAULT_STORE, FaultProfile, Fleet, SimulatorThread
from tests.expected import expected_partition
from tests.support import (
    ANCHOR,
    ANCHOR_MS,
    BASIC_AUTH_WARNINGS,
    CUTOFF_MS,
    DAY_MS,
    csv_rows,
    load_dag,
    without_retries,
)

pytestmark = [pytest.mark.timeout(300), *BASIC_AUTH_WARNINGS]

LOGIN, PASSWORD = "api", "pw-Esl-4711-secret"


def _env_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn_type: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": conn_type, **fields}))


def _stores(fleet: Fleet, index: int) -> int:
    return len({u["user"] for u in fleet.servers[index].users} - {DEFAULT_STORE})


@pytest.fixture(scope="module")
def guarded(small_fleet: Fleet) -> Any:
    """The small fleet behind basic auth: a request without LOGIN/PASSWORD answers 401."""
    with SimulatorThread(small_fleet, faults=FaultProfile(credentials=(LOGIN, PASSWORD))) as sim:
        yield sim


# --- registration ----------------------------------------------------------------------------------


def test_provider_info_passes_airflows_schema_and_names_the_hook() -> None:
    import importlib.resources

    import jsonschema

    schema = json.loads((importlib.resources.files("airflow") / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "esl-export"
    [conn] = info["connection-types"]
    assert (conn["connection-type"], conn["hook-name"]) == ("esl_working", "Hanshow ESL-Working")
    assert conn["hook-class-name"] == "esl_operators.hooks.EslWorkingHook"
    info["connection-types"][0]["conn-fields"].clear()  # the manager adds keys: each call is a fresh copy
    assert get_provider_info()["connection-types"][0]["conn-fields"] == CONN_FIELDS


def test_the_providers_manager_offers_the_connection_type_with_its_form() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()  # what the api-server asks for the connection form
    assert manager.providers["esl-export"].version == __version__
    hook = ProvidersManagerTaskRuntime().hooks[CONN_TYPE]  # what the Task SDK's Connection.get_hook() asks
    assert hook is not None
    assert (hook.hook_class_name, hook.connection_id_attribute_name) == (
        "esl_operators.hooks.EslWorkingHook",
        "esl_conn_id",
    )
    behaviour = manager.field_behaviours[CONN_TYPE]
    assert behaviour["hidden_fields"] == []
    assert behaviour["relabeling"] == {"schema": "Scheme"}
    assert behaviour["placeholders"] == UI_FIELD_BEHAVIOUR["placeholders"]
    widgets = {
        k: v for k, v in manager.connection_form_widgets.items() if k.startswith("extra__esl_working__")
    }
    assert sorted(w.field_name for w in widgets.values()) == [
        "ca_bundle",
        "connect_timeout",
        "timeout",
        "verify",
    ]
    verify = widgets["extra__esl_working__verify"].field
    assert verify["schema"] == {
        "type": ["boolean", "null"],
        "default": True,
        "title": "Verify TLS certificate",
    }
    # Older Airflow 3 releases ask the hook; it answers with the same data.
    assert EslWorkingHook.get_ui_field_behaviour() == {
        "hidden_fields": [],
        "relabeling": {"schema": "Scheme"},
        "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
    }


def test_airflow_providers_list_shows_the_package(tmp_path: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(listed.stdout)}
    assert providers["esl-export"]["version"] == __version__
    assert "ESL-Working" in providers["esl-export"]["description"]


# --- esl_working connections as targets ------------------------------------------------------------


def test_an_esl_working_connection_reads_like_an_http_one(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {
        "host": "esl.example.com",
        "schema": "https",
        "port": 9443,
        "login": LOGIN,
        "password": PASSWORD,
    }
    extra = {"timeout": 12, "connect_timeout": 3, "verify": True, "X-Tenant": "eu"}
    _env_connection(monkeypatch, "esl_new", CONN_TYPE, **fields, extra=extra)
    _env_connection(monkeypatch, "esl_old", "http", **fields, extra=extra)
    new, old = resolve_targets(["esl_new", "esl_old"])
    assert EslWorkingHook("esl_new").get_conn() == new
    for target in (new, old):
        assert target.base_url == "https://esl.example.com:9443"
        assert (target.timeout_s, target.connect_timeout_s, target.verify_ssl) == (12.0, 3.0, True)
        assert dict(target.headers) == {"X-Tenant": "eu"}
        assert target.auth is not None and target.auth.password == PASSWORD
        assert PASSWORD not in repr(target)


def test_empty_form_fields_are_unset_and_the_ca_bundle_field_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the connection form saves when its fields are left empty: nulls, never headers saying "None".
    blank = {"timeout": None, "connect_timeout": None, "verify": None, "ca_bundle": None}
    _env_connection(monkeypatch, "esl_blank", CONN_TYPE, host="10.1.2.3", port=9000, extra=blank)
    _env_connection(
        monkeypatch,
        "esl_ca",
        CONN_TYPE,
        host="10.1.2.3",
        schema="https",
        extra={"ca_bundle": "/etc/esl/ca.pem"},
    )
    blank_target, ca_target = resolve_targets(["esl_blank", "esl_ca"])
    assert (dict(blank_target.headers), blank_target.timeout_s, blank_target.verify_ssl) == ({}, None, True)
    assert (ca_target.verify_ssl, ca_target.ca_bundle) == (True, "/etc/esl/ca.pem")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"verify": False, "ca_bundle": "/etc/esl/ca.pem"},
            "connection 'esl_bad': extra 'verify' is false but 'ca_bundle' names a CA bundle; "
            "keep one of them",
        ),
        (
            {"verify": "/a.pem", "ca_bundle": "/b.pem"},
            "connection 'esl_bad': extras 'verify' and 'ca_bundle' name different CA bundles",
        ),
        ({"ca_bundle": 7}, "connection 'esl_bad': extra 'ca_bundle' must be the path of a PEM file"),
        ({"timeout": "soon"}, "connection 'esl_bad': extra 'timeout' must be a number of seconds"),
    ],
)
def test_contradicting_tls_extras_are_refused(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], message: str
) -> None:
    _env_connection(monkeypatch, "esl_bad", CONN_TYPE, host="10.1.2.3", schema="https", extra=extra)
    with pytest.raises(ConfigError) as caught:
        resolve_targets(["esl_bad"])
    assert str(caught.value) == message
    ok, answer = EslWorkingHook("esl_bad").test_connection()
    assert (ok, answer) == (False, message)


# --- the Test answer ---------------------------------------------------------------------------------


def test_test_connection_lists_the_stores(
    monkeypatch: pytest.MonkeyPatch, guarded: SimulatorThread, small_fleet: Fleet
) -> None:
    port = guarded.ports[1]
    _env_connection(
        monkeypatch, "esl_t", CONN_TYPE, host="127.0.0.1", port=port, login=LOGIN, password=PASSWORD
    )
    assert _stores(small_fleet, 1) == 6
    assert EslWorkingHook("esl_t").test_connection() == (True, "OK: 6 stores (default excluded), API v3")
    assert guarded.stats[1].users >= 1


def test_test_connection_answers_a_wrong_password_and_a_dead_port_without_the_password(
    monkeypatch: pytest.MonkeyPatch, guarded: SimulatorThread, refused_port: int
) -> None:
    port = guarded.ports[0]
    wrong = "not-" + PASSWORD
    _env_connection(monkeypatch, "esl_w", CONN_TYPE, host="127.0.0.1", port=port, login=LOGIN, password=wrong)
    _env_connection(
        monkeypatch, "esl_d", CONN_TYPE, host="127.0.0.1", port=refused_port, login=LOGIN, password=PASSWORD
    )
    ok, answer = EslWorkingHook("esl_w").test_connection()
    assert (ok, answer) == (
        False,
        f"GET http://127.0.0.1:{port}/api3/users: HTTP 401: the server refused the login and password",
    )
    ok, answer = EslWorkingHook("esl_d").test_connection()
    assert ok is False
    assert answer.startswith(f"GET http://127.0.0.1:{refused_port}/api3/users: request failed (")
    assert f"Cannot connect to host 127.0.0.1:{refused_port}" in answer
    assert answer.endswith("(gave up after 2 attempts)")
    for text in (answer, str(EslWorkingHook("esl_w").test_connection())):
        assert PASSWORD not in text and wrong not in text


def test_a_servers_own_error_envelope_is_the_answer(small_fleet: Fleet) -> None:
    from esl_operators.client import ServerTarget, TransportSettings
    from esl_operators.retry import RetryPolicy

    # The store listing answered with HTTP 200 and a non-zero error code: the server's message is shown.
    busy = FaultProfile(transient_rate=1.0, transient_kinds=("envelope",))
    once = TransportSettings(retry=RetryPolicy(attempts=1))
    with SimulatorThread(small_fleet, faults=busy) as sim:
        url = f"http://{LOGIN}:{PASSWORD}@127.0.0.1:{sim.ports[2]}"
        answer = probe(ServerTarget(name="esl_e", base_url=url), once)
        retried = probe(ServerTarget(name="esl_e", base_url=url))  # the Test button retries once
    assert answer == (
        False,
        f"GET http://127.0.0.1:{sim.ports[2]}/api3/users: server error error_code=4: temporarily busy "
        "(gave up after 1 attempts)",
    )
    assert retried == (True, "OK: 6 stores (default excluded), API v3")  # first attempts fail only


# --- both connection types, end to end -------------------------------------------------------------


def test_dag_run_over_esl_working_and_http_connections(
    airflow_db: str,
    guarded: SimulatorThread,
    small_fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kinds = {"esl_new_0": CONN_TYPE, "esl_old_1": "http", "esl_new_2": CONN_TYPE}
    for (name, kind), port in zip(kinds.items(), guarded.ports, strict=True):
        auth = {"login": LOGIN, "password": PASSWORD}
        _env_connection(monkeypatch, name, kind, host="127.0.0.1", port=port, **auth, extra={"timeout": 20})
    names = list(kinds)
    refused_before = [s.injected["unauthorized"] for s in guarded.stats]
    run = without_retries(load_dag()).test(
        logical_date=ANCHOR, run_conf={"servers": names, "output_root": str(tmp_path)}
    )
    assert run.state == "success"
    for index, name in enumerate(names):
        rows = csv_rows(tmp_path / "2024-05-10" / f"esl_id_part_{index + 1}.csv")
        assert rows[0] == list(STANDARD_COLUMNS)
        assert rows[1:] == expected_partition(small_fleet, {index: name}, CUTOFF_MS)
        assert len(rows) > 50
    # Every request carried the login (the server refuses any that does not).
    assert [s.injected["unauthorized"] for s in guarded.stats] == refused_before


def test_airflow_dags_test_with_stored_esl_working_connections(
    airflow_db: str, guarded: SimulatorThread, small_fleet: Fleet, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}

    def airflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path, env=env,
        )  # fmt: skip

    added = airflow(
        "connections", "add", "esl_stored_working", "--conn-type", CONN_TYPE, "--conn-host", "127.0.0.1",
        "--conn-port", str(guarded.ports[2]), "--conn-login", LOGIN, "--conn-password", PASSWORD,
        "--conn-extra", json.dumps({"connect_timeout": 5}),
    )  # fmt: skip
    assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-2000:]
    conf = {"servers": ["esl_stored_working"], "output_root": str(tmp_path / "out")}
    result = airflow("dags", "test", "esl_export", "2024-05-11", "--conf", json.dumps(conf))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert PASSWORD not in output
    rows = csv_rows(tmp_path / "out" / "2024-05-11" / "esl_id_part_1.csv")
    cutoff = ANCHOR_MS + DAY_MS - 7 * DAY_MS
    assert rows[1:] == expected_partition(small_fleet, {2: "esl_stored_working"}, cutoff)
    assert len(rows) > 50
