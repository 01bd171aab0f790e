"""The layout's names and patterns: one definition, used by the writer and by the web view."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import HTTPException

from esl_operators.exceptions import ConfigError
from esl_operators.storage import (
    is_run_date,
    partition_name,
    partition_number,
    remove_stale_outputs,
    run_dir,
)
from esl_operators.web import published_file
from esl_operators.web.runs import list_runs


@pytest.mark.parametrize("text", ["2024-05-10", "2024-02-29", "1999-12-31"])
def test_run_dates(text: str) -> None:
    assert is_run_date(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-02-30",  # no such day
        "2023-02-29",
        "2024-13-01",
        "2024-5-10",
        "２０２４-05-10",  # fullwidth digits: \d would accept them
        "٢٠٢٤-٠٥-١٠",  # Arabic-Indic digits
        "2024-05-10\n",
        "20240510",
        "../2024-05-10",
        "",
    ],
)
def test_not_run_dates(text: str, tmp_path: Path) -> None:
    assert not is_run_date(text)
    with pytest.raises(ConfigError, match="run date must be a calendar date written YYYY-MM-DD"):
        run_dir(tmp_path, text)


def test_partition_names_round_trip() -> None:
    for batch in (0, 1, 9, 41, 999_998):
        assert partition_number(partition_name(batch)) == batch + 1
    for name in (
        "esl_id_part_0.csv",
        "esl_id_part_01.csv",
        "esl_id_part_1.CSV",
        "esl_id_part_١.csv",
        "esl_id_part_1000000.csv",
        "esl_id_part_1.csv.tmp",
        "esl_id_part_.csv",
    ):
        assert partition_number(name) is None, name


def test_writer_and_view_agree_on_what_is_published(tmp_path: Path) -> None:
    for ds in ("2024-05-10", "2024-02-30"):
        folder = tmp_path / ds
        folder.mkdir()
        for name in ("esl_id_part_1.csv", "esl_id_part_2.csv", "esl_id_part_02.csv", "report.html"):
            (folder / name).write_text(name, encoding="utf-8")
    assert [run.date for run in list_runs(tmp_path)] == ["2024-05-10"]  # 2024-02-30 is no date
    [run] = list_runs(tmp_path)
    assert [name for name, _ in run.parts] == ["esl_id_part_1.csv", "esl_id_part_2.csv"]
    assert published_file(tmp_path, "2024-05-10", "esl_id_part_2.csv").name == "esl_id_part_2.csv"
    for ds, name in (("2024-02-30", "report.html"), ("2024-05-10", "esl_id_part_02.csv")):
        with pytest.raises(HTTPException) as refused:
            published_file(tmp_path, ds, name)
        assert refused.value.status_code == 404
    # A rerun with one batch removes the second partition, and leaves names it never writes alone.
    assert remove_stale_outputs(tmp_path / "2024-05-10", 1) == ["esl_id_part_2.csv"]
    assert sorted(p.name for p in (tmp_path / "2024-05-10").iterdir()) == [
        "esl_id_part_02.csv",
        "esl_id_part_1.csv",
        "report.html",
    ]


def test_published_dates_are_dates_with_success_and_snapshot_in_the_window(tmp_path: Path) -> None:
    from esl_operators.storage import SNAPSHOT_NAME, SUCCESS_NAME, published_dates

    def folder(ds: str, *names: str) -> None:
        (tmp_path / ds).mkdir()
        for name in names:
            (tmp_path / ds / name).write_text("")

    folder("2026-11-01", SUCCESS_NAME, SNAPSHOT_NAME)  # 30 days before: inside a 30-day window
    folder("2026-10-31", SUCCESS_NAME, SNAPSHOT_NAME)  # 31 days before: outside
    folder("2026-11-20", SNAPSHOT_NAME)  # not published (no _SUCCESS)
    folder("2026-11-25", SUCCESS_NAME)  # published before snapshots existed
    folder("2026-11-28", SUCCESS_NAME, SNAPSHOT_NAME)
    folder("2026-12-01", SUCCESS_NAME, SNAPSHOT_NAME)  # ds itself is not "before"
    folder("2026-12-02", SUCCESS_NAME, SNAPSHOT_NAME)  # later dates never count
    (tmp_path / "notes").mkdir()
    assert published_dates(tmp_path, "2026-12-01", 30) == ["2026-11-01", "2026-11-28"]
    assert published_dates(tmp_path, "2026-12-01", 2) == []
    assert published_dates(tmp_path / "missing", "2026-12-01", 30) == []
