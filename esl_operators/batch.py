"""One fetch batch: servers -> part file + the small JSON manifest written beside it.

The manifest (also a fetch task's XCom) holds only counts, names and errors: rows never travel through
XCom. Shared by the Airflow operator and the standalone command, so both write the same layout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from esl_operators.client import ServerTarget
from esl_operators.engine import FetchSettings, ServerResult, fetch_servers
from esl_operators.storage import PartWriter, PathLike, part_path, write_json_atomic


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def batch_manifest(
    results: Sequence[ServerResult],
    *,
    batch: int,
    part: str,
    anchor: datetime,
    cutoff_ms: int,
    duration_s: float,
) -> dict[str, Any]:
    return {
        "batch": batch,
        "part": part,
        "rows": sum(r.rows for r in results),
        "anchor": _iso(anchor),
        "heartbeat_cutoff": _iso(datetime.fromtimestamp(cutoff_ms / 1000, tz=UTC)),
        "duration_s": round(duration_s, 3),
        "servers": {r.server: r.to_manifest() for r in results},
        "capped_stores": [
            {"server": r.server, "store": s.store} for r in results for s in r.stores if s.capped
        ],
        "errors": [e for r in results for e in r.errors()],
        "invalid_records": sum(s.invalid for r in results for s in r.stores),
    }


def error_summary(manifest: dict[str, Any], limit: int = 5) -> str:
    """One line per failure, for the exception that fails the task."""
    errors = manifest["errors"]
    lines = [e["error"] for e in errors[:limit]]  # each already names its server, store and id
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more (see the batch manifest)")
    return "\n".join(lines)


def run_batch(
    targets: Sequence[ServerTarget],
    settings: FetchSettings,
    *,
    output_root: PathLike,
    ds: str,
    batch: int,
    anchor: datetime,
    max_threads: int,
) -> dict[str, Any]:
    """Fetch ``targets`` into ``_parts/batch-{batch}.csv`` and write its manifest; return the manifest.

    The part appears atomically (temporary name, then rename), so a killed attempt leaves nothing
    a retry could mistake for output.
    """
    started = time.monotonic()
    path = part_path(output_root, ds, batch)
    with PartWriter(path) as writer:
        results = fetch_servers(targets, settings, writer, max_threads=max_threads)
    manifest = batch_manifest(
        results,
        batch=batch,
        part=str(path),
        anchor=anchor,
        cutoff_ms=settings.cutoff_ms,
        duration_s=time.monotonic() - started,
    )
    write_json_atomic(path.with_suffix(".json"), manifest)
    return manifest
