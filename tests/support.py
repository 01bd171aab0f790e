"""What the tests share: constants, small servers and sinks, and runners for the DAG and the simulator.

Fixtures live in ``conftest.py``, which sets up the private Airflow home before anything imports
Airflow; this module imports no Airflow at import time. ``expected.py`` stays the independent oracle.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from esl_operators.client import ServerTarget, TransportSettings
from esl_operators.engine import FetchSettings
from esl_operators.records import PART_COLUMNS
from esl_operators.retry import RetryPolicy
from esl_operators.simulator import ServerData, SimulatorThread, reference_ms_for
from esl_operators.simulator.process import read_lines, spawn, stop

REPO = Path(__file__).resolve().parents[1]

# The engine, DAG and report tests run on 2024-05-10 (midnight UTC) with the default 7-day lookback.
ANCHOR = dt.datetime(2024, 5, 10, tzinfo=dt.UTC)
ANCHOR_MS = 1_715_299_200_000
DS = "2024-05-10"
DAY_MS = 86_400_000
CUTOFF_MS = ANCHOR_MS - 7 * DAY_MS

# The simulator's own tests use another reference day, and this timeout for their plain requests.
REFERENCE_DATE = dt.date(2025, 6, 15)
REFERENCE_MS = reference_ms_for(REFERENCE_DATE)
TIMEOUT_S = 5.0

# aiohttp 3.14 deprecates BasicAuth, which the package (and Airflow's http hook) still hand out.
BASIC_AUTH_WARNINGS = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

_ESL_ID, _STORE, _SERVER = (PART_COLUMNS.index(name) for name in ("esl_id", "store", "server"))


# --- settings and targets ------------------------------------------------------------------------


def fast_transport(attempts: int = 3) -> TransportSettings:
    """Real retries with tiny backoffs, so fault tests take milliseconds, not seconds."""
    return TransportSettings(
        timeout_s=10.0,
        connect_timeout_s=5.0,
        retry=RetryPolicy(attempts=attempts, base_delay_s=0.01, max_delay_s=0.05, max_retry_after_s=0.05),
    )


def fetch_settings(**overrides: Any) -> FetchSettings:
    """The engine tests' settings: the 7-day window of ANCHOR, 4 in flight, fast retries, no progress."""
    values: dict[str, Any] = {
        "cutoff_ms": CUTOFF_MS,
        "max_concurrency": 4,
        "progress_interval_s": 60.0,
        "transport": fast_transport(),
    }
    values.update(overrides)
    return FetchSettings(**values)


def sim_target(sim: SimulatorThread, index: int) -> ServerTarget:
    return ServerTarget(name=f"esl_sim_{index}", base_url=sim.urls[index])


def connection_env(names: Sequence[str], ports: Sequence[int]) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` variables pointing each connection id at a simulated server on loopback."""
    return {
        f"AIRFLOW_CONN_{name.upper()}": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port})
        for name, port in zip(names, ports, strict=True)
    }


# --- sinks, servers, files -----------------------------------------------------------------------


class ListSink:
    """A RowSink collecting rows in memory (written to from the engine's worker threads)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def write_rows(self, rows: Sequence[Sequence[str]]) -> None:
        with self._lock:
            self.rows.extend(tuple(row) for row in rows)

    def ids(self, server: str, store: str) -> list[str]:
        """ESL ids written for one store, in write order."""
        return [r[_ESL_ID] for r in self.rows if r[_SERVER] == server and r[_STORE] == store]

    def by_store(self) -> dict[str, list[str]]:
        """ESL ids written per store, in write order."""
        found: dict[str, list[str]] = {}
        for row in self.rows:
            found.setdefault(row[_STORE], []).append(row[_ESL_ID])
        return found


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port in the running loop; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def csv_rows(path: Path) -> list[list[str]]:
    """Every row of a published CSV, header included."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def published_files(folder: Any) -> dict[str, bytes]:
    """Every file of a date folder but the fetch tasks' parts, with its bytes (hidden files, staging
    folders included): what a reader of the date could see. Local or ``ObjectStoragePath`` folders."""
    found = {}
    for item in folder.rglob("*"):
        if isinstance(item, Path):
            relative = str(item.relative_to(folder))
        else:
            relative = item.path[len(folder.path) + 1 :]
        if relative.startswith("_parts") or not item.is_file():
            continue
        found[relative] = item.read_bytes()
    return found


def leftovers(folder: Any) -> list[str]:
    """Temporary files, staging folders and leases anywhere under a date folder."""
    return sorted(
        i.name
        for i in folder.rglob("*")
        if i.name.endswith(".tmp") or i.name.startswith(".staging-") or i.name == "_lease.json"
    )


# --- the DAG -------------------------------------------------------------------------------------


def load_dag() -> Any:
    """Parse the DAG folder the way the dag-processor does, with the network cut off."""
    from airflow.dag_processing.dagbag import DagBag

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access while parsing DAGs: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["esl_export"]


def without_retries(dag: Any) -> Any:
    """dag.test() honours retry delays; a failing test should fail now, not in minutes."""
    for task in dag.tasks:
        task.retries = 0
    return dag


def connect(monkeypatch: pytest.MonkeyPatch, sim: SimulatorThread, out: Path) -> list[str]:
    """Connections ``esl_sim_N`` to the simulator's servers, the server list and the output root."""
    names = [f"esl_sim_{i}" for i in range(len(sim.ports))]
    for key, value in connection_env(names, sim.ports).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIRFLOW_VAR_ESL_SERVERS", json.dumps(names))
    monkeypatch.setenv("AIRFLOW_VAR_ESL_OUTPUT_ROOT", str(out))
    return names


# --- the simulator over plain HTTP and as a command ----------------------------------------------


def get_json(url: str) -> tuple[int, dict[str, Any], str]:
    """(HTTP status, decoded body, content type), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read().decode("utf-8")), resp.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read().decode("utf-8")), err.headers["Content-Type"]


def ok_data(server: ServerData, body: dict[str, Any]) -> Any:
    """The ``data`` of a success envelope, checking the envelope style of ``server``."""
    if server.index % 2 == 0:
        assert (body["error_code"], body["error_msg"]) == (0, "success")
    else:
        assert (body["status_no"], body["message"]) == (0, "success")
    return body["data"]


@contextlib.contextmanager
def simulator_cli(args: Sequence[str], lines: int) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """``python -m esl_operators.simulator ARGS`` and its first ``lines`` output lines (one per server);
    stopped by its PID when the block ends if it still runs (SIGTERM, then SIGKILL)."""
    proc = spawn(args)
    try:
        yield proc, read_lines(proc, lines, timeout=15)
    finally:
        stop(proc)


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A local S3 server (moto's, PyPI ``moto[server]``) on a free loopback port; yields its URL and is
    stopped by its PID when the block ends. Its output goes to ``log``."""
    import sys
    import time

    port = free_port()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto server not up on {url} within 60 s") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- this checkout, as a user installs it ------------------------------------------------------------


def copy_checkout(dest: Path) -> Path:
    """The files git tracks or would track (new, not ignored) from the working tree, copied to ``dest``.

    For tests that install the package the way a user does (``pip install .``): building in the working
    tree would leave ``build/`` behind, and setuptools packs whatever an earlier build left in
    ``build/lib`` into the next wheel. Symlinks are kept as symlinks, as in a fresh clone.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for relative in sorted(set(filter(None, listed.split("\0")))):
        source = REPO / relative
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree, not yet in the index
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest
