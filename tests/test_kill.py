"""A fetch killed with SIGKILL midway and run again yields byte-identical CSVs (the standalone command
runs the same batch and aggregate code as the Airflow tasks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esl_operators.simulator import Fleet, SimulatorThread
from tests.support import DS

pytestmark = pytest.mark.timeout(180)


def _command(sim: SimulatorThread, out: Path) -> list[str]:
    servers = [arg for url in sim.urls for arg in ("--server", url)]
    return [sys.executable, "-m", "esl_operators", "fetch", *servers, "--date", DS, "--out", str(out),
            "--servers-per-batch", "3"]  # fmt: skip


def _published(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / DS).glob("esl_id_part_*.csv"))}


def test_sigkill_midway_then_rerun_is_byte_identical(small_fleet: Fleet, tmp_path: Path) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    with SimulatorThread(small_fleet, latency_ms=20, capacity=4) as sim:
        victim = subprocess.Popen(_command(sim, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            # Kill once the part is being written and a real share of the details has been fetched.
            while sum(s.details for s in sim.stats) < 200:
                assert victim.poll() is None, "the fetch finished before it could be killed"
                assert time.monotonic() < deadline, "the fetch never got going"
                time.sleep(0.02)
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(timeout=10) == -signal.SIGKILL
        finally:
            if victim.poll() is None:
                victim.kill()
        parts = killed / DS / "_parts"
        assert [
            p.name for p in parts.iterdir() if p.name.endswith(".tmp")
        ]  # half a part, under its temp name
        assert not (parts / "batch-0.arrow").exists() and _published(killed) == {}

        subprocess.run(_command(sim, killed), check=True, timeout=120, capture_output=True)
        subprocess.run(_command(sim, clean), check=True, timeout=120, capture_output=True)

    assert _published(killed) == _published(clean)
    assert list(_published(killed)) == ["esl_id_part_1.csv"]
    assert not [p.name for p in (killed / DS).rglob("*.tmp")]
    assert (killed / DS / "_SUCCESS").exists()
