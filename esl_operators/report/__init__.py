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
    folder: PathLike, stats: FleetStats, manifest: Mapping[str, Any], *, battery_threshold: int = 20
) -> Any:
    """Render the report of one run and write it atomically as ``{folder}/report.html``."""
    path = folder / REPORT_NAME
    html = render_report(
        stats, manifest, anchor_ms=anchor_ms_of(manifest), battery_threshold=battery_threshold
    )
    write_text_atomic(path, html)
    return path
