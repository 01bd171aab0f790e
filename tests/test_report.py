"""The fleet report: numbers on the page match a small hand-counted dataset, streaming changes nothing,
manifest failures are shown with their reasons, data is escaped, and the page needs no network."""

from __future__ import annotations

import html
import importlib.resources
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from esl_operators.manifest import RunManifest
from esl_operators.parts import PART_SCHEMA
from esl_operators.records import PART_COLUMNS
from esl_operators.report import FleetStats, anchor_ms_of, publish_report, render_report
from esl_operators.report.attention import ATTENTION, HOUSEKEEPING, SHOWN_ELSEWHERE
from esl_operators.simulator import build_fleet
from esl_operators.templating import TEMPLATES
from tests.report_data import HOSTILE, Places, assert_inert, clipped, fleet_parts
from tests.support import ANCHOR_MS, DAY_MS

HOUR_MS = DAY_MS // 24
EVIL = "<script>alert('x')</script>"
S1, S2 = "esl_sh_001", "esl_bj_002"


def _row(
    esl_id: str, store: str, server: str, battery: str, days_before: float, freq: float, **kw: str
) -> dict:
    row = dict.fromkeys(PART_COLUMNS, "")
    row.update(
        esl_id=esl_id,
        store=store,
        server=server,
        battery=battery,
        last_hb_time=str(ANCHOR_MS - int(days_before * DAY_MS)),
        frequency=repr(freq),
        refresh_times="100",
        screen_size=kw.get("screen", "2.13"),
        chip_family=kw.get("chip", ""),
        firmware=kw.get("firmware", "5.3.12"),
        description=kw.get("description", ""),
    )
    return row


# Ten labels whose every number below was counted by hand.
ROWS = [
    _row("10-00-00-01", EVIL, S1, "5", 0.5, 0.0, chip="stellarPro", description="Aisle <b>1</b> & co"),
    _row("10-00-00-02", EVIL, S1, "15", 6.5, 3.0, chip="stellarPro", screen="2.9"),
    _row("10-00-00-03", EVIL, S1, "19", 2, 120.0, chip="nebular"),
    _row("10-00-00-04", EVIL, S1, "", 7, 0.5, screen="4.2"),
    _row("10-00-00-05", "上海.001", S1, "100", -0.25, 1500.0, chip="TI-CC2640"),
    _row("10-00-00-06", "上海.001", S1, "20", 1, 10.0, chip="Telink-8258"),
    _row("10-00-00-00", "上海.001", S1, "0", 3.2, 10.0, chip="Telink-8258", screen="7.5"),
    _row("10-00-00-08", "50%off", S2, "95", 6.9, 999.99, chip="nebular", screen="1.54"),
    _row("10-00-00-09", "50%off", S2, "42", 0.1, 2.0, chip="nebular", screen="2.9"),
    _row("10-00-00-10", "50%off", S2, "9", 4, 45.5, chip="stellarPro", screen="2.9"),
]
MANIFEST: dict[str, Any] = {
    "date": "2024-05-10",
    "anchor": "2024-05-10T00:00:00Z",
    "heartbeat_cutoff": "2024-05-03T00:00:00Z",
    "rows": 10,
    "partitions": [
        {"file": "esl_id_part_1.csv", "rows": 7, "servers": [S1]},
        {"file": "esl_id_part_2.csv", "rows": 3, "servers": [S2]},
    ],
    "rows_by_server": {S1: 7, S2: 3},
    "rows_by_store": {S1: {EVIL: 4, "上海.001": 3, "Empty 9": 0}, S2: {"50%off": 3}},
    "capped_stores": [],
    "errors": [],
    "invalid_records": {"count": 0, "listed": []},
    "stale_labels": 4,
    "removed_stale_partitions": [],
    "params": {"lookback_days": 7, "servers_per_batch": 1},
    "durations_s": {"batches": {"0": 12.5, "1": 80.0}, "aggregate": 1.5, "servers": {S1: 12.4, S2: 79.9}},
    "servers": {},
}


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(PART_COLUMNS), dtype=str)


def _stats(chunks: list[list[dict]], top_n: int = 15) -> FleetStats:
    stats = FleetStats(top_n=top_n)
    for chunk in chunks:
        stats.add(_frame(chunk))
    return stats


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(_stats([ROWS]), MANIFEST, anchor_ms=ANCHOR_MS)


def bars(html: str, chart: str) -> list[str]:
    """The value labels of one chart's bars, in bar order, as drawn in its SVG."""
    found = re.findall(rf'<g id="{chart}-v(\d+)">\s*<text[^>]*>([^<]*)</text>', html)
    return [text for _, text in sorted(found, key=lambda f: int(f[0]))]


def kpis(html: str) -> dict[str, str]:
    pairs = re.findall(r'<div class="kpi-value">([^<]*)</div><div class="kpi-label">([^<]*)</div>', html)
    return {label: value for value, label in pairs}


def table_after(html: str, heading: str) -> list[list[str]]:
    """Body rows of the first table after an <h3> containing ``heading``."""
    start = html.index(heading)
    table = html[start : html.index("</table>", start)]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]


def test_totals_match_the_data(page: str) -> None:
    assert kpis(page) == {
        "labels exported": "10",
        "stores with labels": "3",
        "servers": "2",
        "run time": "1 min 22 s",  # slowest batch 80.0 + aggregate 1.5
        "battery under 20%": "5",
        "close to dropping out": "3",
        "failures": "0",
    }
    assert "of 4 listed" in page
    assert table_after(page, "Rows per partition") == [
        ["esl_id_part_1.csv", "7", S1],
        ["esl_id_part_2.csv", "3", S2],
    ]
    assert "No failures, skipped or invalid labels in this run." in page
    assert "Stores that exported no labels: Empty 9 (esl_sh_001)." in page


def test_battery_histogram_and_stores(page: str) -> None:
    # 0-9: 5, 0, 9 | 10-19: 15, 19 | 20-29: 20 | 40-49: 42 | 90-100: 100, 95 | one label without a value
    assert bars(page, "battery") == ["3", "2", "1", "0", "1", "0", "0", "0", "0", "2"]
    assert "1 labels did not report a usable battery level" in page
    assert bars(page, "battery-stores") == ["3", "1", "1"]
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert table_after(page, "Stores to visit first") == [
        [escaped, S1, "4", "3", "75.0%"],
        ["50%off", S2, "3", "1", "33.3%"],
        ["上海.001", S1, "3", "1", "33.3%"],
    ]


def test_threshold_is_a_render_choice() -> None:
    html = render_report(_stats([ROWS]), MANIFEST, anchor_ms=ANCHOR_MS, battery_threshold=50)
    assert kpis(html)["battery under 50%"] == "7"  # 5, 15, 19, 20, 0, 42, 9


def test_frequency_distribution_and_outliers(page: str) -> None:
    # 0 | <1: 0.5 | 2-5: 2.0, 3.0 | 10-20: 10, 10 | 20-50: 45.5 | 100-200: 120 | 500-1000 | >=1000
    assert bars(page, "frequency") == ["1", "1", "0", "2", "0", "2", "1", "0", "1", "0", "1", "1"]
    outliers = table_after(page, "labels refreshing most often")
    assert [(r[0], r[1], r[4]) for r in outliers[:6]] == [
        ("1", "10-00-00-05", "1,500.00"),
        ("2", "10-00-00-08", "999.99"),
        ("3", "10-00-00-03", "120.00"),
        ("4", "10-00-00-10", "45.50"),
        ("5", "10-00-00-00", "10.00"),  # tie with -06: the smaller id first
        ("6", "10-00-00-06", "10.00"),
    ]
    assert "Fleet average: <b>269.10</b>" in page  # 2690.99 / 10


def test_heartbeat_ages_and_labels_about_to_drop_out(page: str) -> None:
    # Calendar days before 2024-05-10: 0 (future), 1, 1, 1, 2, 4, 4, 7, 7, 7
    assert bars(page, "heartbeat") == ["1", "3", "1", "0", "2", "0", "0", "3"]
    assert bars(page, "heartbeat-stores") == ["2", "1"]
    oldest = table_after(page, "labels silent the longest")
    assert [(r[0], r[3]) for r in oldest[:3]] == [
        ("10-00-00-04", "2024-05-03 00:00 UTC"),
        ("10-00-00-08", "2024-05-03 02:24 UTC"),
        ("10-00-00-02", "2024-05-03 12:00 UTC"),
    ]


def test_hardware_breakdowns(page: str) -> None:
    assert bars(page, "chips") == ["3", "3", "2", "1", "1"]  # nebular, stellarPro, Telink, TI, unknown
    assert bars(page, "screens") == ["1", "4", "3", "1", "1"]  # 1.54, 2.13, 2.9, 4.2, 7.5


def test_streaming_in_chunks_gives_the_same_page() -> None:
    whole = render_report(_stats([ROWS], top_n=5), MANIFEST, anchor_ms=ANCHOR_MS)
    chunked = render_report(
        _stats([ROWS[:3], [], ROWS[3:4], ROWS[4:]], top_n=5), MANIFEST, anchor_ms=ANCHOR_MS
    )
    assert chunked == whole
    stats = _stats([ROWS[6:], ROWS[:6]], top_n=5)
    assert [o.esl_id for o in stats.outliers] == [
        "10-00-00-05",
        "10-00-00-08",
        "10-00-00-03",
        "10-00-00-10",
        "10-00-00-00",
    ]
    assert [s.esl_id for s in stats.oldest_heartbeats][:3] == ["10-00-00-04", "10-00-00-08", "10-00-00-02"]
    assert len(stats.oldest_heartbeats) == 5


def test_data_is_escaped_everywhere(page: str) -> None:
    assert "<script" not in page and "</script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # tables and SVG tick labels
    assert "Aisle &lt;b&gt;1&lt;/b&gt; &amp; co" in page and "<b>1</b>" not in page
    assert "上海.001" in page and "50%off" in page


def test_page_is_self_contained(page: str) -> None:
    references = re.findall(r"(?:src|href)\s*=\s*\"([^\"]*)\"", page, re.IGNORECASE)
    assert references and all(r.startswith("#") for r in references)  # only the SVGs' own defs
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # eight inline SVGs, no id shared between them
    assert {r[1:] for r in references} <= set(ids)
    assert not re.search(r"\bsrc\s*=", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(http" not in page
    assert page.count("<svg ") == 8
    assert "@media print" in page


def test_failures_and_unknown_skip_lists_are_shown_with_reasons() -> None:
    manifest = {
        **MANIFEST,
        "errors": [{"server": S2, "store": EVIL, "error": "HTTP 503 from /api3/users"}],
        "capped_stores": [{"server": S1, "store": "上海.001", "rows": 50000}],
        "invalid_records": {
            "count": 1,
            "listed": [{"server": S1, "esl_id": "10-FF", "reason": "last_hb_time is missing"}],
        },
        # A list the aggregate task may add later: rendered without knowing its name.
        "skipped_ids": [{"esl_id": "10-EE", "store": "50%off", "reason": "detail returned 404"}],
        "removed_stale_partitions": ["esl_id_part_3.csv"],
        # Shapes the aggregate task reports in later versions.
        "removed_labels": {
            "count": 1,
            "listed": [{"esl_id": "10-DD", "reason": "duplicate of 10-DD in 50%off"}],
        },
        "blanked_fields": {"battery": 2},
        "duplicates_dropped": 1,
        "retries": 3,
        "removed_stale_files": ["_parts/batch-4.arrow"],
        "partitions": [{**p, "dropped_duplicate_rows": 1} for p in MANIFEST["partitions"]],
    }
    html = render_report(_stats([ROWS]), manifest, anchor_ms=ANCHOR_MS)
    attention = html[html.index('id="attention"') : html.index('id="totals"')]
    assert "Needs attention" in attention
    for expected in (
        "Errors (1)",
        "HTTP 503 from /api3/users",
        "Capped stores (1)",
        "Invalid records (1)",
        "last_hb_time is missing",
        "Skipped ids (1)",
        "detail returned 404",
        "&lt;script&gt;",
        "Removed labels (1)",
        "duplicate of 10-DD in 50%off",
        "Blanked fields (1)",
        "<td>battery</td><td>2</td>",
        "Duplicates dropped: 1",
    ):
        assert expected in attention, expected
    assert "<script" not in html
    housekeeping = html[html.index("Housekeeping") : html.index('id="totals"')]
    for expected in (
        "Removed stale partitions (1)",
        "Removed stale files (1)",
        "_parts/batch-4.arrow",
        "Retries: 3",
    ):
        assert expected in housekeeping, expected
    assert "<th class=num>dropped duplicate rows</th>" in html
    assert kpis(html)["failures"] == "1"


def test_every_run_manifest_field_has_its_place_in_the_report() -> None:
    """Attention is decided by field name: a new manifest field must be placed on purpose."""
    fields = set(RunManifest.__annotations__)
    assert fields - ATTENTION - HOUSEKEEPING - SHOWN_ELSEWHERE == set()
    assert not ATTENTION & HOUSEKEEPING and not (ATTENTION | HOUSEKEEPING) & SHOWN_ELSEWHERE
    values: dict[str, Any] = {
        "errors": [{"server": S1, "store": "x", "error": "HTTP 500"}],
        "capped_stores": [{"server": S1, "store": "x"}],
        "invalid_records": {"count": 1, "listed": [{"esl_id": "1"}]},
        "removed_labels": {"count": 2, "listed": []},
        "blanked_fields": {"battery": 1},
        "duplicates_dropped": 1,
        "failed_store_rows_dropped": 7,
        "retries": 2,
        "removed_stale_files": ["esl_id_part_4.csv"],
        "a_field_from_a_newer_version": [1],
    }
    html = render_report(_stats([ROWS]), {**MANIFEST, **values}, anchor_ms=ANCHOR_MS)
    attention = html[html.index('id="attention"') : html.index("Housekeeping")]
    housekeeping = html[html.index("Housekeeping") : html.index('id="totals"')]
    for key in values:
        box = housekeeping if key in HOUSEKEEPING else attention
        assert f"<h3>{key.replace('_', ' ').capitalize()}" in box, key
    assert "Failed store rows dropped: 7" in attention and "Removed labels (2)" in attention


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("logical_date", ": the run's logical date)"),
        ("date", ": the date given to esl-export fetch)"),
        (None, ")"),
        ("<script>", ")"),  # unknown: not named, and never echoed
    ],
)
def test_the_header_names_where_the_anchor_came_from(source: str | None, named: str) -> None:
    manifest = {**MANIFEST, "anchor_source": source}
    page = render_report(_stats([ROWS]), manifest, anchor_ms=ANCHOR_MS)
    assert f"7 days before the run's anchor, 2024-05-10 00:00 UTC{named}." in html.unescape(page)
    assert "<script>" not in page


def test_row_count_mismatch_is_flagged() -> None:
    html = render_report(_stats([ROWS[:4]]), MANIFEST, anchor_ms=ANCHOR_MS)
    assert "The manifest reports 10 rows but the report counted 4." in html


def test_minimal_manifest_and_empty_fleet_render() -> None:
    html = render_report(FleetStats(), {}, anchor_ms=ANCHOR_MS)
    assert kpis(html)["labels exported"] == "0"
    assert html.count("<svg ") == 8


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="lack columns"):
        FleetStats().add(pd.DataFrame({"esl_id": ["1"]}))
    with pytest.raises(ValueError, match="battery_threshold"):
        render_report(FleetStats(), {}, anchor_ms=ANCHOR_MS, battery_threshold=0)


def test_simulated_fleet_matches_an_independent_count() -> None:
    fleet = build_fleet(servers=2, stores=4, esls=150, seed=3, reference_ms=ANCHOR_MS)
    cutoff = ANCHOR_MS - 7 * DAY_MS
    stats = FleetStats()
    for frame in fleet_parts(fleet, ["a", "b"], cutoff):
        stats.add(frame)
    kept = [
        d
        for server in fleet.servers
        for store, details in server.real_stores.items()
        for d in details
        if d["last_hb_time"] >= cutoff
    ]
    assert stats.labels == len(kept)
    deciles = Counter(min(int(d["battery"]) // 10, 9) for d in kept)
    html = render_report(stats, {"heartbeat_cutoff": "2024-05-03T00:00:00Z"}, anchor_ms=ANCHOR_MS)
    assert bars(html, "battery") == [f"{deciles[i]:,}" for i in range(10)]
    oldest = sorted(kept, key=lambda d: (d["last_hb_time"], d["esl_id"]))[:15]
    assert [s.esl_id for s in stats.oldest_heartbeats] == [d["esl_id"] for d in oldest]


def test_publish_report_writes_the_page_atomically(tmp_path: Path) -> None:
    assert anchor_ms_of(MANIFEST) == ANCHOR_MS
    assert anchor_ms_of({"date": "2024-05-10"}) == ANCHOR_MS
    folder = tmp_path / "2024-05-10"
    path = publish_report(folder, _stats([ROWS]), MANIFEST)
    assert path == folder / "report.html"
    assert kpis(path.read_text(encoding="utf-8"))["labels exported"] == "10"
    assert [p.name for p in folder.iterdir()] == ["report.html"]  # no temporary file left behind


# --- Arrow chunks ---------------------------------------------------------------------------------


def _arrow(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PART_SCHEMA)


def _simulated_rows() -> list[dict]:
    fleet = build_fleet(servers=2, stores=4, esls=1500, seed=3, reference_ms=ANCHOR_MS)
    frames = fleet_parts(fleet, ["a", "b"], ANCHOR_MS - 7 * DAY_MS)
    return [row for frame in frames for row in frame.to_dict("records")] + ROWS


def _facts(stats: FleetStats) -> dict[str, Any]:
    """Everything the stats hold, in a comparable shape."""
    return {
        "labels": stats.labels,
        "stores": {
            key: (s.labels, s.battery.tolist(), s.battery_missing, dict(s.heartbeat_days))
            for key, s in stats.stores.items()
        },
        "frequency_sums": {key: s.frequency_sum for key, s in stats.stores.items()},
        "frequency_zero": stats.frequency_zero,
        "frequency_bins": stats.frequency_bins.tolist(),
        "chips": dict(stats.chip_families),
        "screens": dict(stats.screen_sizes),
        "firmwares": dict(stats.firmwares),
        "outliers": stats.outliers,
        "silent": stats.oldest_heartbeats,
    }


def test_arrow_chunks_of_any_size_give_the_same_stats() -> None:
    rows = _simulated_rows()
    whole = _arrow(rows)
    assert whole.num_rows > 1000
    at_once = FleetStats()
    at_once.add(whole)
    in_batches = FleetStats()
    batches = whole.to_batches(max_chunksize=7)
    assert len(batches) == -(-whole.num_rows // 7)
    for batch in batches:
        in_batches.add(batch)  # RecordBatch
    chunked = FleetStats()
    chunked.add(pa.Table.from_batches(batches))  # one Table whose columns have many chunks
    from_frame = FleetStats()
    from_frame.add(_frame(rows))  # a pandas frame, read through the Arrow stream protocol
    expected = _facts(at_once)
    sums = expected.pop("frequency_sums")
    assert len(expected["stores"]) == len({(r["server"], r["store"]) for r in rows}) > 8
    assert len(expected["outliers"]) == len(expected["silent"]) == 15
    for other in (in_batches, chunked, from_frame):
        facts = _facts(other)
        # Float sums depend on the order of addition; everything else is counted exactly.
        assert facts.pop("frequency_sums") == pytest.approx(sums, rel=1e-12)
        assert facts == expected
    page = render_report(at_once, MANIFEST, anchor_ms=ANCHOR_MS)
    assert render_report(in_batches, MANIFEST, anchor_ms=ANCHOR_MS) == page


def test_arrow_input_matches_the_hand_counted_page(page: str) -> None:
    stats = FleetStats()
    for start in range(0, len(ROWS), 3):
        stats.add(_arrow(ROWS[start : start + 3]).to_batches()[0])
    assert render_report(stats, MANIFEST, anchor_ms=ANCHOR_MS) == page
    sums = {key: s.frequency_sum for key, s in stats.stores.items()}
    assert sums == {
        (S1, EVIL): 0.0 + 3.0 + 120.0 + 0.5,
        (S1, "上海.001"): 1500.0 + 10.0 + 10.0,
        (S2, "50%off"): 999.99 + 2.0 + 45.5,
    }


def test_ties_at_the_cut_go_to_the_smaller_id() -> None:
    # The winners come last in the chunk, so keeping the first rows seen would pick the wrong ones.
    rows = [_row(f"10-00-01-{n:02d}", "s", S1, "50", 3, 10.0) for n in range(40, 0, -1)]
    stats = FleetStats(top_n=3)
    stats.add(_arrow(rows))
    assert [o.esl_id for o in stats.outliers] == ["10-00-01-01", "10-00-01-02", "10-00-01-03"]
    assert [s.esl_id for s in stats.oldest_heartbeats] == ["10-00-01-01", "10-00-01-02", "10-00-01-03"]


def test_unreadable_numbers_are_refused_or_counted() -> None:
    rows = [dict(ROWS[0], battery=" 7 "), dict(ROWS[1], battery="n/a"), dict(ROWS[2], battery="12.5")]
    stats = FleetStats()
    stats.add(_arrow(rows))
    assert stats.battery_histogram()[7] == 1  # surrounding blanks are read, as a spreadsheet would
    assert stats.battery_missing == 2  # "n/a", and 12.5 is no whole percent
    with pytest.raises(ValueError, match="frequency that is not a number"):
        FleetStats().add(_arrow([dict(ROWS[0], frequency="fast")]))
    with pytest.raises(ValueError, match="last_hb_time and frequency; some are empty"):
        FleetStats().add(_arrow([dict(ROWS[0], last_hb_time="")]))
    with pytest.raises(TypeError, match="pyarrow Table or RecordBatch, got list"):
        FleetStats().add(ROWS)


# --- hostile text from the servers ----------------------------------------------------------------


def test_hostile_labels_are_inert_in_tables_and_charts() -> None:
    rows = [
        _row(
            f"10-EE-00-0{i}",
            text,
            S1,
            str(5 + i),
            i + 0.5,
            10.0 + i,
            chip=text,
            screen=text,
            firmware=text,
            description=text,
        )
        for i, text in enumerate(HOSTILE)
    ]
    rows.append(_row(HOSTILE[2], "plain", HOSTILE[0], "3", 6.5, 5000.0, description=HOSTILE[1]))
    manifest = {
        **MANIFEST,
        "errors": [{"server": HOSTILE[0], "store": HOSTILE[1], "error": HOSTILE[2]}],
        "capped_stores": [{"server": S1, "store": HOSTILE[0]}],
        "params": {"output_root": HOSTILE[1]},
        "rows_by_store": {S1: {HOSTILE[0]: 1, HOSTILE[2]: 0}},
        HOSTILE[1]: [HOSTILE[2]],  # a field this version does not know, with a hostile name
    }
    html = render_report(_stats([rows]), manifest, anchor_ms=ANCHOR_MS)
    assert_inert(html)
    assert html.count("<svg ") == html.count("</svg>") == 8
    # The text is there, escaped: in a table cell, and as a chart's tick label (matplotlib escapes).
    assert "<td>&lt;img src=x onerror=alert(1)&gt;</td>" in html
    assert re.search(r"<text[^>]*>&lt;/svg&gt;&lt;script&gt;alert\(1\)&lt;/scr", html)


def test_hostile_store_codes_and_descriptions_are_text_in_every_place_the_report_shows_them() -> None:
    """Each hostile string is a store code, a description, a screen size and a firmware of one label,
    and appears in the manifest's lists; the page is parsed as a browser would, and each string must
    come out as *text* in each place: every table, chart and attention list that shows such a field."""
    rows = [
        _row(
            f"10-EE-00-0{i}",
            text,
            S1,
            "5",  # under the battery threshold: in the battery chart and table
            6.9,  # on the oldest day of the window: in the heartbeat chart and table
            10.0 + i,
            screen=text,
            firmware=text,
            description=HOSTILE[(i + 1) % len(HOSTILE)],  # another string than the store code
        )
        for i, text in enumerate(HOSTILE)
    ]
    empty = "<img src=x onerror=alert(9)>"  # a store that exported nothing: named in a note
    manifest = {
        **MANIFEST,
        "rows": len(rows),
        "rows_by_store": {S1: {**{text: 1 for text in HOSTILE}, empty: 0}},
        "errors": [
            {"server": S1, "store": text, "error": f"{S1}: store {text!r}: {text}"} for text in HOSTILE
        ],
        "capped_stores": [{"server": S1, "store": text} for text in HOSTILE],
        "invalid_records": {
            "count": len(HOSTILE),
            "listed": [{"server": S1, "store": t, "esl_id": t, "reason": f"detail for {t}"} for t in HOSTILE],
        },
        "removed_labels": {
            "count": len(HOSTILE),
            "listed": [{"server": S1, "store": t, "esl_id": t} for t in HOSTILE],
        },
        "servers": {S1: {"stores": {t: {} for t in HOSTILE}, "error": HOSTILE[1]}},
    }
    html = render_report(_stats([rows]), manifest, anchor_ms=ANCHOR_MS)
    assert_inert(html)
    assert html.count("<svg ") == html.count("</svg>") == 8  # no chart closed early, none opened
    places = Places(html)
    everywhere = set(HOSTILE)
    tables = {
        ("battery/Stores to visit first", "store"),
        ("frequency/The 5 labels refreshing most often", "store"),
        ("frequency/The 5 labels refreshing most often", "description"),
        ("heartbeat/The 5 labels silent the longest", "store"),
        ("heartbeat/The 5 labels silent the longest", "description"),
        ("hardware/Firmware", "firmware"),
        ("attention/Errors", "store"),
        ("attention/Errors", "error"),
        ("attention/Capped stores", "store"),
        ("attention/Invalid records", "store"),
        ("attention/Invalid records", "esl_id"),
        ("attention/Removed labels", "store"),
        ("attention/Removed labels", "esl_id"),
    }
    for place, header in sorted(tables):
        cells = places.column(place, header)
        found = (
            everywhere & set(cells)
            if header != "error"
            else {t for t in HOSTILE if any(t in c for c in cells)}
        )
        assert found == everywhere, (place, header)
    charts = {
        "Stores with the most labels under 20%",
        "Stores with the most refreshes per label",
        "Stores with labels close to dropping out",
        "Screen size",
    }
    for chart in sorted(charts):
        assert {clipped(t) for t in HOSTILE} <= set(places.charts[chart]), chart
    assert HOSTILE[1] in places.column("run/", "status")
    assert f"Stores that exported no labels: {empty} ({S1})." in places.notes["run"]


_AGGREGATE_WITH_REPORT = """
import importlib.abc, json, sys
from pathlib import Path


class NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
        return None


sys.meta_path.insert(0, NoPandas())
from esl_operators.aggregate import aggregate_run
from esl_operators.batch import batch_manifest
from esl_operators.engine import ServerResult, StoreResult
from esl_operators.parts import PartWriter
from esl_operators.records import to_part_row
from esl_operators.simulator import build_fleet
from esl_operators.storage import part_path
from datetime import datetime, UTC

root, anchor_ms = Path(sys.argv[1]), int(sys.argv[2])
cutoff_ms = anchor_ms - 7 * 86_400_000
fleet = build_fleet(servers=1, stores=3, esls=90, seed=2, reference_ms=anchor_ms)
stores = []
with PartWriter(part_path(root, "2024-05-10", 0)) as writer:
    for store, details in fleet.servers[0].real_stores.items():
        kept = [d for d in details if d["last_hb_time"] >= cutoff_ms]
        rows = [to_part_row(d, store=store, server="esl_a")[0] for d in kept]
        writer.write_rows(rows)
        stores.append(StoreResult(store, rows=len(rows), seen=len(rows)))
anchor = datetime.fromtimestamp(anchor_ms / 1000, tz=UTC)
manifest = batch_manifest(
    [ServerResult("esl_a", stores=stores)], batch=0, part="p", anchor=anchor, cutoff_ms=cutoff_ms,
    duration_s=0.0,
)
summary = aggregate_run([manifest], output_root=root, ds="2024-05-10", report=True)
page = (root / "2024-05-10" / "report.html").read_text(encoding="utf-8")
expected = sum(s.rows for s in stores)
charts = page.count("<svg ")
print(json.dumps({"rows": [summary["rows"], expected], "charts": charts, "pandas": "pandas" in sys.modules}))
"""


def test_the_report_path_runs_without_pandas(tmp_path: Path) -> None:
    """Fetch-side part writing, the aggregate step and its report, with pandas made unimportable.

    pyarrow imports pandas by itself when it is installed (on its first conversion to or from Python
    or numpy objects: a module import, no copy of the data); blocking it proves none of our code needs
    it, and that pyarrow does without.
    """
    done = subprocess.run(
        [sys.executable, "-c", _AGGREGATE_WITH_REPORT, str(tmp_path), str(ANCHOR_MS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    published, written = result.pop("rows")
    assert published == written > 30
    # 8, and the 3 of "Trends": every run has a history block, the first one too (issue 14)
    assert result == {"charts": 11, "pandas": False}


# --- templates are package data -------------------------------------------------------------------


def test_templates_are_found_through_the_package() -> None:
    templates = importlib.resources.files("esl_operators") / TEMPLATES
    names = {item.name for item in templates.iterdir()}
    assert {"page.html", "style.css", "report.html", "listing.html", "refused.html"} <= names
    assert ":root {" in (templates / "style.css").read_text(encoding="utf-8")
