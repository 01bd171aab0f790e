"""The benchmark harness on tiny sizes: it runs, it parses, its numbers are consistent.

No speed targets are asserted here (they are recorded in BENCHMARKS.md by ``make bench``); only that
every client publishes the same rows and that the derived numbers agree with the measured ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import FleetSpec, Measurement, count_rows
from benchmarks.network import floor_row
from benchmarks.report import TARGETS
from benchmarks.tables import Row, markdown_table

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
# The capacity, CPU and end-to-end scenarios add nothing the harness does not do here, only seconds.
SCENARIOS = ("latency", "memory", "aggregation", "floor")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", ",".join(SCENARIOS)]
    cmd += ["--out", str(out / "BENCH.md"), "--json", str(out / "bench.json")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), (out / "BENCH.md").read_text()


def measured(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in scenario["rows"] if row["runs"]]


def test_every_client_publishes_the_same_rows(quick: tuple[dict[str, Any], str]) -> None:
    report, _ = quick
    scenario = report["scenarios"]["latency"]
    expected = scenario["expected_rows"]
    assert expected > 0
    rows = measured(scenario)
    assert len(rows) == 5  # ours twice, legacy-style twice, requests + threads
    for row in rows:
        assert (row["label"], row["failed"], row["rows"]) == (row["label"], 0, expected)
    aggregation = report["scenarios"]["aggregation"]["rows"]
    assert [r["rows"] for r in aggregation] == [20_000, 20_000, 20_000]


def test_numbers_are_positive_and_consistent(quick: tuple[dict[str, Any], str]) -> None:
    report, _ = quick
    scenario = report["scenarios"]["latency"]
    floor = next(r for r in scenario["rows"] if r["label"].startswith("floor"))
    for row in measured(scenario):
        wall, requests = row["wall_s"], row["requests"]
        assert wall > 0 and row["cpu_s"] > 0 and row["peak_rss_mb"] > 0 and requests > 0
        assert row["req_per_s"] * wall == pytest.approx(requests, rel=1e-9)
        assert row["cpu_per_1000"] == pytest.approx(row["cpu_s"] / requests * 1000, rel=1e-9)
        # No client can beat the floor, nor export with fewer requests than the data needs.
        assert floor["wall_s"] <= wall
        assert requests >= floor["requests"]
        assert 0 <= row["overloaded"] <= requests
    baselines = [r for r in measured(scenario) if not r["label"].startswith("ours")]
    # No refusals here: the baselines make exactly the requests the data needs.
    assert {r["requests"] for r in baselines} == {floor["requests"]}
    memory = report["scenarios"]["memory"]["rows"]
    small, large = memory[0], memory[1]
    assert 0 < small["rows"] < large["rows"] and 0 < small["requests"] < large["requests"]
    assert all(r["peak_rss_mb"] > 0 for r in memory)


def test_markdown_has_targets_and_every_row(quick: tuple[dict[str, Any], str]) -> None:
    report, text = quick
    assert "## Targets (issue 6)" in text and "quick mode" in text
    assert len(report["targets"]) == len(TARGETS) + 1  # every target row, and the runtime
    for target in report["targets"]:
        assert target["target"] in text
        assert target.get("met") in (True, False, None)
    for scenario in report["scenarios"].values():
        assert f"## {scenario['title']}" in text
        for row in scenario["rows"]:
            assert f"| {row['label']} |" in text


def test_ab_floor_sends_each_server_what_our_run_sent(quick: tuple[dict[str, Any], str]) -> None:
    report, text = quick
    rows = report["scenarios"]["floor"]["rows"]
    ab, ours, computed = rows
    assert ours["label"].startswith("ours") and computed["label"] == "floor (computed)"
    assert (ours["failed"], ours["rows"]) == (0, report["scenarios"]["floor"]["expected_rows"])
    assert "s fetch" in ours["note"]  # where our wall went, from our own log lines
    assert computed["requests"] == ours["requests"] > 0
    [target] = [t for t in report["targets"] if "`ab -k -c C` floor" in t["target"]]
    if shutil.which("ab") is None:
        # CI machines without apache2-utils: the row says why, the bench does not fail.
        assert ab["runs"] == 0 and "not installed" in ab["note"] and target["ratio"] is None
        pytest.skip("ab (apache2-utils) is not installed: the floor is not measured")
    # ab got exactly our per-server counts (a mismatch fails its run) and no C client beats the formula.
    assert (ab["runs"], ab["failed"], ab["requests"]) == (1, 0, ours["requests"])
    assert computed["wall_s"] <= ab["wall_s"] and ab["cpu_s"] > 0
    assert target["ratio"] == pytest.approx(ab["wall_s"] / ours["wall_s"])
    assert f"{target['ratio']:.0%} of ab" in text


def test_floor_formula() -> None:
    spec = FleetSpec(servers=4, stores=6, esls=400, latency_ms=20, capacity=8)
    row = floor_row(spec, needed=1600).summary()
    # 4 servers x min(8, 4) in flight / 20 ms = 800 requests/s
    assert (row["req_per_s"], row["wall_s"], row["requests"]) == (800, 2.0, 1600)
    capped = floor_row(FleetSpec(servers=1, stores=1, esls=1, latency_ms=10, capacity=2), needed=100)
    assert capped.summary()["wall_s"] == pytest.approx(0.5)
    assert floor_row(FleetSpec(servers=1, stores=1, esls=1), needed=5).summary().get("wall_s") is None


def test_summary_uses_medians_of_successful_runs() -> None:
    runs = [
        Measurement(wall_s=2.0, cpu_s=1.0, peak_rss_mb=50, exit_code=0, rows=10, requests=100, overloaded=0),
        Measurement(wall_s=4.0, cpu_s=3.0, peak_rss_mb=70, exit_code=0, rows=10, requests=100, overloaded=0),
        Measurement(wall_s=9.0, cpu_s=9.0, peak_rss_mb=90, exit_code=1, log_tail="boom"),
    ]
    row = Row("client", runs).summary()
    assert (row["wall_s"], row["cpu_s"], row["peak_rss_mb"], row["requests"]) == (3.0, 2.0, 60, 100)
    assert row["req_per_s"] == pytest.approx(100 / 3.0) and row["cpu_per_1000"] == pytest.approx(20.0)
    assert (row["runs"], row["failed"]) == (3, 1) and "1 of 3 runs failed (exit [1]): boom" in row["note"]
    table = markdown_table([row], ["wall_s", "requests", "rows"])
    assert table.splitlines()[2].startswith("| client | 3.00 | 100 | 10 |")


def test_count_rows_reads_csvs_and_batch_manifests(tmp_path: Path) -> None:
    day = tmp_path / "2024-05-10"
    (day / "_parts").mkdir(parents=True)
    (day / "esl_id_part_1.csv").write_text('a,b\n1,"x\ny"\n2,z\n', encoding="utf-8")
    (day / "esl_id_part_2.csv").write_text("a,b\n3,w\n", encoding="utf-8")
    (day / "_parts" / "batch-0.json").write_text(json.dumps({"rows": 7}), encoding="utf-8")
    assert count_rows(tmp_path, "*/esl_id_part_*.csv") == 3
    assert count_rows(tmp_path, "*/_parts/batch-*.json") == 7
