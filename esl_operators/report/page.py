"""The fleet report: one self-contained HTML page from :class:`FleetStats` and the run manifest.

No scripts, no external files, no network: CSS is inline and charts are inline SVG, so the page can
be mailed, archived or printed as is. The markup is the template ``templates/report.html``
(autoescaping, see :mod:`esl_operators.templating`); what it shows comes from :mod:`.summary`,
:mod:`.fleet` and :mod:`.attention`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from esl_operators.records import DAY_MS
from esl_operators.report import fleet, summary
from esl_operators.report.attention import findings, row_mismatch
from esl_operators.report.formats import day, moment
from esl_operators.report.stats import FleetStats, StoreKey
from esl_operators.templating import render

DEFAULT_LOOKBACK_DAYS = 7


#: How the header names the manifest's ``anchor_source`` (unknown or missing: not named).
ANCHOR_SOURCE_NAMES = {
    "logical_date": "the run's logical date",
    "data_interval_end": "the end of the run's data interval",
    "run_after": "the run's run-after time",
    "date": "the date given to esl-export fetch",
}


def render_report(
    stats: FleetStats,
    manifest: Mapping[str, Any],
    *,
    anchor_ms: int,
    battery_threshold: int = 20,
    history: Mapping[str, Any] | None = None,
) -> str:
    """The report page for one run date; ``history``: the sections of :func:`.history.history_sections`."""
    if not 0 < battery_threshold <= 100:
        raise ValueError(f"battery_threshold must be in 1..100, got {battery_threshold}")
    view = ReportView(stats, manifest, anchor_ms, battery_threshold)
    found = findings(manifest)
    return render(
        "report.html",
        date=str(manifest.get("date") or day(anchor_ms)),
        window={
            "cutoff": moment(view.cutoff_ms),
            "anchor": moment(view.anchor_ms),
            "source": ANCHOR_SOURCE_NAMES.get(str(manifest.get("anchor_source"))),
            "days": view.lookback_days,
        },
        problems=[f for f in found if f.attention],
        housekeeping=[f for f in found if not f.attention],
        mismatch=row_mismatch(manifest, stats.labels),
        totals=summary.totals(view),
        battery=fleet.battery(view),
        frequency=fleet.frequency(view),
        heartbeat=fleet.heartbeat(view),
        hardware=fleet.hardware(view),
        run=summary.run(view),
        history=history,
    )


class ReportView:
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
            key: sum(n for day_, n in s.heartbeat_days.items() if day_ <= self.cutoff_day)
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
