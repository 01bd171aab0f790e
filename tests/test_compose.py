"""docker-compose.yaml and Dockerfile, checked statically (no Docker engine runs here).

The file is validated against the Compose specification with ``check-jsonschema`` (its bundled copy of
the schema, no network), then read as YAML to check what the deployment relies on: services, volumes,
the Celery/PostgreSQL/Redis settings, the pool created by airflow-init, and the esl Variables and
connections. Airflow settings are checked against Airflow's own list of options, so a typo fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from esl_operators.config import OUTPUT_ROOT_VARIABLE, POOL_ENV, SERVERS_VARIABLE
from tests.support import REPO

COMPOSE = REPO / "docker-compose.yaml"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is missing (requirements-test.txt)"
    return subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_the_validator_does_reject_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yaml"
    text = COMPOSE.read_text(encoding="utf-8").replace("restart: always", "restart: [always]", 1)
    broken.write_text(text, encoding="utf-8")
    result = _check_jsonschema(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "restart" in result.stdout + result.stderr


def test_services_follow_the_celery_layout(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "simulator", *AIRFLOW_SERVICES}
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    for name in AIRFLOW_SERVICES | {"simulator"}:
        service = services[name]
        assert service["build"] == "." and service["image"] == "esl-export-airflow:0.1.0", name
        assert {"./dags:/opt/airflow/dags", "./plugins:/opt/airflow/plugins"} <= set(service["volumes"]), name
        assert "esl-data:/opt/airflow/data" in service["volumes"], name
        assert "healthcheck" in service or name == "airflow-init", name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        after = services[name]["depends_on"]
        assert after["airflow-init"] == {"condition": "service_completed_successfully"}, name
        assert after["postgres"] == after["redis"] == {"condition": "service_healthy"}, name
    assert set(compose["volumes"]) == {"postgres-db", "esl-data", "airflow-logs", "airflow-auth"}
    # The UI is published on the host's loopback only; nothing else is published.
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    assert [n for n, s in services.items() if "ports" in s] == ["airflow-apiserver"]


def test_airflow_environment_is_celery_on_postgres_and_redis(compose: dict[str, Any]) -> None:
    from airflow.configuration import conf

    env = compose["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")  # from .env only
    known = conf.configuration_description  # core and providers' options, as `airflow config list`
    for key in env:
        if key.startswith("AIRFLOW__"):
            _, section, option = key.lower().split("__", 2)
            assert option in known.get(section, {}).get("options", {}), f"{key} is no Airflow option"
    worker_env = compose["services"]["airflow-worker"]["environment"]
    assert {k: v for k, v in worker_env.items() if k != "DUMB_INIT_SETSID"} == env


def _init_steps(compose: dict[str, Any]) -> list[str]:
    script = compose["services"]["airflow-init"]["command"][1]
    return [line.split("  #")[0].strip() for line in script.splitlines() if line.strip()]


def test_init_migrates_creates_the_fetch_pool_and_unpauses_the_dag(compose: dict[str, Any]) -> None:
    steps = _init_steps(compose)
    assert steps[0] == "set -euo pipefail"
    migrate = steps.index("/entrypoint airflow db migrate")
    # One name: the pool airflow-init creates is the one the DAG reads from ESL_EXPORT_POOL.
    assert compose["x-airflow-common"]["environment"][POOL_ENV] == "esl_working"
    pool = next(
        i for i, s in enumerate(steps) if s.startswith(f'/entrypoint airflow pools set "$${{{POOL_ENV}}}" ')
    )
    assert re.fullmatch(rf'/entrypoint airflow pools set "\$\${{{POOL_ENV}}}" \d+ ".+"', steps[pool])
    # DAGs start paused (DAGS_ARE_PAUSED_AT_CREATION): parse them now, then unpause the export.
    reserialize = steps.index("/entrypoint airflow dags reserialize")
    unpause = steps.index("/entrypoint airflow dags unpause esl_export")
    assert migrate < pool < reserialize < unpause
    env = compose["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "true"


def test_the_generated_admin_password_lives_on_a_volume(compose: dict[str, Any]) -> None:
    env = compose["services"]["airflow-apiserver"]["environment"]
    password_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    folder = password_file.rsplit("/", 1)[0]
    volumes = compose["services"]["airflow-apiserver"]["volumes"]
    [named] = [v.split(":")[0] for v in volumes if v.split(":")[1] == folder]
    assert named in compose["volumes"]  # a named volume, not the container's own file system
    steps = _init_steps(compose)
    assert any(s.startswith("mkdir -p ") and folder in s.split() for s in steps)
    assert any(s.startswith('chown -R "${AIRFLOW_UID:-50000}:0" ') and folder in s.split() for s in steps)
    # The README says how to read it.
    assert f"docker compose exec airflow-apiserver cat {password_file}" in (REPO / "README.md").read_text()


def test_esl_variables_and_example_connections(compose: dict[str, Any]) -> None:
    env = compose["services"]["airflow-worker"]["environment"]
    servers = json.loads(env[f"AIRFLOW_VAR_{SERVERS_VARIABLE.upper()}"])
    assert servers and env[f"AIRFLOW_VAR_{OUTPUT_ROOT_VARIABLE.upper()}"] == "/opt/airflow/data/esl_export"
    simulator = compose["services"]["simulator"]
    assert simulator["profiles"] == ["simulator"]
    ports = []
    for name in servers:
        conn = json.loads(env[f"AIRFLOW_CONN_{name.upper()}"])
        assert (conn["conn_type"], conn["host"]) == ("http", "simulator")
        ports.append(conn["port"])
    # The simulator's own argument parser accepts the command and serves exactly those ports.
    from esl_operators.simulator.__main__ import _parse_args

    args = _parse_args(simulator["command"])
    assert ports == [args.base_port + i for i in range(args.servers)]


def _dockerfile_instructions() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_builds_on_the_pinned_airflow_and_installs_the_package() -> None:
    instructions = _dockerfile_instructions()
    pinned = next(
        line for line in (REPO / "requirements.txt").read_text().splitlines() if "apache-airflow==" in line
    )
    assert instructions[0] == f"FROM apache/airflow:{pinned.split('==')[1]}"
    [install] = [line for line in instructions if "pip install" in line]
    # The tested versions: the same constraints file as `make install`, copied into the image.
    assert " -c /opt/esl-export/constraints.txt " in install and '"/opt/esl-export[amazon]"' in install
    copied = {
        source: line.split()[-1]
        for line in instructions
        if line.startswith("COPY ")
        for source in line.split()[2:-1]
    }
    assert copied["constraints.txt"] == "/opt/esl-export/"
    # The package's DAG file is a symlink to dags/esl_export.py: its target must be in the image too.
    link = REPO / "esl_operators" / "dags" / "esl_export.py"
    target = (link.parent / os.readlink(link)).resolve().relative_to(REPO)
    assert copied[str(target)] == f"/opt/esl-export/{target}"
    assert copied["esl_operators"] == "/opt/esl-export/esl_operators"
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "data", "tests"} <= set(ignored)
