"""The small JSON manifest a fetch task writes beside its part file and returns through XCom.

Only counts, names and errors: rows never travel through XCom.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from esl_operators.engine import ServerResult


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
