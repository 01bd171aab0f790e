"""The bounded-memory benchmark scenario on tiny sizes: it runs, every step publishes its rows, and
its three targets are evaluated from its own rows (no speed is asserted; ``make bench`` records them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]


def test_quick_bounded_memory_scenario(tmp_path: Path) -> None:
    cmd = [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", "bounded,aggregation"]
    cmd += ["--out", str(tmp_path / "BENCH.md"), "--json", str(tmp_path / "bench.json")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))

    rows = report["scenarios"]["bounded"]["rows"]
    assert [(r["label"], r["failed"], r["rows"]) for r in rows] == [
        ("aggregate step, 100 rows (aggregate_memory_mb 256)", 0, 100),
        ("aggregate step, 5,000 rows (aggregate_memory_mb 256)", 0, 5_000),
        ("aggregate step, 20,000 rows (aggregate_memory_mb 256)", 0, 20_000),
        ("whole command, 200 labels in one partition", 0, 200),
        ("whole command, 2,000 labels in one partition", 0, 2_000),
    ]
    targets = {t["target"]: t for t in report["targets"]}
    budget = targets["Bounded memory: 4M-row aggregation within aggregate_memory_mb (256) over the baseline"]
    peaks = [r["peak_rss_mb"] for r in rows]
    assert budget["ratio"] == pytest.approx((peaks[2] - peaks[0]) / 256)
    speed = targets["Bounded memory: aggregation per-row speed at least 2.5× naive pandas (1M rows)"]
    walls = {r["label"].split(" (")[0]: r["wall_s"] for r in report["scenarios"]["aggregation"]["rows"]}
    assert speed["ratio"] == pytest.approx(walls["naive pandas"] / walls["ours, partitions"])
    command = targets["Bounded memory: whole command's peak RSS within 1.2× from 10k labels up"]
    assert command["ratio"] == pytest.approx(peaks[4] / peaks[3])
    assert "## Bounded memory (aggregate step and whole command)" in (tmp_path / "BENCH.md").read_text()
