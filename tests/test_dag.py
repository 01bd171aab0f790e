"""The DAG: parses cleanly without network, and `dag.test()` publishes exactly the expected rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from esl_operators.csvformat import LEGACY_COLUMNS, STANDARD_COLUMNS
from esl_operators.simulator import Fleet, SimulatorThread
from tests.expected import expected_partition
from tests.support import ANCHOR, ANCHOR_MS, CUTOFF_MS, DAY_MS, connect, csv_rows, load_dag, without_retries


def test_dag_parses_without_network_or_variables() -> None:
    dag = load_dag()
    assert dag is not None
    assert {t.task_id for t in dag.tasks} == {"plan_batches", "fetch", "aggregate"}
    assert dag.catchup is False
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert (dag.schedule, dag.timetable.expression) == ("@daily", "0 0 * * *")
    params = dag.params.dump()
    assert params == {
        "servers": None,
        "servers_per_batch": 1,
        "lookback_days": 7,
        "max_records_per_store": 50_000,
        "max_concurrency": 4,
        "adaptive_concurrency": True,
        "max_threads": 3,
        "on_server_error": "fail",
        "notify_to": None,
        "notify_conn_id": "smtp_default",
        "request_timeout_s": 60,
        "connect_timeout_s": 10,
        "retry_attempts": 5,
        "retry_max_delay_s": 30,
        "max_pages": 10_000,
        "max_body_mb": 32,
        "progress_interval_s": 5,
        "output_root": None,
        "header_style": "standard",
        "timezone": "UTC",
        "spreadsheet_safe": None,
        "aggregate_memory_mb": 256,
        "history_days": 30,
        "battery_drop_points": 10,
        "battery_alert_pct": 10,
        "forecast_horizon_days": 60,
    }
    for name, param in dag.params.items():
        assert param.schema.get("type"), name
        assert param.description, name


def _shanghai(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000 + 8 * 3600))


def test_dag_run_publishes_exact_sorted_partitions(
    airflow_db: str,
    simulator: SimulatorThread,
    small_fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = connect(monkeypatch, simulator, tmp_path)
    dag = without_retries(load_dag())
    run = dag.test(logical_date=ANCHOR, run_conf={"servers_per_batch": 2})
    assert run.state == "success"

    out = tmp_path / "2024-05-10"
    assert sorted(p.name for p in out.glob("*.csv")) == ["esl_id_part_1.csv", "esl_id_part_2.csv"]
    part1 = csv_rows(out / "esl_id_part_1.csv")
    part2 = csv_rows(out / "esl_id_part_2.csv")
    assert part1[0] == list(STANDARD_COLUMNS)
    assert part1[1:] == expected_partition(small_fleet, {0: names[0], 1: names[1]}, CUTOFF_MS)
    assert part2[1:] == expected_partition(small_fleet, {2: names[2]}, CUTOFF_MS)
    assert len(part1) > 100 and len(part2) > 50  # the window keeps a real share of the fleet

    manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["errors"] == []
    assert [(p["file"], p["rows"]) for p in manifest["partitions"]] == [
        ("esl_id_part_1.csv", len(part1) - 1),
        ("esl_id_part_2.csv", len(part2) - 1),
    ]
    assert manifest["rows_by_server"][names[2]] == len(part2) - 1
    assert "default" not in manifest["rows_by_store"][names[0]]
    assert manifest["params"]["servers_per_batch"] == 2
    assert manifest["heartbeat_cutoff"] == "2024-05-03T00:00:00Z"
    assert not list(out.glob("_parts/.*.tmp"))


def test_dag_run_legacy_style_and_lookback_param(
    airflow_db: str,
    simulator: SimulatorThread,
    small_fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = connect(monkeypatch, simulator, tmp_path)
    dag = without_retries(load_dag())
    conf = {"servers": names[:1], "header_style": "legacy", "timezone": "Asia/Shanghai", "lookback_days": 3}
    run = dag.test(logical_date=ANCHOR, run_conf=conf)
    assert run.state == "success"

    rows = csv_rows(tmp_path / "2024-05-10" / "esl_id_part_1.csv")
    expected = expected_partition(small_fleet, {0: names[0]}, ANCHOR_MS - 3 * DAY_MS)
    assert rows[0] == list(LEGACY_COLUMNS)
    assert len(rows) - 1 == len(expected) > 0
    details = {d["esl_id"]: d for store in small_fleet.servers[0].stores.values() for d in store}
    by_id = {r[0]: r for r in rows[1:]}
    for want in expected:
        got, detail = by_id[want[0]], details[want[0]]
        # legacy: store, battery, frequency as in standard; product id shown as the chip family
        assert (got[1], got[3], got[14]) == (want[1], want[5], want[17])
        assert got[12] == (want[14] or want[13])
        # timestamps: Asia/Shanghai is UTC+8 all year (no DST)
        assert got[2] == _shanghai(detail["create_time"])
        assert got[4] == _shanghai(detail["last_hb_time"])
    assert [r[0] for r in rows[1:]] == [r[0] for r in expected]
    # The legacy layout is guarded against spreadsheet formulas unless the param says otherwise.
    manifest = json.loads((tmp_path / "2024-05-10" / "_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["spreadsheet_safe"], manifest["params"]["spreadsheet_safe"]) == (True, None)
