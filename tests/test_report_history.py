"""The report's "Since {P}" and "Trends" sections, from history files written by the issue's contract.

The snapshots, change lists and forecasts here are synthetic, written with pyarrow and csv exactly as
issue 14 specifies them, with every expected number counted by hand.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esl_operators.report import FleetStats, publish_report, render_report
from esl_operators.report.history import LISTED, HistoryFileError, history_sections
from esl_operators.storage import CHANGES_NAME, FORECAST_NAME, MANIFEST_NAME, SNAPSHOT_NAME, SUCCESS_NAME
from tests.expected_history import CHANGES_HEADER, FORECAST_HEADER
from tests.report_data import HOSTILE, Places, assert_inert

SNAPSHOT_SCHEMA = pa.schema(
    [
        *((name, pa.string()) for name in ("esl_id", "store", "server", "screen_size", "description")),
        *((name, pa.string()) for name in ("firmware", "rom", "extesl_id", "chip_family")),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        ("last_heartbeat_at", pa.timestamp("ms", tz="UTC")),
        *((name, pa.int64()) for name in ("battery", "refresh_times", "led_times", "product_id", "set_wor")),
        ("temperature", pa.int64()),
        ("frequency", pa.float64()),
    ]
)
A, B = "http://127.0.0.1:18080", "http://127.0.0.1:18081"
H0, H1 = HOSTILE[0], HOSTILE[1]  # store codes that would be markup if let through
DS = "2026-12-01"
D1, D2, D3 = "2026-11-27", "2026-11-28", "2026-11-30"  # no run on 2026-11-29: a gap
#: (esl_id, server, store, battery) per published date; ds last.
SNAPSHOTS = {
    D1: [("a1", A, "S1", 50), ("a2", A, "S1", 15), ("a3", A, H0, 80), ("b1", B, "S1", 5)],
    D2: [("a1", A, "S1", 45), ("a2", A, "S1", 12), ("b1", B, "S1", 4)],
    D3: [("a1", A, "S1", 40), ("a3", A, H0, 78), ("b1", B, "S1", 3), ("b2", B, H1, 90)],
    DS: [("a1", A, "S1", 28), ("a3", A, H1, 77), ("b2", B, H1, None), ("a4", A, H0, 19)],
}
ZERO = {"new": 0, "gone": 0, "battery_drop": 0, "moved": 0, "firmware": 0}
HISTORY = {
    D1: {"previous_date": None, **ZERO},
    D2: {"previous_date": D1, **ZERO, "gone": 1},
    D3: {"previous_date": D2, **ZERO, "new": 2, "gone": 1},
    DS: {"previous_date": D3, "new": 1, "gone": 1, "battery_drop": 1, "moved": 1, "firmware": 0},
}
CHANGES = [
    ("new", "a4", A, H0, "", ""),
    ("gone", "b1", B, "S1", "", ""),
    ("battery_drop", "a1", A, "S1", "40", "28"),
    ("moved", "a3", A, H1, H0, H1),
]
FORECAST = [
    ("a1", A, "S1", "28", "-4.0", "4", "2026-12-05", "4"),
    ("a4", A, H0, "19", "-1.5", "6", "2026-12-07", "4"),
    ("a3", A, H1, "77", "-3.0", "22", "2026-12-23", "4"),
    ("b2", B, H1, "88", "-2.5", "31", "2027-01-01", "4"),
]


def write_snapshot(path: Path, labels: list[tuple[str, str, str, int | None]]) -> None:
    columns: dict[str, list[Any]] = {name: [None] * len(labels) for name in SNAPSHOT_SCHEMA.names}
    for key, index in (("esl_id", 0), ("server", 1), ("store", 2), ("battery", 3)):
        columns[key] = [label[index] for label in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=SNAPSHOT_SCHEMA), path)


def write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def manifest_of(ds: str, history: dict[str, Any] | None, **params: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "date": ds,
        "anchor": f"{ds}T00:00:00Z",
        "rows": len(SNAPSHOTS.get(ds, [])),
        "rows_by_server": {A: 1, B: 1},
        "params": {"lookback_days": 7, **params},
    }
    if history is not None:
        manifest["history"] = history
    return manifest


def publish_earlier(root: Path, ds: str, *, success: bool = True) -> None:
    folder = root / ds
    write_snapshot(folder / SNAPSHOT_NAME, SNAPSHOTS.get(ds, [("x1", A, "S1", 1)]))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest_of(ds, HISTORY.get(ds, ZERO))), encoding="utf-8")
    if success:
        (folder / SUCCESS_NAME).write_text("", encoding="utf-8")


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """An output root with three published dates in the window (and a gap), one too old, one
    unfinished; and the staging folder of ds with its history files."""
    root = tmp_path / "esl_export"
    for ds in (D1, D2, D3):
        publish_earlier(root, ds)
    publish_earlier(root, "2026-10-31")  # 31 days before ds: outside the window
    publish_earlier(root, "2026-11-29", success=False)  # no _SUCCESS: not published
    staging = root / DS / ".staging-0123456789ab"
    write_snapshot(staging / SNAPSHOT_NAME, SNAPSHOTS[DS])
    write_csv(staging / CHANGES_NAME, CHANGES_HEADER, CHANGES)
    write_csv(staging / FORECAST_NAME, FORECAST_HEADER, FORECAST)
    return root, staging


def page(root: Path, staging: Path, manifest: dict[str, Any]) -> str:
    path = publish_report(staging, FleetStats(), manifest, output_root=root)
    return Path(path).read_text(encoding="utf-8")


def kpis(html: str) -> dict[str, str]:
    pairs = re.findall(r'<div class="kpi-value">([^<]*)</div><div class="kpi-label">([^<]*)</div>', html)
    return {label: value for value, label in pairs}


def points(html: str, chart: str) -> dict[int, list[str]]:
    """The value labels of a line chart, per series, in date order."""
    found = re.findall(rf'<g id="{chart}-s(\d+)-(\d+)">\s*<text[^>]*>([^<]*)</text>', html)
    series: dict[int, list[tuple[int, str]]] = {}
    for number, position, text in found:
        series.setdefault(int(number), []).append((int(position), text))
    return {n: [text for _, text in sorted(values)] for n, values in series.items()}


def test_since_and_trends_match_the_data(run: tuple[Path, Path]) -> None:
    root, staging = run
    html = page(root, staging, manifest_of(DS, HISTORY[DS], history_days=30, battery_alert_pct=10))
    assert_inert(html)
    places = Places(html)
    assert "<h2>Since 2026-11-30</h2>" in html
    shown = kpis(html)
    kinds = ("new labels", "gone labels", "battery drops", "moved", "firmware changes")
    assert [shown[k] for k in kinds] == ["1", "1", "1", "1", "0"]
    assert places.tables["since/Stores with the most gone labels"] == [
        {"store": "S1", "server": B, "labels gone": "1"}
    ]
    row = {"ESL id": "a4", "store": H0, "server": A, "previous": "", "current": ""}
    assert places.tables["since/New labels"] == [row]
    assert places.tables["since/Gone labels"] == [{**row, "ESL id": "b1", "store": "S1", "server": B}]
    assert places.tables["since/Battery drops"] == [
        {"ESL id": "a1", "store": "S1", "server": A, "previous": "40", "current": "28"}
    ]
    assert places.tables["since/Moved labels"] == [
        {"ESL id": "a3", "store": H1, "server": A, "previous": H0, "current": H1}
    ]
    assert "since/Firmware changes" not in places.tables
    assert '<a href="_changes.csv">_changes.csv</a>' in html

    # Trends: the window's published dates (not the old one, not the unfinished one), ds last.
    assert places.tables["trends/Per date"] == [
        {"date": D1, "labels exported": "4", "under 20%": "2", "new": "0", "gone": "0"},
        {"date": D2, "labels exported": "3", "under 20%": "2", "new": "0", "gone": "1"},
        {"date": D3, "labels exported": "4", "under 20%": "1", "new": "2", "gone": "1"},
        {"date": DS, "labels exported": "4", "under 20%": "1", "new": "1", "gone": "1"},
    ]
    assert points(html, "trend-labels") == {0: ["4", "3", "4", "4"], 1: ["2", "2", "1", "1"]}
    assert points(html, "trend-changes") == {0: ["0", "0", "2", "1"], 1: ["0", "1", "1", "1"]}
    # Uptime over 4 dates: a1 4/4 and a2 2/4 in S1; a3 3/4 (last in H1), a4 1/4, b1 3/4, b2 2/4.
    assert places.tables["trends/Label uptime per store"] == [
        {"store": H0, "server": A, "labels seen": "1", "uptime": "25.0%"},
        {"store": H1, "server": B, "labels seen": "1", "uptime": "50.0%"},
        {"store": H1, "server": A, "labels seen": "1", "uptime": "75.0%"},
        {"store": "S1", "server": A, "labels seen": "2", "uptime": "75.0%"},
        {"store": "S1", "server": B, "labels seen": "1", "uptime": "75.0%"},
    ]
    assert places.tables["trends/Batteries to order"] == [
        {"store": H0, "server": A, "within 7 days": "1", "within 30 days": "1"},
        {"store": "S1", "server": A, "within 7 days": "1", "within 30 days": "1"},
        {"store": H1, "server": A, "within 7 days": "0", "within 30 days": "1"},
        {"store": H1, "server": B, "within 7 days": "0", "within 30 days": "0"},
    ]
    assert (shown["within 7 days"], shown["within 30 days"]) == ("2", "3")
    assert "expected under 10% within 7 and within 30 days" in html
    assert '<a href="_battery_forecast.csv">_battery_forecast.csv</a>' in html
    # Store codes reach the charts as text (matplotlib escapes them).
    assert any(H0[:20] in text for text in places.charts["Stores with the lowest label uptime"])


def test_the_window_is_the_history_days_param(run: tuple[Path, Path]) -> None:
    root, staging = run
    html = page(root, staging, manifest_of(DS, HISTORY[DS], history_days=2))
    assert [r["date"] for r in Places(html).tables["trends/Per date"]] == [D3, DS]
    assert "Over the 2 published dates of the last 2 days" in html
    # Given to publish_report (as the aggregate step does), the settings win over the recorded params.
    manifest = manifest_of(DS, HISTORY[DS], history_days=30, battery_alert_pct=10)
    path = publish_report(
        staging, FleetStats(), manifest, output_root=root, history_days=3, battery_alert_pct=15
    )
    html = Path(path).read_text(encoding="utf-8")
    assert [r["date"] for r in Places(html).tables["trends/Per date"]] == [D2, D3, DS]
    assert "expected under 15% within 7 and within 30 days" in html


def test_lists_are_capped_and_link_the_file(run: tuple[Path, Path]) -> None:
    root, staging = run
    rows = [("new", f"n{i:02d}", A, "S1", "", "") for i in range(LISTED + 5)]
    write_csv(staging / CHANGES_NAME, CHANGES_HEADER, rows)
    history = {**HISTORY[DS], "new": LISTED + 5, "gone": 0, "battery_drop": 0, "moved": 0}
    html = page(root, staging, manifest_of(DS, history))
    listed = Places(html).tables["since/New labels"]
    assert [r["ESL id"] for r in listed] == [f"n{i:02d}" for i in range(LISTED)]
    assert "<h3>New labels (20)</h3>" in html
    assert '<p class="note">5 more in <a href="_changes.csv">_changes.csv</a>.</p>' in html
    assert "since/Stores with the most gone labels" not in Places(html).tables


def test_a_date_with_no_previous_one(run: tuple[Path, Path], tmp_path: Path) -> None:
    _, staging = run
    empty = tmp_path / "empty_root"
    (staging / CHANGES_NAME).unlink()  # no P: no change list
    html = page(empty, staging, manifest_of(DS, {"previous_date": None, **ZERO}))
    assert "<h2>Since the previous published date</h2>" in html
    assert "No published date in the 30 days before this one: nothing to compare with yet." in html
    assert Places(html).tables["trends/Per date"] == [
        {"date": DS, "labels exported": "4", "under 20%": "1", "new": "0", "gone": "0"}
    ]


def test_no_history_block_leaves_the_report_as_it_was(run: tuple[Path, Path]) -> None:
    root, staging = run
    manifest = manifest_of(DS, None)
    html = page(root, staging, manifest)
    assert html == render_report(FleetStats(), manifest, anchor_ms=1_796_083_200_000)
    assert 'id="since"' not in html and 'id="trends"' not in html
    assert history_sections(staging, root, manifest, history_days=30, battery_alert_pct=10) is None


def test_a_change_file_without_the_contract_columns_is_refused(run: tuple[Path, Path]) -> None:
    root, staging = run
    write_csv(staging / CHANGES_NAME, ["change", "esl_id", "store"], [("new", "a4", "S1")])
    with pytest.raises(HistoryFileError) as refused:
        page(root, staging, manifest_of(DS, HISTORY[DS]))
    assert str(refused.value) == (
        f"{staging / CHANGES_NAME}: expected the columns "
        "['change', 'esl_id', 'server', 'store', 'previous', 'current'], found ['change', 'esl_id', 'store']"
    )
