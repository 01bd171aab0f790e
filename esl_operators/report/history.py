"""The report's history sections (issue 14): "Since {P}" and "Trends", from the published files only.

Inputs, all written by the aggregate step: the current run's staged ``_changes.csv``,
``_battery_forecast.csv`` and ``_snapshot.parquet`` and its manifest's ``history`` block, and for the
earlier published dates of the window (:func:`esl_operators.storage.published_dates`) their
``_snapshot.parquet`` and ``_manifest.json``. No ``history`` block in the manifest: no sections, and
the report is what it was before.

Memory (the files are read by :mod:`.history_files`): the change and forecast files are streamed
(counts per kind and store, the first rows of each list); snapshots are read one at a time, only the
columns needed. What the sections keep is bounded by stores × dates; the uptime's running tally is one
small row per label seen in the window (Arrow), never labels × dates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esl_operators.report.blocks import Figure, Kpi, Table, table
from esl_operators.report.charts import AMBER, BLUE, GREY, RED, bar_chart, line_chart
from esl_operators.report.formats import thousands
from esl_operators.report.history_files import (
    CHANGE_KINDS,
    LISTED,
    ORDER_HORIZONS,
    HistoryFileError,
    StoreKey,
    Trends,
    read_changes,
    read_forecast,
    read_trends,
)
from esl_operators.storage import CHANGES_NAME, FORECAST_NAME, PathLike

__all__ = ["LISTED", "HistoryFileError", "history_sections"]

TOP_STORES = 12
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
