"""Which moment a run's heartbeat window is anchored on, and which date folder it writes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from esl_operators import cli
from esl_operators.config import ANCHOR_SOURCES, anchor_of, run_anchor
from esl_operators.exceptions import ConfigError
from esl_operators.simulator import SimulatorThread

D = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
TRIGGERED = dt.datetime(2026, 12, 1, 18, 49, 21, tzinfo=dt.UTC)


def _context(**fields: Any) -> dict[str, Any]:
    run_after = fields.pop("run_after", None)
    return {"dag_run": SimpleNamespace(run_after=run_after), **fields}


def test_the_logical_date_wins_over_a_later_data_interval_end() -> None:
    """`airflow dags trigger --logical-date D`: the CLI sets data_interval_end to the trigger time."""
    context = _context(logical_date=D, data_interval_end=TRIGGERED, run_after=TRIGGERED)
    assert anchor_of(context) == (D, "logical_date")
    assert run_anchor(context) == (D, "2026-11-29")


def test_without_a_logical_date_data_interval_end_then_run_after() -> None:
    assert anchor_of(_context(logical_date=None, data_interval_end=TRIGGERED)) == (
        TRIGGERED,
        "data_interval_end",
    )
    context = _context(logical_date=None, data_interval_end=None, run_after=TRIGGERED)
    assert anchor_of(context) == (TRIGGERED, "run_after")
    assert run_anchor(context) == (TRIGGERED, "2026-12-01")
    assert ANCHOR_SOURCES == ("logical_date", "data_interval_end", "run_after")


def test_the_date_folder_is_the_anchors_utc_date() -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    late = dt.datetime(2026, 11, 30, 2, 0, tzinfo=shanghai)  # 2026-11-29T18:00Z
    assert run_anchor(_context(logical_date=late)) == (late, "2026-11-29")


def test_a_run_with_nothing_to_anchor_on_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        anchor_of(_context(logical_date=None, data_interval_end=None))
    assert str(caught.value) == "the run has no logical_date, data_interval_end or run_after to anchor on"


def test_the_standalone_command_records_its_date_as_the_anchor(
    simulator: SimulatorThread, tmp_path: Path
) -> None:
    code = cli.main(["fetch", "--server", simulator.urls[0], "--date", "2024-05-10", "--out", str(tmp_path)])
    assert code == 0
    manifest = json.loads((tmp_path / "2024-05-10" / "_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["anchor"], manifest["anchor_source"]) == ("2024-05-10T00:00:00Z", "date")
