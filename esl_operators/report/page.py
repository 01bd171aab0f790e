"""The fleet report: one self-contained HTML page from :class:`FleetStats` and the run manifest.

No scripts, no external files, no network: CSS is inline and charts are inline SVG, so the page can
be mailed, archived or printed as is. Every string that comes from the data or the manifest goes
through :func:`esc`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from esl_operators.records import DAY_MS
from esl_operators.report.charts import AMBER, BLUE, GREY, RED, bar_chart
from esl_operators.report.stats import FREQUENCY_EDGES, FleetStats, StoreKey
from esl_operators.report.style import CSS

DEFAULT_LOOKBACK_DAYS = 7
TOP_STORES = 12
LIST_LIMIT = 200  # rows shown per failure/skip list; the manifest keeps them all
# Manifest keys rendered by their own sections; every other non-empty list is shown generically.
_STRUCTURAL = {
    "partitions",
    "columns",
    "params",
    "durations_s",
    "servers",
    "rows_by_server",
    "rows_by_store",
    "rows",
    "stale_labels",  # labels outside the heartbeat window: by design, shown per server
}
# Words in a manifest key that mean "labels or rows went missing": such entries need attention.
# Anything else non-empty (retries, cleaned-up files) is listed under housekeeping.
_LOSS_WORDS = ("error", "fail", "invalid", "skip", "capped", "dropped", "blank", "removed_label", "reject")


def esc(value: Any) -> str:
    """Any value as HTML text: escaped, nested structures as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return escape(str(value), quote=True)


def render_report(
    stats: FleetStats, manifest: Mapping[str, Any], *, anchor_ms: int, battery_threshold: int = 20
) -> str:
    """The report page for one run date."""
    if not 0 < battery_threshold <= 100:
        raise ValueError(f"battery_threshold must be in 1..100, got {battery_threshold}")
    view = _View(stats, manifest, anchor_ms, battery_threshold)
    date = str(manifest.get("date") or _day(anchor_ms))
    body = "\n".join(
        [
            _header(view, date),
            _attention(view),
            _totals(view),
            _battery(view),
            _frequency(view),
            _heartbeat(view),
            _hardware(view),
            _run(view),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>ESL fleet report {esc(date)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


class _View:
    """Numbers derived once from the stats and the manifest, shared by the sections."""

    def __init__(self, stats: FleetStats, manifest: Mapping[str, Any], anchor_ms: int, threshold: int):
        self.stats = stats
        self.manifest = manifest
        self.anchor_ms = anchor_ms
        self.threshold = threshold
        self.multi_server = len({server for server, _ in stats.stores}) > 1
        self.cutoff_ms = _cutoff_ms(manifest, anchor_ms)
        self.anchor_day = anchor_ms // DAY_MS
        self.cutoff_day = self.cutoff_ms // DAY_MS
        self.low = {key: int(s.battery[:threshold].sum()) for key, s in stats.stores.items()}
        # Last heartbeat on the window's oldest calendar day: gone from the next daily export unless
        # the label checks in (exact for scheduled runs, whose anchor and cutoff fall on midnight).
        self.at_risk = {
            key: sum(n for day, n in s.heartbeat_days.items() if day <= self.cutoff_day)
            for key, s in stats.stores.items()
        }

    def store_name(self, key: StoreKey) -> str:
        server, store = key
        return f"{store} ({server})" if self.multi_server else store

    @property
    def lookback_days(self) -> int:
        return (self.anchor_ms - self.cutoff_ms) // DAY_MS


def _cutoff_ms(manifest: Mapping[str, Any], anchor_ms: int) -> int:
    cutoff = manifest.get("heartbeat_cutoff")
    if isinstance(cutoff, str) and cutoff:
        return int(datetime.fromisoformat(cutoff.replace("Z", "+00:00")).timestamp() * 1000)
    params = manifest.get("params") or {}
    lookback = params.get("lookback_days")
    return anchor_ms - int(lookback if isinstance(lookback, int) else DEFAULT_LOOKBACK_DAYS) * DAY_MS


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _moment(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _int(value: int) -> str:
    return f"{value:,}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: set[int] | None = None,
    compact: bool = False,
) -> str:
    """A table; cells are escaped here, so callers pass raw values."""
    numeric = numeric or set()
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{esc(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    cls = ' class="compact"' if compact else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(svg: str, caption: str) -> str:
    return f'<figure class="chart-box">{svg}<figcaption>{caption}</figcaption></figure>'


def _section(section_id: str, title: str, content: str, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{section_id}"><h2>{esc(title)}</h2>{lead}{content}</section>'


# --- sections -----------------------------------------------------------------------------------


def _header(view: _View, date: str) -> str:
    window = (
        f"labels whose last heartbeat is on or after <b>{esc(_moment(view.cutoff_ms))}</b> "
        f"({view.lookback_days} days before the run's anchor, {esc(_moment(view.anchor_ms))})"
    )
    return (
        f'<header><p class="kicker">esl-export · fleet report</p><h1>ESL fleet on {esc(date)}</h1>'
        f"<p>Electronic shelf labels exported for this run: {window}.</p></header>"
    )


def _failure_lists(manifest: Mapping[str, Any]) -> list[tuple[str, list[Any], bool]]:
    """(title, entries, needs attention) for everything non-empty the manifest reports, known or new.

    Shapes understood without knowing the key: ``{"count": n, "listed": [...]}``, a list (of dicts or
    values), a mapping of counts (``{"battery": 3}``), and a plain number.
    """
    found = []
    for key in sorted(manifest):
        value = manifest[key]
        if key in _STRUCTURAL or isinstance(value, bool):
            continue
        problem = any(word in key for word in _LOSS_WORDS) and not key.startswith("removed_stale")
        if isinstance(value, Mapping) and isinstance(value.get("listed"), list):
            entries = value["listed"]
            count = value.get("count", len(entries))
            if entries or count:
                found.append((f"{_title(key)} ({_int(int(count))})", entries, True))
        elif isinstance(value, list) and value:
            found.append((f"{_title(key)} ({_int(len(value))})", value, problem))
        elif isinstance(value, Mapping) and value:
            entries = [{"name": k, "value": v} for k, v in value.items()]
            found.append((f"{_title(key)} ({_int(len(entries))})", entries, problem))
        elif isinstance(value, int | float) and value:
            found.append((f"{_title(key)}: {value:,}", [], problem))
    return found


def _title(key: str) -> str:
    return key.replace("_", " ").strip().capitalize()


def _entries_table(entries: list[Any]) -> str:
    if not entries:
        return ""
    shown = entries[:LIST_LIMIT]
    more = (
        f'<p class="note">{_int(len(entries) - LIST_LIMIT)} more in _manifest.json.</p>'
        if len(entries) > LIST_LIMIT
        else ""
    )
    if all(isinstance(e, Mapping) for e in shown):
        columns: list[str] = []
        for entry in shown:
            columns.extend(k for k in entry if k not in columns)
        return _table(columns, ([e.get(c) for c in columns] for e in shown)) + more
    return _table(["value"], ([e] for e in shown)) + more


def _attention(view: _View) -> str:
    lists = _failure_lists(view.manifest)
    problems = [item for item in lists if item[2]]
    infos = [item for item in lists if not item[2]]
    mismatch = ""
    reported = view.manifest.get("rows")
    if isinstance(reported, int) and reported != view.stats.labels:
        mismatch = (
            f"<p><b>The manifest reports {_int(reported)} rows but the report counted "
            f"{_int(view.stats.labels)}.</b></p>"
        )
    parts = []
    if problems or mismatch:
        blocks = "".join(f"<h3>{esc(title)}</h3>{_entries_table(entries)}" for title, entries, _ in problems)
        parts.append(
            '<section id="attention" class="alert"><h2>Needs attention</h2>'
            "<p>These servers, stores or labels are missing from the export or were cut short; "
            f"the reasons come from the run manifest.</p>{mismatch}{blocks}</section>"
        )
    else:
        parts.append('<p class="ok" id="attention">No failures, skipped or invalid labels in this run.</p>')
    if infos:
        blocks = "".join(f"<h3>{esc(title)}</h3>{_entries_table(entries)}" for title, entries, _ in infos)
        parts.append(f'<section class="info"><h2>Housekeeping</h2>{blocks}</section>')
    return "\n".join(parts)


def _kpi(label: str, value: str, note: str = "", kind: str = "") -> str:
    cls = f"kpi {kind}".strip()
    return (
        f'<div class="{cls}"><div class="kpi-value">{value}</div><div class="kpi-label">{esc(label)}</div>'
        f'<div class="kpi-note">{note}</div></div>'
    )


def _durations(manifest: Mapping[str, Any]) -> tuple[float | None, str]:
    durations = manifest.get("durations_s") or {}
    batches = [v for v in (durations.get("batches") or {}).values() if isinstance(v, int | float)]
    aggregate = durations.get("aggregate")
    if not batches and not isinstance(aggregate, int | float):
        return None, ""
    fetch = max(batches, default=0.0)
    total = fetch + (aggregate if isinstance(aggregate, int | float) else 0.0)
    return total, f"slowest fetch {_seconds(fetch)} + aggregate {_seconds(float(aggregate or 0))}"


def _totals(view: _View) -> str:
    stats, manifest = view.stats, view.manifest
    listed = manifest.get("rows_by_store") or {}
    stores_listed = sum(len(stores) for stores in listed.values()) if isinstance(listed, Mapping) else 0
    servers = manifest.get("rows_by_server") or {}
    server_count = len(servers) if servers else len({s for s, _ in stats.stores})
    errors = manifest.get("errors") or []
    low = sum(view.low.values())
    at_risk = sum(view.at_risk.values())
    total_s, duration_note = _durations(manifest)
    cards = [
        _kpi("labels exported", _int(stats.labels)),
        _kpi(
            "stores with labels",
            _int(len(stats.stores)),
            f"of {_int(stores_listed)} listed" if listed else "",
        ),
        _kpi("servers", _int(server_count)),
        _kpi("run time", _seconds(total_s) if total_s is not None else "–", esc(duration_note)),
        _kpi(
            f"battery under {view.threshold}%",
            _int(low),
            _share(low, stats.labels) + " of labels",
            "warn" if low else "",
        ),
        _kpi(
            "close to dropping out",
            _int(at_risk),
            f"last heartbeat on {esc(_day(view.cutoff_ms))}",
            "warn" if at_risk else "",
        ),
        _kpi("failures", _int(len(errors)), "servers or stores", "bad" if errors else "good"),
    ]
    partitions = [p for p in manifest.get("partitions") or [] if isinstance(p, Mapping)]
    # Columns the aggregate task adds later (e.g. rows dropped) are shown as they come.
    extra: list[str] = []
    for p in partitions:
        extra.extend(k for k in p if k not in ("file", "rows", "servers", *extra))
    table = _table(
        ["file", "rows", "servers", *(_title(k).lower() for k in extra)],
        (
            [
                p.get("file"),
                _int(int(p.get("rows", 0))),
                ", ".join(map(str, p.get("servers", []))),
                *(_int(p[k]) if isinstance(p.get(k), int) else p.get(k) for k in extra),
            ]
            for p in partitions
        ),
        numeric={1, *range(3, 3 + len(extra))},
    )
    return _section(
        "totals",
        "Totals",
        f'<div class="kpis">{"".join(cards)}</div><h3>Rows per partition</h3>{table}',
    )


def _battery_bins(stats: FleetStats, threshold: int) -> tuple[list[str], list[int], list[str]]:
    histogram = stats.battery_histogram()
    labels, counts, colors = [], [], []
    for low in range(0, 100, 10):
        high = 100 if low == 90 else low + 9
        labels.append(f"{low}–{high}")
        counts.append(int(histogram[low : high + 1].sum()))
        colors.append(RED if high < threshold else AMBER if low < threshold else BLUE)
    return labels, counts, colors


def _ranked(values: Mapping[StoreKey, int]) -> list[tuple[StoreKey, int]]:
    ranked = sorted(((k, v) for k, v in values.items() if v > 0), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))
    return ranked


def _battery(view: _View) -> str:
    stats, threshold = view.stats, view.threshold
    labels, counts, colors = _battery_bins(stats, threshold)
    histogram = _figure(
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
        f"{_int(stats.battery_missing)} labels did not report a usable battery level.",
    )
    ranked = _ranked(view.low)
    top = ranked[:TOP_STORES]
    stores_chart = _figure(
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
        f"Top {len(top)} of {_int(len(ranked))} stores with low batteries.",
    )
    rows = (
        [
            store,
            server,
            _int(stats.stores[(server, store)].labels),
            _int(n),
            _share(n, stats.stores[(server, store)].labels),
        ]
        for (server, store), n in ranked[:25]
    )
    table = _table(["store", "server", "labels", f"under {threshold}%", "share"], rows, numeric={2, 3, 4})
    return _section(
        "battery",
        "Battery",
        f'<div class="grid">{histogram}{stores_chart}</div><h3>Stores to visit first</h3>{table}',
        f"Labels with a battery under {threshold}% will soon stop updating prices; "
        "send someone with replacements to the stores at the top of the list.",
    )


def _frequency_labels() -> list[str]:
    labels = ["0"]
    edges = FREQUENCY_EDGES
    labels.append(f"<{edges[1]}")
    labels.extend(f"{a}–{b}" for a, b in itertools.pairwise(edges[1:]))
    labels.append(f"≥{edges[-1]}")
    return labels


def _frequency(view: _View) -> str:
    stats = view.stats
    counts = [stats.frequency_zero, *(int(n) for n in stats.frequency_bins)]
    chart = _figure(
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
    table = _table(
        [
            "#",
            "ESL id",
            "store",
            "server",
            "refreshes/day",
            "vs. average",
            "refreshes",
            "battery %",
            "description",
        ],
        rows,
        numeric={0, 4, 5, 6, 7},
    )
    averages = {k: v.frequency_sum / v.labels for k, v in stats.stores.items() if v.labels}
    busiest = sorted(averages.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))[:TOP_STORES]
    stores_chart = _figure(
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
        f"Top {len(busiest)} of {_int(len(averages))} stores.",
    )
    return _section(
        "frequency",
        "Refresh frequency",
        f'<div class="grid">{chart}{stores_chart}</div>'
        f"<h3>The {len(stats.outliers)} labels refreshing most often</h3>{table}",
        f"Fleet average: <b>{mean:,.2f}</b> refreshes per day. Labels far above it drain their battery "
        "and usually point at a price feed or a template that changes too often.",
    )


def _heartbeat(view: _View) -> str:
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
    age_chart = _figure(
        bar_chart(
            "heartbeat",
            labels,
            counts,
            title="Days since the last heartbeat",
            xlabel="calendar days between last heartbeat and run date (UTC)",
            ylabel="labels",
            colors=colors,
        ),
        f"Red: last heartbeat on {esc(_day(view.cutoff_ms))}, the oldest day still in the "
        f"{view.lookback_days}-day window; these labels drop out of the next export unless they check in.",
    )
    ranked = _ranked(view.at_risk)
    top = ranked[:TOP_STORES]
    stores_chart = _figure(
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
        f"Top {len(top)} of {_int(len(ranked))} stores.",
    )
    rows = (
        [
            s.esl_id,
            s.store,
            s.server,
            _moment(s.last_hb_ms),
            f"{(view.anchor_ms - s.last_hb_ms) / DAY_MS:.1f}",
            s.battery,
            s.description,
        ]
        for s in stats.oldest_heartbeats
    )
    table = _table(
        ["ESL id", "store", "server", "last heartbeat", "days ago", "battery %", "description"],
        rows,
        numeric={4, 5},
    )
    return _section(
        "heartbeat",
        "Heartbeats",
        f'<div class="grid">{age_chart}{stores_chart}</div>'
        f"<h3>The {len(stats.oldest_heartbeats)} labels silent the longest</h3>{table}",
        "A label that stops sending heartbeats has lost its base station, its battery or its place on "
        "the shelf.",
    )


def _counter_rows(counter: Mapping[str, int], unknown: str) -> list[tuple[str, int]]:
    return sorted(((k or unknown, v) for k, v in counter.items()), key=lambda kv: (-kv[1], kv[0]))


def _screen_key(size: str) -> tuple[int, float, str]:
    try:
        return (0, float(size), size)
    except ValueError:
        return (1, 0.0, size)


def _hardware(view: _View) -> str:
    stats = view.stats
    chips = _counter_rows(stats.chip_families, "unknown")
    chip_chart = _figure(
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
    screen_chart = _figure(
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
    firmware = _table(
        ["firmware", "labels", "share"],
        ([k, _int(v), _share(v, stats.labels)] for k, v in _counter_rows(stats.firmwares, "unknown")[:15]),
        numeric={1, 2},
        compact=True,
    )
    return _section(
        "hardware",
        "Hardware",
        f'<div class="grid">{chip_chart}{screen_chart}</div><h3>Firmware</h3>{firmware}',
    )


def _run(view: _View) -> str:
    manifest = view.manifest
    servers = manifest.get("servers") or {}
    durations = (manifest.get("durations_s") or {}).get("servers") or {}
    rows = []
    for name in sorted(set(servers) | set(manifest.get("rows_by_server") or {})):
        info = servers.get(name) or {}
        stores = info.get("stores") or {}
        rows.append(
            [
                name,
                _int(len(stores)),
                _int(int((manifest.get("rows_by_server") or {}).get(name, info.get("rows", 0)) or 0)),
                _int(sum(int(s.get("stale", 0) or 0) for s in stores.values())),
                _seconds(float(durations.get(name, info.get("duration_s", 0)) or 0)),
                info.get("error") or "ok",
            ]
        )
    table = _table(
        ["server", "stores", "labels", "outside window", "fetch time", "status"], rows, numeric={1, 2, 3, 4}
    )
    empty = [
        f"{store} ({server})"
        for server, stores in sorted((manifest.get("rows_by_store") or {}).items())
        for store, count in sorted(stores.items())
        if not count
    ]
    empty_note = (
        f'<p class="note">Stores that exported no labels: {esc(", ".join(empty))}.</p>' if empty else ""
    )
    params = manifest.get("params") or {}
    param_table = _table(
        ["param", "value"],
        ((k, "(default)" if v is None else v) for k, v in sorted(params.items())),
        compact=True,
    )
    return _section(
        "run",
        "Servers and run settings",
        f"{table}{empty_note}<h3>Parameters</h3>{param_table}",
    )
