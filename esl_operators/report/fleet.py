"""The report's fleet sections as data for the template: battery, refresh frequency, heartbeats, hardware.

Charts (inline SVG from :mod:`.charts`) and tables from :class:`FleetStats`. Each function takes the
:class:`~esl_operators.report.page.ReportView` and returns a mapping ``report.html`` reads by name;
text stays plain here, the template escapes it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from esl_operators.records import DAY_MS
from esl_operators.report.blocks import Figure, table
from esl_operators.report.charts import AMBER, BLUE, GREY, RED, bar_chart
from esl_operators.report.formats import day, moment, share, thousands
from esl_operators.report.stats import FREQUENCY_EDGES, FleetStats, StoreKey

if TYPE_CHECKING:
    from esl_operators.report.page import ReportView

TOP_STORES = 12


def _ranked(values: Mapping[StoreKey, int]) -> list[tuple[StoreKey, int]]:
    return sorted(((k, v) for k, v in values.items() if v > 0), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))


def _battery_bins(stats: FleetStats, threshold: int) -> tuple[list[str], list[int], list[str]]:
    histogram = stats.battery_histogram()
    labels, counts, colors = [], [], []
    for low in range(0, 100, 10):
        high = 100 if low == 90 else low + 9
        labels.append(f"{low}–{high}")
        counts.append(int(histogram[low : high + 1].sum()))
        colors.append(RED if high < threshold else AMBER if low < threshold else BLUE)
    return labels, counts, colors


def battery(view: ReportView) -> dict[str, Any]:
    stats, threshold = view.stats, view.threshold
    labels, counts, colors = _battery_bins(stats, threshold)
    histogram = Figure(
        bar_chart(
            "battery",
            labels,
            counts,
            title="Battery level, all labels",
            xlabel="battery level (%)",
            ylabel="labels",
            colors=colors,
        ),
        f"Red: every label in the bar is under {threshold}%. "
        f"{thousands(stats.battery_missing)} labels did not report a usable battery level.",
    )
    ranked = _ranked(view.low)
    top = ranked[:TOP_STORES]
    stores_chart = Figure(
        bar_chart(
            "battery-stores",
            [view.store_name(k) for k, _ in top],
            [v for _, v in top],
            title=f"Stores with the most labels under {threshold}%",
            xlabel=f"labels under {threshold}% battery",
            ylabel="store",
            colors=[RED] * len(top),
            horizontal=True,
        ),
        f"Top {len(top)} of {thousands(len(ranked))} stores with low batteries.",
    )
    rows = (
        [
            store,
            server,
            thousands(stats.stores[(server, store)].labels),
            thousands(n),
            share(n, stats.stores[(server, store)].labels),
        ]
        for (server, store), n in ranked[:25]
    )
    headers = ["store", "server", "labels", f"under {threshold}%", "share"]
    return {
        "threshold": threshold,
        "figures": [histogram, stores_chart],
        "stores": table(headers, rows, numeric={2, 3, 4}),
    }


def _frequency_labels() -> list[str]:
    edges = FREQUENCY_EDGES
    return ["0", f"<{edges[1]}", *(f"{a}–{b}" for a, b in itertools.pairwise(edges[1:])), f"≥{edges[-1]}"]


def frequency(view: ReportView) -> dict[str, Any]:
    stats = view.stats
    counts = [stats.frequency_zero, *(int(n) for n in stats.frequency_bins)]
    chart = Figure(
        bar_chart(
            "frequency",
            _frequency_labels(),
            counts,
            title="Screen refreshes per day",
            xlabel="refreshes per day (refresh count ÷ whole days since the label was created)",
            ylabel="labels",
            colors=[GREY, *[BLUE] * (len(counts) - 1)],
        ),
        "Grey: labels younger than a whole day, or without a refresh count. Bars widen "
        "on purpose (1, 2, 5, 10, …) so rare, extreme values stay visible.",
    )
    total = sum(s.frequency_sum for s in stats.stores.values())
    mean = total / stats.labels if stats.labels else 0.0
    rows = (
        [
            rank,
            o.esl_id,
            o.store,
            o.server,
            f"{o.frequency:,.2f}",
            f"{o.frequency / mean:,.1f}×" if mean else "–",
            o.refresh_times,
            o.battery,
            o.description,
        ]
        for rank, o in enumerate(stats.outliers, start=1)
    )
    headers = ["#", "ESL id", "store", "server", "refreshes/day", "vs. average", "refreshes", "battery %"]
    averages = {k: v.frequency_sum / v.labels for k, v in stats.stores.items() if v.labels}
    busiest = sorted(averages.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))[:TOP_STORES]
    stores_chart = Figure(
        bar_chart(
            "frequency-stores",
            [view.store_name(k) for k, _ in busiest],
            [round(v, 1) for _, v in busiest],
            title="Stores with the most refreshes per label",
            xlabel="average refreshes per day and label",
            ylabel="store",
            horizontal=True,
            integer=False,
        ),
        f"Top {len(busiest)} of {thousands(len(averages))} stores.",
    )
    return {
        "mean": f"{mean:,.2f}",
        "figures": [chart, stores_chart],
        "count": len(stats.outliers),
        "outliers": table([*headers, "description"], rows, numeric={0, 4, 5, 6, 7}),
    }


def heartbeat(view: ReportView) -> dict[str, Any]:
    stats = view.stats
    days = stats.heartbeat_days()
    oldest = view.anchor_day - view.cutoff_day
    span = max([oldest, *(view.anchor_day - d for d in days)])
    labels, counts, colors = [], [], []
    for before in range(0, span + 1):
        labels.append("run date or later" if before == 0 else str(before))
        counts.append(
            sum(
                n
                for d, n in days.items()
                if (view.anchor_day - d == before) or (before == 0 and d >= view.anchor_day)
            )
        )
        colors.append(RED if before >= oldest else BLUE)
    age_chart = Figure(
        bar_chart(
            "heartbeat",
            labels,
            counts,
            title="Days since the last heartbeat",
            xlabel="calendar days between last heartbeat and run date (UTC)",
            ylabel="labels",
            colors=colors,
        ),
        f"Red: last heartbeat on {day(view.cutoff_ms)}, the oldest day still in the "
        f"{view.lookback_days}-day window; these labels drop out of the next export unless they check in.",
    )
    ranked = _ranked(view.at_risk)
    top = ranked[:TOP_STORES]
    stores_chart = Figure(
        bar_chart(
            "heartbeat-stores",
            [view.store_name(k) for k, _ in top],
            [v for _, v in top],
            title="Stores with labels close to dropping out",
            xlabel="labels on the oldest day of the window",
            ylabel="store",
            colors=[AMBER] * len(top),
            horizontal=True,
        ),
        f"Top {len(top)} of {thousands(len(ranked))} stores.",
    )
    rows = (
        [
            s.esl_id,
            s.store,
            s.server,
            moment(s.last_hb_ms),
            f"{(view.anchor_ms - s.last_hb_ms) / DAY_MS:.1f}",
            s.battery,
            s.description,
        ]
        for s in stats.oldest_heartbeats
    )
    headers = ["ESL id", "store", "server", "last heartbeat", "days ago", "battery %", "description"]
    return {
        "figures": [age_chart, stores_chart],
        "count": len(stats.oldest_heartbeats),
        "silent": table(headers, rows, numeric={4, 5}),
    }


def _counter_rows(counter: Mapping[str, int], unknown: str) -> list[tuple[str, int]]:
    return sorted(((k or unknown, v) for k, v in counter.items()), key=lambda kv: (-kv[1], kv[0]))


def _screen_key(size: str) -> tuple[int, float, str]:
    try:
        return (0, float(size), size)
    except ValueError:
        return (1, 0.0, size)


def hardware(view: ReportView) -> dict[str, Any]:
    stats = view.stats
    chips = _counter_rows(stats.chip_families, "unknown")
    chip_chart = Figure(
        bar_chart(
            "chips",
            [k for k, _ in chips],
            [v for _, v in chips],
            title="Chip family",
            xlabel="labels",
            ylabel="chip family",
            horizontal=True,
        ),
        "From the product id; “unknown” means the server sent no product id (or 0).",
    )
    screens = sorted(stats.screen_sizes.items(), key=lambda kv: _screen_key(kv[0]))
    screen_chart = Figure(
        bar_chart(
            "screens",
            [f"{k}″" if _screen_key(k)[0] == 0 else (k or "unknown") for k, _ in screens],
            [v for _, v in screens],
            title="Screen size",
            xlabel="screen diagonal (inches)",
            ylabel="labels",
        ),
        "As reported by the label.",
    )
    firmware = table(
        ["firmware", "labels", "share"],
        (
            [k, thousands(v), share(v, stats.labels)]
            for k, v in _counter_rows(stats.firmwares, "unknown")[:15]
        ),
        numeric={1, 2},
        compact=True,
    )
    return {"figures": [chip_chart, screen_chart], "firmware": firmware}
