"""One writer per date (issue 12, item 3): the lease ``{ds}/_lease.json``.

A second writer fails before it writes anything, with a message naming the holder; a lease whose holder
died is taken over; a writer that lost its lease never publishes. The writers are the real ones: the
``esl-export fetch`` command in its own process, a DAG run through ``dag.test()``, and a lease held by
another process or written by another host.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from esl_operators.aggregate import aggregate_run
from esl_operators.exceptions import LeaseError
from esl_operators.lease import Lease, describe
from esl_operators.simulator import Fleet, SimulatorThread
from tests.support import ANCHOR, DS, connect, leftovers, load_dag, published_files, without_retries
from tests.test_spill import make_rows, write_part
from tests.test_storage_faults import faulty_bucket  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:UPath 'faults3' filesystem not explicitly implemented:UserWarning"),
]

DAG_HOLDER = "dag run esl_export/manual__2024-05-10T00:00:00+00:00"


def command(out: Path, *servers: str) -> list[str]:
    args = [arg for url in servers for arg in ("--server", url)]
    return [sys.executable, "-m", "esl_operators", "fetch", *args, "--date", DS, "--out", str(out)]


def refusal(folder: Any, record: dict[str, Any]) -> str:
    return (
        f"{folder} is being written by {record['holder']} on host {record['host']} (pid {record['pid']}) "
        f"since {record['taken_at']}, lease expires at {record['expires_at']} unless renewed "
        f"({folder}/_lease.json); not writing it at the same time: try again later (a DAG task's retry does)"
    )


def test_the_command_against_a_date_another_writer_holds_fails_naming_it(
    simulator: SimulatorThread, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    folder = out / DS
    requests_before = sum(s.total for s in simulator.stats)
    with Lease(folder, DAG_HOLDER):  # the DAG run's aggregate step, in this process
        record = json.loads((folder / "_lease.json").read_text(encoding="utf-8"))
        done = subprocess.run(command(out, *simulator.urls), capture_output=True, text=True, timeout=120)

    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == f"error: {refusal(folder, record)}"
    assert (record["holder"], record["host"], record["pid"]) == (
        DAG_HOLDER,
        socket.gethostname(),
        os.getpid(),
    )
    assert sum(s.total for s in simulator.stats) == requests_before  # failed before the first request
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing written; the lease was released


def test_a_dag_run_on_a_date_the_command_holds_fails_and_writes_nothing(
    airflow_db: str,
    simulator: SimulatorThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    connect(monkeypatch, simulator, tmp_path)
    folder = tmp_path / DS
    requests_before = sum(s.total for s in simulator.stats)
    with Lease(folder, "esl-export fetch 0123abcd"):
        record = json.loads((folder / "_lease.json").read_text(encoding="utf-8"))
        run = without_retries(load_dag()).test(logical_date=ANCHOR, run_conf={"servers_per_batch": 3})

    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert (states["fetch"], states["aggregate"]) == ("failed", "upstream_failed")
    assert refusal(f"file://{folder}", record) in capfd.readouterr().out
    assert sum(s.total for s in simulator.stats) == requests_before
    assert sorted(p.name for p in folder.iterdir()) == []


def test_the_lease_of_a_killed_command_is_taken_over_at_once(small_fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = out / DS
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from esl_operators.lease import Lease\n"
        f"Lease(Path({str(folder)!r}), 'esl-export fetch dead').acquire()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script])
    assert holder.wait(timeout=60) == -signal.SIGKILL
    stale = json.loads((folder / "_lease.json").read_text(encoding="utf-8"))
    assert datetime.fromisoformat(stale["expires_at"]) > datetime.now(UTC)  # not expired: its holder died

    with SimulatorThread(small_fleet) as sim:
        done = subprocess.run(command(out, *sim.urls), capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    assert f"taking over the expired lease of {describe(stale)}" in done.stderr
    assert {"_SUCCESS", "esl_id_part_1.csv"} <= set(published_files(folder))
    assert leftovers(folder) == []


def other_host_lease(folder: Path, expires_in: timedelta) -> dict[str, Any]:
    """A lease as a writer on another machine leaves it (its process cannot be looked up from here)."""
    now = datetime.now(UTC)
    record = {
        "holder": "dag run esl_export/scheduled__2024-05-10T00:00:00+00:00",
        "host": "worker-7.example.internal",
        "pid": 4242,
        "taken_at": (now - timedelta(minutes=30)).isoformat(timespec="seconds"),
        "expires_at": (now + expires_in).isoformat(timespec="milliseconds"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_lease.json").write_text(json.dumps(record), encoding="utf-8")
    return record


def test_a_lease_another_host_let_expire_is_taken_over_and_a_live_one_is_not(tmp_path: Path) -> None:
    folder = tmp_path / DS
    live = other_host_lease(folder, timedelta(minutes=1))
    with pytest.raises(LeaseError) as caught:
        Lease(folder, "esl-export fetch 1").acquire()
    assert str(caught.value) == refusal(folder, live)

    other_host_lease(folder, timedelta(seconds=-1))
    with Lease(folder, "esl-export fetch 1"):
        taken = json.loads((folder / "_lease.json").read_text(encoding="utf-8"))
        assert (taken["holder"], taken["host"]) == ("esl-export fetch 1", socket.gethostname())
    assert not (folder / "_lease.json").exists()


def test_a_retry_of_the_same_dag_run_takes_its_own_lease_back(tmp_path: Path) -> None:
    folder = tmp_path / DS
    other_host_lease(folder, timedelta(minutes=1))
    record = json.loads((folder / "_lease.json").read_text(encoding="utf-8"))
    with Lease(folder, record["holder"]):  # the same run, retried on this machine
        assert (
            json.loads((folder / "_lease.json").read_text(encoding="utf-8"))["host"] == socket.gethostname()
        )


def test_a_writer_whose_lease_was_taken_over_does_not_publish(tmp_path: Path) -> None:
    root = tmp_path / "out"
    earlier = [write_part(root, make_rows(300, seed=1))]
    aggregate_run(earlier, output_root=root, ds=DS, report=False)
    before = published_files(root / DS)
    rerun = [write_part(root, make_rows(300, seed=2))]
    with Lease(root / DS, "esl-export fetch slow"):
        # it stalled past its expiry, and another writer took the date over
        thief = other_host_lease(root / DS, timedelta(minutes=1))
        with pytest.raises(LeaseError) as caught:
            aggregate_run(rerun, output_root=root, ds=DS, report=False)

    assert str(caught.value) == (
        f"{root / DS}: the lease of esl-export fetch slow is now held by {describe(thief)}; not publishing"
    )
    assert {k: v for k, v in published_files(root / DS).items() if k != "_lease.json"} == before
    assert json.loads((root / DS / "_lease.json").read_text(encoding="utf-8")) == thief  # left to its holder


def test_on_s3_the_lease_is_a_conditional_put(faulty_bucket: str) -> None:  # noqa: F811
    from airflow.sdk import ObjectStoragePath

    folder = ObjectStoragePath(f"faults3://{faulty_bucket}/leased/{DS}")
    with Lease(folder, DAG_HOLDER):
        record = json.loads((folder / "_lease.json").read_text(encoding="utf-8"))
        with pytest.raises(LeaseError) as caught:
            Lease(folder, "esl-export fetch 2").acquire()
    assert str(caught.value) == refusal(folder, record)
    assert not (folder / "_lease.json").exists()
