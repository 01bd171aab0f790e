"""Test setup: a private Airflow home on SQLite, and a tiny simulated fleet on loopback.

The environment is set at import time, before anything imports Airflow, so no test ever touches a
real ``~/airflow``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_HOME = tempfile.mkdtemp(prefix="esl-airflow-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": _HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # A throwaway key of the recommended length, so JWT signing in the plugin tests does not warn.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
    }
)
for _name in [k for k in os.environ if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
    del os.environ[_name]

from esl_operators.simulator import Fleet, SimulatorThread, build_fleet  # noqa: E402

ANCHOR = datetime(2024, 5, 10, tzinfo=UTC)
ANCHOR_MS = 1_715_299_200_000


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
