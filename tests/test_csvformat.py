"""Published CSV layouts, sort order and quoting, on Arrow tables of part rows."""

from __future__ import annotations

import csv
import io
import json
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


# --- spreadsheet safety (OWASP CSV injection) ------------------------------------------------------

# One label whose every server text field starts like a formula, and whose numbers are negative or
# signed: the numbers must never be touched (records.py validated them), the text always is.
FORMULAS = {
    "esl_id": '=HYPERLINK("http://x")',
    "store": "+SUM(A1:A9)",
    "create_time": CREATED,
    "last_hb_time": HB,
    "battery": "7",
    "screen_size": "-2+3",
    "description": "@cmd|' /C calc'!A0, aisle 4",
    "refresh_times": "10",
    "firmware": "\tTAB",
    "rom": "\rCR",
    "extesl_id": "=1",
    "set_wor": "-1",
    "temperature": "-5.0",
    "frequency": "0.5",
}
HARMLESS = {
    "esl_id": "A=1",
    "store": "S 1",
    "description": "1+1",
    "last_hb_time": HB,
    "temperature": "-0.5",
    "frequency": "0.0",
}


def _written(tmp_path: Path, style: str, safe: bool | None) -> bytes:
    table = _part([FORMULAS, HARMLESS])
    path = tmp_path / f"{style}-{safe}.csv"
    columns = STANDARD_COLUMNS if style == "standard" else LEGACY_COLUMNS
    lines = render_lines(table, style, ZoneInfo("UTC"), safe)  # type: ignore[arg-type]
    write_lines_atomic(path, columns, lines, sort_order(table))
    return path.read_bytes()


def test_the_legacy_layout_guards_formula_cells_by_default(tmp_path: Path) -> None:
    expected = (
        "价签ID,门店,创建时间,电量,最后心跳时间,尺寸,描述,刷屏次数,闪灯时长,firmware,rom,extesl_id,product_id,"
        "set_wor,frequency\n"
        "A=1,S 1,,,2024-05-09 16:30:05,,1+1,,,,,,,,0.0\n"
        '"\'=HYPERLINK(""http://x"")",\'+SUM(A1:A9),2024-01-02 00:00:00,7,2024-05-09 16:30:05,\'-2+3,'
        "\"'@cmd|' /C calc'!A0, aisle 4\",10,,'\tTAB,\"'\rCR\",'=1,,'-1,0.5\n"
    )
    assert _written(tmp_path, "legacy", None) == expected.encode("utf-8")
    assert _written(tmp_path, "legacy", True) == expected.encode("utf-8")
    # Read back as any CSV reader does: the guarded cells are the text plus one leading quote.
    rows = list(csv.reader(io.StringIO(expected)))
    assert rows[2][0] == "'" + FORMULAS["esl_id"] and rows[2][10] == "'\rCR"


def test_the_standard_layout_stays_byte_exact_unless_asked(tmp_path: Path) -> None:
    header = ",".join(STANDARD_COLUMNS) + "\n"
    plain = (
        header + "A=1,S 1,,,2024-05-09T16:30:05Z,,,1+1,,,,,,,,,-0.5,0.0\n"
        '"=HYPERLINK(""http://x"")",+SUM(A1:A9),,2024-01-02T00:00:00Z,2024-05-09T16:30:05Z,7,-2+3,'
        '"@cmd|\' /C calc\'!A0, aisle 4",10,,\tTAB,"\rCR",=1,,,-1,-5.0,0.5\n'
    )
    assert _written(tmp_path, "standard", None) == plain.encode("utf-8")
    assert _written(tmp_path, "standard", False) == plain.encode("utf-8")
    guarded = (
        header + "A=1,S 1,,,2024-05-09T16:30:05Z,,,1+1,,,,,,,,,-0.5,0.0\n"
        '"\'=HYPERLINK(""http://x"")",\'+SUM(A1:A9),,2024-01-02T00:00:00Z,2024-05-09T16:30:05Z,7,\'-2+3,'
        "\"'@cmd|' /C calc'!A0, aisle 4\",10,,'\tTAB,\"'\rCR\",'=1,,,'-1,-5.0,0.5\n"
    )
    assert _written(tmp_path, "standard", True) == guarded.encode("utf-8")


def test_the_legacy_layout_can_be_left_unguarded(tmp_path: Path) -> None:
    written = _written(tmp_path, "legacy", False).decode("utf-8")
    assert written.split("\n")[2].startswith('"=HYPERLINK(""http://x"")",+SUM(A1:A9),')
    assert not [start for start in ("'=", "'+", "'-", "'@", "'\t", "'\r") if start in written]


@pytest.mark.parametrize(
    ("style", "safe", "guarded"),
    [("legacy", None, True), ("legacy", False, False), ("standard", None, False), ("standard", True, True)],
)
def test_the_aggregate_step_applies_and_records_the_setting(
    style: str, safe: bool | None, guarded: bool, tmp_path: Path
) -> None:
    from esl_operators.aggregate import aggregate_run
    from esl_operators.batch import batch_manifest
    from esl_operators.engine import ServerResult, StoreResult
    from esl_operators.parts import PartWriter
    from esl_operators.storage import part_path
    from tests.support import ANCHOR, CUTOFF_MS, DS

    rows = [
        tuple({**dict.fromkeys(PART_COLUMNS, ""), **r}[c] for c in PART_COLUMNS) for r in (FORMULAS, HARMLESS)
    ]
    with PartWriter(part_path(tmp_path, DS, 0)) as writer:
        writer.write_rows(rows)
    stores = [StoreResult("+SUM(A1:A9)", rows=1, seen=1), StoreResult("S 1", rows=1, seen=1)]
    manifest = batch_manifest(
        [ServerResult("", stores=stores)], batch=0, part="p", anchor=ANCHOR, cutoff_ms=CUTOFF_MS, duration_s=0
    )
    aggregate_run(
        [manifest], output_root=tmp_path, ds=DS, header_style=style, spreadsheet_safe=safe, report=False
    )
    published = (tmp_path / DS / "esl_id_part_1.csv").read_bytes()
    assert published == _written(tmp_path, style, guarded)
    run = json.loads((tmp_path / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert run["spreadsheet_safe"] is guarded
