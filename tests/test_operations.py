"""Airflow-native operation: trigger-form params, pool and limits, the Asset and its consumer, map length.

Everything runs through the real DAG file and real ``dag.test()`` runs on SQLite against the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from esl_operators.config import (
    MAX_ACTIVE_FETCHES_PER_RUN,
    OUTPUT_ASSET_NAME,
    OUTPUT_ASSET_URI,
    POOL_ENV,
    check_map_length,
    max_map_length,
)
from esl_operators.exceptions import ConfigError
from esl_operators.plan import plan_run
from esl_operators.simulator import SimulatorThread
from tests.support import ANCHOR, REPO, connect, load_dag, without_retries

CONTEXT = {"ds": "2024-05-10", "data_interval_end": ANCHOR}


def _bag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


def test_every_param_is_self_explanatory_in_the_trigger_form() -> None:
    dag = load_dag()
    for name, param in dag.params.items():
        schema = param.schema
        assert schema.get("title"), name
        assert len(param.description or "") > 20, name
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "integer" in types or "number" in types:
            assert "minimum" in schema or "exclusiveMinimum" in schema, name
            assert "maximum" in schema, name
    assert dag.params.get_param("header_style").schema["enum"] == ["standard", "legacy"]
    assert dag.params.get_param("on_server_error").schema["enum"] == ["fail", "skip"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_concurrency", 0),
        ("max_concurrency", 65),
        ("servers_per_batch", 0),
        ("lookback_days", -1),
        ("header_style", "fancy"),
        ("servers", ["esl_a", "esl_a"]),
        ("servers", [""]),
        ("request_timeout_s", 0),
    ],
)
def test_airflow_refuses_invalid_params_before_a_run(name: str, value: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = load_dag().params
    with pytest.raises(ParamValidationError, match=name):
        params[name] = value  # what Airflow does with each key of a run's conf


def test_defaults_validate() -> None:
    assert load_dag().params.validate()["max_concurrency"] == 4


def test_fetch_tasks_run_in_default_pool_with_a_per_run_cap_and_aggregate_updates_the_asset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(POOL_ENV, raising=False)
    dag = load_dag()
    fetch, aggregate = dag.get_task("fetch"), dag.get_task("aggregate")
    # Nothing to create first: every Airflow has default_pool.
    assert (fetch.pool, fetch.max_active_tis_per_dagrun) == ("default_pool", MAX_ACTIVE_FETCHES_PER_RUN)
    assert [(a.name, a.uri) for a in aggregate.outlets] == [(OUTPUT_ASSET_NAME, OUTPUT_ASSET_URI)]
    assert dag.get_task("plan_batches").pool == "default_pool"


@pytest.mark.parametrize(
    ("value", "pool"),
    [("esl_working", "esl_working"), (" esl_working ", "esl_working"), ("", "default_pool")],
)
def test_esl_export_pool_names_the_fetch_pool_at_parse_time(
    monkeypatch: pytest.MonkeyPatch, value: str, pool: str
) -> None:
    monkeypatch.setenv(POOL_ENV, value)
    dag = load_dag()  # with the network cut off, so no database or API lookup either
    assert dag.get_task("fetch").pool == pool
    assert dag.get_task("plan_batches").pool == dag.get_task("aggregate").pool == "default_pool"


def test_example_consumer_is_scheduled_on_the_asset_and_off_by_default() -> None:
    bag = _bag()
    consumer = bag.dags["esl_export_consumer"]
    assert consumer.is_paused_upon_creation is True
    assets = consumer.timetable.asset_condition.objects
    assert [(a.name, a.uri) for a in assets] == [(OUTPUT_ASSET_NAME, OUTPUT_ASSET_URI)]
    assert bag.dags["esl_export"].is_paused_upon_creation is None  # the export follows the site default


def test_map_length_check_names_the_fix() -> None:
    check_map_length(1024, 1, 1024)  # exactly at the limit is fine
    check_map_length(2049, 3, 1024)
    with pytest.raises(ConfigError) as info:
        check_map_length(2049, 2, 1024)
    message = str(info.value)
    assert "2049 servers in batches of 2 make 1025 fetch tasks" in message
    assert "max_map_length of 1024" in message
    assert "servers_per_batch to at least 3" in message


def test_map_length_comes_from_airflow_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert max_map_length() == 1024
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    assert max_map_length() == 3
    params = {"servers": [f"esl_{i}" for i in range(7)], "servers_per_batch": 2, "output_root": str(tmp_path)}
    with pytest.raises(ConfigError, match="7 servers in batches of 2 make 4 fetch tasks"):
        plan_run(params, CONTEXT)
    assert plan_run({**params, "servers_per_batch": 3}, CONTEXT) == [
        ["esl_0", "esl_1", "esl_2"],
        ["esl_3", "esl_4", "esl_5"],
        ["esl_6"],
    ]


def test_dag_run_over_the_map_limit_fails_in_plan_without_fetching(
    airflow_db: str,
    simulator: SimulatorThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(monkeypatch, simulator, tmp_path)
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    requests_before = sum(s.total for s in simulator.stats)
    run = without_retries(load_dag()).test(logical_date=ANCHOR, run_conf={"servers_per_batch": 1})
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["plan_batches"] == "failed"
    assert states["aggregate"] != "success"
    assert sum(s.total for s in simulator.stats) == requests_before  # no server was asked anything
    assert not (tmp_path / "2024-05-10" / "_manifest.json").exists()


def test_published_run_emits_an_asset_event_naming_the_date_and_folder(
    airflow_db: str,
    simulator: SimulatorThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from esl_operators.consumer import summarize_events

    connect(monkeypatch, simulator, tmp_path)
    run = without_retries(load_dag()).test(logical_date=ANCHOR, run_conf={"servers_per_batch": 2})
    assert run.state == "success"
    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == OUTPUT_ASSET_NAME, AssetEvent.source_run_id == run.run_id)
        ).all()
        extras = [dict(e.extra) for e in events]
    manifest = json.loads((tmp_path / "2024-05-10" / "_manifest.json").read_text(encoding="utf-8"))
    assert extras == [
        {
            "ds": "2024-05-10",
            "folder": (tmp_path / "2024-05-10").as_uri(),
            "rows": manifest["rows"],
            "partitions": ["esl_id_part_1.csv", "esl_id_part_2.csv"],
            "errors": 0,
        }
    ]
    assert manifest["rows"] > 100

    class Event:  # what triggering_asset_events hands the consumer: objects with .extra
        extra = extras[0]

    [summary] = summarize_events([Event()])
    assert summary["rows"] == manifest["rows"]
    assert summary["partitions"] == {p["file"]: p["rows"] for p in manifest["partitions"]}


@pytest.mark.parametrize("name", ["my exports", "上海 导出", "50%"])
def test_a_local_output_root_keeps_its_name(name: str, tmp_path: Path) -> None:
    """Spaces, non-ASCII letters and percent signs are the folder's own name, never URL escapes."""
    from esl_operators.config import resolve_output_root

    root = resolve_output_root(str(tmp_path / name))
    (root / "2024-05-10").mkdir(parents=True, exist_ok=True)
    (root / "2024-05-10" / "x.txt").write_text("x", encoding="utf-8")
    assert (tmp_path / name / "2024-05-10" / "x.txt").read_text(encoding="utf-8") == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
