"""Published CSV layouts, sort order and quoting, on Arrow tables of part rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pytest

from esl_operators.csvformat import (
    LEGACY_COLUMNS,
    STANDARD_COLUMNS,
    as_table,
    check_style,
    render_lines,
    sort_order,
    sort_part,
    to_output,
)
from esl_operators.exceptions import ConfigError
from esl_operators.partitions import write_lines_atomic
from esl_operators.records import PART_COLUMNS

# 2024-05-09T16:30:05Z and 2024-01-02T00:00:00Z
HB, CREATED = "1715272205123", "1704153600000"


def _part(rows: list[dict[str, str]]) -> pa.Table:
    base = dict.fromkeys(PART_COLUMNS, "")
    return as_table(pd.DataFrame([{**base, **r} for r in rows], columns=list(PART_COLUMNS), dtype=object))


def test_sort_is_numeric_by_frequency_then_esl_id() -> None:
    table = _part(
        [
            {"esl_id": "B", "frequency": "10.0"},
            {"esl_id": "C", "frequency": "9.5"},
            {"esl_id": "A", "frequency": "10.0"},
            {"esl_id": "D", "frequency": "0.0"},
            {"esl_id": "上海", "frequency": "0.0"},
            {"esl_id": "Z", "frequency": "0.0"},
        ]
    )
    # numeric, not text order (9.5 < 10.0); ties by id in code-point order, as Python sorts
    assert sort_part(table)["esl_id"].to_pylist() == ["D", "Z", "上海", "C", "A", "B"]


def test_standard_layout_is_utc_iso() -> None:
    table = _part(
        [
            {
                "esl_id": "X",
                "create_time": CREATED,
                "last_hb_time": HB,
                "product_id": "419",
                "chip_family": "TI-CC2640",
            },
            {"esl_id": "Y", "last_hb_time": "0"},
        ]
    )
    out = to_output(table, "standard", ZoneInfo("Asia/Shanghai"))
    assert tuple(out.column_names) == STANDARD_COLUMNS
    first, second = out.to_pylist()
    assert (first["created_at"], first["last_heartbeat_at"]) == (
        "2024-01-02T00:00:00Z",
        "2024-05-09T16:30:05Z",
    )
    assert (first["product_id"], first["chip_family"]) == ("419", "TI-CC2640")
    assert (second["created_at"], second["last_heartbeat_at"]) == ("", "1970-01-01T00:00:00Z")


def test_legacy_layout_uses_zone_and_chip_names() -> None:
    table = _part(
        [
            {"esl_id": "X", "store": "S", "create_time": CREATED, "last_hb_time": HB, "battery": "50",
             "product_id": "419", "chip_family": "TI-CC2640", "frequency": "1.5"},
            {"esl_id": "Y", "last_hb_time": HB, "product_id": "0"},
            {"esl_id": "Z", "last_hb_time": HB, "product_id": ""},
        ]
    )  # fmt: skip
    out = to_output(table, "legacy", ZoneInfo("Asia/Shanghai"))
    assert tuple(out.column_names) == LEGACY_COLUMNS
    assert list(out.to_pylist()[0].values()) == [
        "X", "S", "2024-01-02 08:00:00", "50", "2024-05-10 00:30:05", "", "", "", "", "", "", "",
        "TI-CC2640", "", "1.5",
    ]  # fmt: skip
    assert out["product_id"].to_pylist() == ["TI-CC2640", "0", ""]
    assert out["创建时间"].to_pylist()[1:] == ["", ""]


def test_legacy_times_follow_daylight_saving() -> None:
    # 2024-03-31 Europe/Berlin switches from +01:00 to +02:00 at 01:00 UTC
    table = _part(
        [{"esl_id": "A", "last_hb_time": "1711846799000"}, {"esl_id": "B", "last_hb_time": "1711846800000"}]
    )
    out = to_output(table, "legacy", ZoneInfo("Europe/Berlin"))
    assert out["最后心跳时间"].to_pylist() == ["2024-03-31 01:59:59", "2024-03-31 03:00:00"]


TRICKY = [
    "plain",
    "a,b",
    'say "hi"',
    "two\nlines",
    "cr\rhere",
    "",
    " lead",
    "上海.001",
    "50%off",
    '"',
    ",",
    "x" * 300,
]


def _csv_module_line(cells: list[str]) -> str:
    # Python's csv module decides quoting by the characters of its line terminator; with "\r\n" it
    # quotes both CR and LF, as RFC 4180 asks and as we do; the line end itself is then "\n".
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2] + "\n"


def test_written_csv_matches_the_csv_module_quoting(tmp_path: Path) -> None:
    rows = [
        {
            "esl_id": f"E{i:03d}",
            "description": text,
            "store": TRICKY[-1 - i % len(TRICKY)],
            "frequency": str(i % 3),
        }
        for i, text in enumerate(TRICKY * 3)
    ]
    table = _part(rows)
    path = tmp_path / "out.csv"
    write_lines_atomic(
        path, STANDARD_COLUMNS, render_lines(table, "standard", ZoneInfo("UTC")), sort_order(table)
    )
    ordered = to_output(sort_part(table), "standard", ZoneInfo("UTC")).to_pylist()
    expected = _csv_module_line(list(STANDARD_COLUMNS)) + "".join(
        _csv_module_line(list(r.values())) for r in ordered
    )
    assert path.read_bytes() == expected.encode("utf-8")
    assert "cr\rhere" in path.read_bytes().decode("utf-8") and '"cr\rhere"' in expected
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    assert list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"))))[1:] == [
        list(r.values()) for r in ordered
    ]


def test_empty_partition_is_a_header_line(tmp_path: Path) -> None:
    table = _part([{"esl_id": "gone"}]).slice(0, 0)
    path = tmp_path / "empty.csv"
    write_lines_atomic(
        path, LEGACY_COLUMNS, render_lines(table, "legacy", ZoneInfo("UTC")), sort_order(table)
    )
    assert path.read_text(encoding="utf-8") == ",".join(LEGACY_COLUMNS) + "\n"


def test_style_validation_names_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="'fancy'"):
        check_style("fancy", "UTC")
    with pytest.raises(ConfigError, match="Mars/Base"):
        check_style("legacy", "Mars/Base")
    assert check_style("legacy", "Europe/Berlin")[1] == ZoneInfo("Europe/Berlin")
