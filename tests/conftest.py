"""Test setup: a private Airflow home on SQLite, and the shared fixtures (a tiny simulated fleet on
loopback, a refused port, the migrated metadata database).

The environment is set at import time, before anything imports Airflow, so no test ever touches a
real ``~/airflow``. Constants and helpers are in ``support.py``; this file holds fixtures only.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="esl-airflow-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": _HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # A throwaway key of the recommended length, so JWT signing in the plugin tests does not warn.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
    }
)
for _name in [k for k in os.environ if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
    del os.environ[_name]

# Helpers with plain asserts get pytest's assertion messages too.
pytest.register_assert_rewrite("tests.support")

from esl_operators.simulator import Fleet, SimulatorThread, build_fleet  # noqa: E402
from tests.support import ANCHOR_MS  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata database (a few seconds, once per session)."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return _HOME


@pytest.fixture(scope="session")
def small_fleet() -> Fleet:
    return build_fleet(servers=3, stores=6, esls=260, page_size=50, seed=11, reference_ms=ANCHOR_MS)


@pytest.fixture(scope="session")
def simulator(small_fleet: Fleet) -> Iterator[SimulatorThread]:
    with SimulatorThread(small_fleet) as sim:
        yield sim


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting is refused, and nobody can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
