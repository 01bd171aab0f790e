"""Helpers for DAGs scheduled on the ``esl_export_csv`` Asset (see ``dags/examples/``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from esl_operators.storage import MANIFEST_NAME, read_json

log = logging.getLogger(__name__)


def summarize_events(events: Iterable[Any]) -> list[dict[str, Any]]:
    """One summary per Asset event: the published date, its folder and rows per partition.

    Each event's ``extra`` is what :func:`esl_operators.operators.published_event` wrote; the
    partition counts come from the date's ``_manifest.json`` in that folder.
    """
    from airflow.sdk import ObjectStoragePath

    summaries = []
    for event in events:
        extra = dict(event.extra or {})
        if "folder" not in extra:
            log.warning("asset event without a 'folder' in its extra, skipped: %s", extra)
            continue
        manifest = read_json(ObjectStoragePath(extra["folder"]) / MANIFEST_NAME)
        for partition in manifest["partitions"]:
            log.info("%s %s: %d rows", extra["ds"], partition["file"], partition["rows"])
        summaries.append(
            {
                "ds": extra["ds"],
                "folder": extra["folder"],
                "rows": manifest["rows"],
                "partitions": {p["file"]: p["rows"] for p in manifest["partitions"]},
            }
        )
    return summaries
