"""The report's history sections (issue 14): "Since {P}" and "Trends", from the published files only.

Inputs, all written by the aggregate step: the current run's staged ``_changes.csv``,
``_battery_forecast.csv`` and ``_snapshot.parquet`` and its manifest's ``history`` block, and for the
earlier published dates of the window (:func:`esl_operators.storage.published_dates`) their
``_snapshot.parquet`` and ``_manifest.json``. No ``history`` block in the manifest: no sections, and
the report is what it was before.

Memory: the change and forecast files are streamed (counts per kind and store, the first rows of each
list); snapshots are read one at a time, only the columns needed. What the sections keep is bounded by
stores × dates; the uptime's running tally is one small row per label seen in the window (Arrow), never
labels × dates.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esl_operators.report.blocks import Figure, Kpi, Table, table
from esl_operators.report.charts import AMBER, BLUE, GREY, RED, bar_chart, line_chart
from esl_operators.report.formats import thousands
from esl_operators.storage import (
    CHANGES_NAME,
    FORECAST_NAME,
    MANIFEST_NAME,
    SNAPSHOT_NAME,
    PathLike,
    published_dates,
    read_json,
    run_dir,
)

log = logging.getLogger(__name__)

CHANGE_KINDS = ("new", "gone", "battery_drop", "moved", "firmware")
CHANGES_COLUMNS = ("change", "esl_id", "server", "store", "previous", "current")
FORECAST_COLUMNS = (
    "esl_id", "server", "store", "battery", "slope_per_day", "days_left", "forecast_date", "observations",
)  # fmt: skip
#: Rows each list shows; the full lists are the files, linked.
LISTED = 15
TOP_STORES = 12
#: "Batteries to order": labels expected under the alert level within this many days.
ORDER_HORIZONS = (7, 30)
KIND_TITLES = {
    "new": "New labels",
    "gone": "Gone labels",
    "battery_drop": "Battery drops",
    "moved": "Moved labels",
    "firmware": "Firmware changes",
}
KPI_LABELS = {
    "new": "new labels",
    "gone": "gone labels",
    "battery_drop": "battery drops",
    "moved": "moved",
    "firmware": "firmware changes",
}
StoreKey = tuple[str, str]  # (server, store)


class HistoryFileError(ValueError):
    """A history file does not have the contract's columns."""


def _csv_rows(path: PathLike, columns: Sequence[str]) -> Iterator[list[str]]:
    """The rows of a published CSV after checking its header against the contract."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != list(columns):
            raise HistoryFileError(f"{path}: expected the columns {list(columns)}, found {header}")
        for number, row in enumerate(reader, start=2):
            if len(row) != len(columns):
                raise HistoryFileError(f"{path}: line {number} has {len(row)} cells, expected {len(columns)}")
            yield row


@dataclass
class Changes:
    counts: Counter[str] = field(default_factory=Counter)
    listed: dict[str, list[list[str]]] = field(default_factory=lambda: {k: [] for k in CHANGE_KINDS})
    gone_by_store: Counter[StoreKey] = field(default_factory=Counter)


def read_changes(path: PathLike) -> Changes:
    """Counts per change and per store of the gone labels, and the first :data:`LISTED` rows of each."""
    found = Changes()
    for change, esl_id, server, store, previous, current in _csv_rows(path, CHANGES_COLUMNS):
        if change not in CHANGE_KINDS:
            raise HistoryFileError(f"{path}: unknown change {change!r} for label {esl_id!r} of {server!r}")
        found.counts[change] += 1
        if change == "gone":
            found.gone_by_store[(server, store)] += 1
        if len(found.listed[change]) < LISTED:
            found.listed[change].append([esl_id, store, server, previous, current])
    return found


def read_forecast(path: PathLike) -> dict[StoreKey, list[int]]:
    """Per store, the labels expected under the alert level within each of :data:`ORDER_HORIZONS` days."""
    per_store: dict[StoreKey, list[int]] = {}
    for row in _csv_rows(path, FORECAST_COLUMNS):
        _, server, store, _, _, days_left, _, _ = row
        counts = per_store.setdefault((server, store), [0] * len(ORDER_HORIZONS))
        for index, horizon in enumerate(ORDER_HORIZONS):
            counts[index] += int(days_left) <= horizon
    return per_store


@dataclass(frozen=True)
class DatePoint:
    date: str
    exported: int
    low: int
    new: int | None  # None: that date's manifest has no history block
    gone: int | None


def _read_snapshot(path: PathLike, columns: list[str]) -> pa.Table:
    with path.open("rb") as handle:
        return pq.read_table(handle, columns=columns)


def _history_of(folder: PathLike) -> Mapping[str, Any] | None:
    try:
        manifest = read_json(folder / MANIFEST_NAME)
    except (OSError, ValueError) as exc:  # shown as "–" in the trend table; the run itself is not harmed
        log.warning("%s: no history counts for the trends: %s", folder / MANIFEST_NAME, exc)
        return None
    block = manifest.get("history") if isinstance(manifest, dict) else None
    return block if isinstance(block, dict) else None


class Trends:
    """Per date: labels exported, under the threshold, new and gone; per store: the label uptime."""

    def __init__(self, low_threshold: int) -> None:
        self.low_threshold = low_threshold
        self.points: list[DatePoint] = []
        self._seen: pa.Table | None = None  # server, esl_id, store (latest), n (dates published)

    def add(self, date: str, snapshot: pa.Table, history: Mapping[str, Any] | None) -> None:
        low = pc.sum(pc.less(snapshot["battery"], self.low_threshold)).as_py() or 0
        new = history.get("new") if history else None
        gone = history.get("gone") if history else None
        self.points.append(
            DatePoint(
                date,
                snapshot.num_rows,
                int(low),
                new if isinstance(new, int) else None,
                gone if isinstance(gone, int) else None,
            )
        )
        today = snapshot.select(["server", "esl_id", "store"]).append_column(
            "n", pa.array([1] * snapshot.num_rows, pa.int64())
        )
        if self._seen is None:
            self._seen = today
            return
        before = self._seen.rename_columns(["server", "esl_id", "store_before", "n_before"])
        joined = before.join(today, keys=["server", "esl_id"], join_type="full outer")
        self._seen = pa.table(
            {
                "server": joined["server"],
                "esl_id": joined["esl_id"],
                # A label that moved counts for the store it was last published in.
                "store": pc.coalesce(joined["store"], joined["store_before"]),
                "n": pc.add(pc.fill_null(joined["n_before"], 0), pc.fill_null(joined["n"], 0)),
            }
        )

    def uptime(self) -> dict[StoreKey, tuple[int, float]]:
        """Per store: labels seen in the window, and the mean share of the window's dates they were
        published on."""
        if self._seen is None or not self.points:
            return {}
        dates = len(self.points)
        grouped = self._seen.group_by(["server", "store"]).aggregate([("n", "sum"), ("n", "count")])
        return {
            (server, store): (count, total / (count * dates))
            for server, store, total, count in zip(
                *(grouped[c].to_pylist() for c in ("server", "store", "n_sum", "n_count")), strict=True
            )
        }


def read_trends(
    folder: PathLike, output_root: PathLike, ds: str, history: Mapping[str, Any], days: int, low: int
) -> Trends:
    """The trends over the published dates of the window, ``ds`` (its staged files in ``folder``) last."""
    trends = Trends(low)
    columns = ["server", "esl_id", "store", "battery"]
    for date in published_dates(output_root, ds, days):
        earlier = run_dir(output_root, date)
        trends.add(date, _read_snapshot(earlier / SNAPSHOT_NAME, columns), _history_of(earlier))
    if (folder / SNAPSHOT_NAME).exists():
        trends.add(ds, _read_snapshot(folder / SNAPSHOT_NAME, columns), history)
    return trends


def _ranked(counts: Mapping[StoreKey, int]) -> list[tuple[StoreKey, int]]:
    return sorted(((k, v) for k, v in counts.items() if v > 0), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))


def _name(key: StoreKey, multi_server: bool) -> str:
    server, store = key
    return f"{store} ({server})" if multi_server else store


def since(folder: PathLike, history: Mapping[str, Any], multi_server: bool) -> dict[str, Any]:
    """The "Since {P}" section: the counts, the stores with the most gone labels, the first rows."""
    previous = history.get("previous_date")
    counts = {kind: int(history.get(kind) or 0) for kind in CHANGE_KINDS}
    kpis = [
        Kpi(KPI_LABELS[kind], thousands(counts[kind]), kind="bad" if kind == "gone" and counts[kind] else "")
        for kind in CHANGE_KINDS
    ]
    result: dict[str, Any] = {"previous": previous, "kpis": kpis, "lists": [], "gone_stores": None}
    path = folder / CHANGES_NAME
    if not previous or not path.exists():
        return result
    changes = read_changes(path)
    ranked = _ranked(changes.gone_by_store)
    top = ranked[:TOP_STORES]
    result["gone_chart"] = Figure(
        bar_chart(
            "gone-stores",
            [_name(k, multi_server) for k, _ in top],
            [v for _, v in top],
            title=f"Stores with the most labels gone since {previous}",
            xlabel="labels gone",
            ylabel="store",
            colors=[RED] * len(top),
            horizontal=True,
        ),
        f"Top {len(top)} of {thousands(len(ranked))} stores with gone labels (their store on {previous}).",
    )
    result["gone_stores"] = Capped(
        table(["store", "server", "labels gone"], ([k[1], k[0], thousands(v)] for k, v in ranked[:LISTED]),
              numeric={2}),
        len(ranked),
    )  # fmt: skip
    headers = ["ESL id", "store", "server", "previous", "current"]
    for kind in CHANGE_KINDS:
        if changes.counts[kind]:
            listed = Capped(table(headers, changes.listed[kind]), changes.counts[kind])
            result["lists"].append(
                {"title": KIND_TITLES[kind], "count": changes.counts[kind], "table": listed}
            )
    return result


@dataclass(frozen=True)
class Capped:
    table: Table
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.table.rows)


def trends_section(
    trends: Trends, forecast: dict[StoreKey, list[int]] | None, multi_server: bool, alert_pct: int
) -> dict[str, Any]:
    points = trends.points
    dates = [p.date for p in points]
    labels_chart = Figure(
        line_chart(
            "trend-labels",
            dates,
            [
                ("labels exported", [p.exported for p in points], BLUE),
                (f"under {trends.low_threshold}% battery", [p.low for p in points], RED),
            ],
            title="Labels exported per date",
            ylabel="labels",
        ),
        f"Published dates of the window ({dates[0] if dates else '–'} to {dates[-1] if dates else '–'}).",
    )
    changes_chart = Figure(
        line_chart(
            "trend-changes",
            dates,
            [("new", [p.new for p in points], BLUE), ("gone", [p.gone for p in points], AMBER)],
            title="New and gone labels per date",
            ylabel="labels",
        ),
        "Compared with the previous published date; no point where a date has no history.",
    )
    per_date = table(
        ["date", "labels exported", f"under {trends.low_threshold}%", "new", "gone"],
        ([p.date, thousands(p.exported), thousands(p.low), _maybe(p.new), _maybe(p.gone)] for p in points),
        numeric={1, 2, 3, 4},
    )
    uptime = sorted(trends.uptime().items(), key=lambda kv: (kv[1][1], kv[0][1], kv[0][0]))
    uptime_chart = Figure(
        bar_chart(
            "uptime-stores",
            [_name(k, multi_server) for k, _ in uptime[:TOP_STORES]],
            [round(100 * u, 1) for _, (_, u) in uptime[:TOP_STORES]],
            title="Stores with the lowest label uptime",
            xlabel="label uptime (% of the window's dates published)",
            ylabel="store",
            colors=[GREY] * min(len(uptime), TOP_STORES),
            horizontal=True,
            integer=False,
        ),
        f"Lowest {min(len(uptime), TOP_STORES)} of {thousands(len(uptime))} stores.",
    )
    uptime_table = Capped(
        table(["store", "server", "labels seen", "uptime"],
              ([k[1], k[0], thousands(n), f"{100 * u:.1f}%"] for k, (n, u) in uptime[:LISTED]),
              numeric={2, 3}),
        len(uptime),
    )  # fmt: skip
    result: dict[str, Any] = {
        "dates": len(points),
        "figures": [labels_chart, changes_chart],
        "per_date": per_date,
        "uptime_chart": uptime_chart,
        "uptime": uptime_table,
        "alert_pct": alert_pct,
        "order": None,
    }
    if forecast is not None:
        ranked = sorted(forecast.items(), key=lambda kv: (-kv[1][-1], -kv[1][0], kv[0][1], kv[0][0]))
        totals = [sum(c[i] for c in forecast.values()) for i in range(len(ORDER_HORIZONS))]
        headers = ["store", "server", *(f"within {h} days" for h in ORDER_HORIZONS)]
        rows = ([k[1], k[0], *map(thousands, c)] for k, c in ranked[:LISTED])
        result["order"] = Capped(table(headers, rows, numeric={2, 3}), len(ranked))
        result["order_kpis"] = [
            Kpi(f"within {h} days", thousands(n), "batteries to order", "warn" if n else "")
            for h, n in zip(ORDER_HORIZONS, totals, strict=True)
        ]
    return result


def _maybe(value: int | None) -> str:
    return "–" if value is None else thousands(value)


def history_sections(
    folder: PathLike,
    output_root: PathLike,
    manifest: Mapping[str, Any],
    *,
    history_days: int,
    battery_alert_pct: int,
    low_threshold: int = 20,
) -> dict[str, Any] | None:
    """What ``report.html`` shows under "Since {P}" and "Trends"; None without a history block."""
    history = manifest.get("history")
    if not isinstance(history, dict):
        return None
    ds = str(manifest["date"])
    trends = read_trends(folder, output_root, ds, history, history_days, low_threshold)
    servers = {k[0] for k in trends.uptime()} | set(manifest.get("rows_by_server") or {})
    multi_server = len(servers) > 1
    forecast_path = folder / FORECAST_NAME
    forecast = read_forecast(forecast_path) if forecast_path.exists() else None
    return {
        "since": since(folder, history, multi_server),
        "trends": trends_section(trends, forecast, multi_server, battery_alert_pct),
        "changes_name": CHANGES_NAME,
        "forecast_name": FORECAST_NAME,
        "history_days": history_days,
    }
