"""Runs published straight from a simulated fleet, for the report and plugin tests.

Part rows come from the package's own record transform; partitions, manifest and report are written
with the package's storage functions, in the layout the aggregate task publishes.
"""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd

from esl_operators.csvformat import (
    STANDARD_COLUMNS,
    as_table,
    check_style,
    columns_for,
    render_lines,
    sort_order,
)
from esl_operators.partitions import write_lines_atomic
from esl_operators.records import DAY_MS, PART_COLUMNS, to_part_row
from esl_operators.report import FleetStats, publish_report
from esl_operators.simulator import DEFAULT_STORE, Fleet, ServerData
from esl_operators.storage import MANIFEST_NAME, partition_name, run_dir, write_json_atomic


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def fleet_parts(fleet: Fleet, names: list[str], cutoff_ms: int) -> list[pd.DataFrame]:
    """One frame of part rows per server: the labels inside the heartbeat window, default store skipped."""
    frames = []
    for server, name in zip(fleet.servers, names, strict=True):
        rows = [
            _row(detail, store, name)
            for store, details in server.real_stores.items()
            for detail in details
            if detail["last_hb_time"] >= cutoff_ms
        ]
        frames.append(pd.DataFrame(rows, columns=list(PART_COLUMNS), dtype=str))
    return frames


def _row(detail: dict[str, Any], store: str, server: str) -> tuple[str, ...]:
    row, _issues = to_part_row(detail, store=store, server=server)
    return row


def publish_run(
    root: Path, ds: str, fleet: Fleet, names: list[str], *, lookback_days: int = 7, **extra: Any
) -> dict[str, Any]:
    """Write one run date as the aggregate task would: partitions, ``_manifest.json``, ``report.html``."""
    anchor_ms = fleet.reference_ms
    cutoff_ms = anchor_ms - lookback_days * DAY_MS
    folder = run_dir(root, ds)
    style, zone = check_style("standard", "UTC")
    stats = FleetStats()
    partitions = []
    rows_by_store: dict[str, dict[str, int]] = {}
    for batch, (frame, name) in enumerate(zip(fleet_parts(fleet, names, cutoff_ms), names, strict=True)):
        table = as_table(frame)
        lines = render_lines(table, style, zone)
        write_lines_atomic(folder / partition_name(batch), columns_for(style), lines, sort_order(table))
        stats.add(frame)
        partitions.append({"file": partition_name(batch), "rows": len(frame), "servers": [name]})
        counts = frame["store"].value_counts().to_dict()
        rows_by_store[name] = {store: int(counts.get(store, 0)) for store in fleet.servers[batch].real_stores}
    manifest: dict[str, Any] = {
        "date": ds,
        "anchor": _iso(anchor_ms),
        "heartbeat_cutoff": _iso(cutoff_ms),
        "header_style": "standard",
        "columns": list(STANDARD_COLUMNS),
        "rows": sum(p["rows"] for p in partitions),
        "partitions": partitions,
        "rows_by_server": {p["servers"][0]: p["rows"] for p in partitions},
        "rows_by_store": rows_by_store,
        "capped_stores": [],
        "errors": [],
        "invalid_records": {"count": 0, "listed": []},
        "stale_labels": 0,
        "removed_stale_partitions": [],
        "params": {"lookback_days": lookback_days, "servers_per_batch": 1},
        "durations_s": {"batches": {str(i): 1.5 + i for i in range(len(names))}, "aggregate": 0.25},
        "servers": {},
        **extra,
    }
    publish_report(folder, stats, manifest)
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return manifest


# Server text that would run as markup if a page let it through (store codes, descriptions, ...):
# closing the chart's <svg> early, an image with a handler, breaking out of an attribute value.
HOSTILE = (
    "</svg><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><script>alert(2)</script>',
    "</svg><svg onload=alert(3)>",
    "'><img src=x onerror=alert(4)>",
)


def hostile_fleet(fleet: Fleet) -> Fleet:
    """``fleet`` with every store code (empty stores included) and every description replaced by
    :data:`HOSTILE` text (cycled; a number appended where one server needs more codes than there
    are strings). Labels, ids and every other field are unchanged."""
    servers = []
    for server in fleet.servers:
        codes: dict[str, str] = {}
        for slot, code in enumerate(c for c in server.stores if c != DEFAULT_STORE):
            base = HOSTILE[slot % len(HOSTILE)]
            codes[code] = base if slot < len(HOSTILE) else f"{base} {slot}"
        codes[DEFAULT_STORE] = DEFAULT_STORE
        stores = {
            codes[code]: [
                {**d, "user": codes[code], "description": HOSTILE[(slot + 1) % len(HOSTILE)]}
                for slot, d in enumerate(details)
            ]
            for code, details in server.stores.items()
        }
        users = [{**u, "user": codes[u["user"]]} for u in server.users]
        servers.append(ServerData(index=server.index, stores=stores, users=users))
    return Fleet(servers=servers, page_size=fleet.page_size, reference_ms=fleet.reference_ms)


class _Tags(HTMLParser):
    """Every start tag and attribute name of a document, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes.update(name for name, _ in attrs)


class Places(HTMLParser):
    """What a browser shows as text, by place: table rows under (section, heading), chart texts by
    chart title, and notes by section. Entities are decoded, so a hostile string found here is text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.charts: dict[str, list[str]] = {}
        self.notes: dict[str, list[str]] = {}
        self._section = ""
        self._heading = ""
        self._chart: str | None = None
        self._headers: list[str] = []
        self._row: list[str] | None = None
        self._text: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "section":
            self._section, self._heading = named.get("id") or named.get("class") or "", ""
        elif tag == "svg":
            self._chart = named.get("aria-label") or ""
            self.charts.setdefault(self._chart, [])
        elif tag == "table":
            self._headers = []
        elif tag == "tr":
            self._row = []
        if tag in ("h3", "th", "td", "text", "p"):
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._text or [])
        if tag == "h3":
            self._heading = re.sub(r" \([0-9,]+\)$", "", text)
        elif tag == "th":
            self._headers.append(text)
        elif tag == "td" and self._row is not None:
            self._row.append(text)
        elif tag == "tr" and self._row:
            place = f"{self._section}/{self._heading}"
            self.tables.setdefault(place, []).append(dict(zip(self._headers, self._row, strict=False)))
            self._row = None
        elif tag == "text" and self._chart is not None:
            self.charts[self._chart].append(text)
        elif tag == "svg":
            self._chart = None
        elif tag == "p":
            self.notes.setdefault(self._section, []).append(text)
        if tag in ("h3", "th", "td", "text", "p"):
            self._text = None

    def column(self, place: str, header: str) -> list[str]:
        """Every cell of one column of the table(s) at ``place`` ("section/heading")."""
        return [row[header] for row in self.tables[place] if header in row]


def clipped(label: str, limit: int = 28) -> str:
    """A chart tick label as drawn: long ones are cut, the tables carry the full text."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def assert_inert(html: str) -> None:
    """No server string came through as markup: no raw copy, no script, image or handler."""
    for text in HOSTILE:
        assert text not in html, text
    parsed = _Tags()
    parsed.feed(html)
    assert not {"script", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert not [name for name in parsed.attributes if name.startswith("on")]
