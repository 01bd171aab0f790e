"""Fleet report: streaming statistics over part rows, rendered as one self-contained HTML page.

Kept out of the fetch path: the aggregate task feeds each partition to :class:`FleetStats` while it
publishes it, then calls :func:`publish_report` to write ``report.html`` beside the partitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from esl_operators.records import epoch_ms
from esl_operators.report.page import render_report
from esl_operators.report.stats import FleetStats
from esl_operators.storage import REPORT_NAME, PathLike, write_text_atomic

__all__ = ["REPORT_NAME", "FleetStats", "anchor_ms_of", "publish_report", "render_report"]


def anchor_ms_of(manifest: Mapping[str, Any]) -> int:
    """The run's heartbeat anchor from the run manifest (``anchor``, else midnight UTC of ``date``)."""
    anchor = manifest.get("anchor") or f"{manifest['date']}T00:00:00+00:00"
    return epoch_ms(datetime.fromisoformat(anchor.replace("Z", "+00:00")))


def publish_report(
    folder: PathLike,
    stats: FleetStats,
    manifest: Mapping[str, Any],
    *,
    battery_threshold: int = 20,
    output_root: PathLike | None = None,
    history_days: int | None = None,
    battery_alert_pct: int | None = None,
) -> Any:
    """Render the report of one run and write it atomically as ``{folder}/report.html``.

    With ``output_root`` and a ``history`` block in the manifest, the page gains "Since {P}" and "Trends"
    (:mod:`.history`): ``folder`` (the staging folder) holds the run's history files, ``output_root`` the
    earlier dates'. The window and the alert level are ``history_days`` and ``battery_alert_pct``;
    not given, the run's params of those names as the manifest records them, else their defaults.
    """
    path = folder / REPORT_NAME
    history = None
    if output_root is not None and isinstance(manifest.get("history"), dict):
        from esl_operators.report.history import history_sections

        params = manifest.get("params") or {}
        history = history_sections(
            folder,
            output_root,
            manifest,
            history_days=_given(history_days, params, "history_days", HISTORY_DAYS),
            battery_alert_pct=_given(battery_alert_pct, params, "battery_alert_pct", BATTERY_ALERT_PCT),
            low_threshold=battery_threshold,
        )
    html = render_report(
        stats,
        manifest,
        anchor_ms=anchor_ms_of(manifest),
        battery_threshold=battery_threshold,
        history=history,
    )
    write_text_atomic(path, html)
    return path


#: The issue's defaults of the params, for manifests that do not record them.
HISTORY_DAYS = 30
BATTERY_ALERT_PCT = 10


def _given(value: int | None, params: Mapping[str, Any], name: str, fallback: int) -> int:
    """``value`` if given, else the manifest's param ``name`` if it is an integer, else ``fallback``."""
    if value is not None:
        return value
    recorded = params.get(name)
    return recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else fallback
