"""Aggregate step: part files of one run into sorted, published CSV partitions plus ``_manifest.json``.

One partition per fetch batch (``esl_id_part_{batch+1}.csv``); each is read, checked against its batch
manifest, sorted and formatted on its own, so memory is bounded by the largest batch, not the fleet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from esl_operators.csvformat import check_style, columns_for, sort_part, to_output
from esl_operators.exceptions import EslError
from esl_operators.storage import (
    MANIFEST_NAME,
    PathLike,
    part_path,
    partition_name,
    read_part,
    remove_stale_partitions,
    run_dir,
    write_csv_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)


class AggregateError(EslError):
    """The parts do not add up to what the fetch tasks reported: nothing is published."""


def _check_batches(manifests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    ordered = sorted(manifests, key=lambda m: m["batch"])
    numbers = [m["batch"] for m in ordered]
    if numbers != list(range(len(ordered))):
        raise AggregateError(f"fetch manifests cover batches {numbers}, expected 0..{len(ordered) - 1}")
    return ordered


def aggregate_run(
    manifests: Sequence[Mapping[str, Any]],
    *,
    output_root: PathLike,
    ds: str,
    header_style: str = "standard",
    timezone: str = "UTC",
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the partitions and the run manifest; return a small summary for XCom."""
    started = time.monotonic()
    style, zone = check_style(header_style, timezone)
    ordered = _check_batches(manifests)
    folder = run_dir(output_root, ds)
    partitions: list[dict[str, Any]] = []
    for manifest in ordered:
        batch = manifest["batch"]
        part = read_part(part_path(output_root, ds, batch))
        if len(part) != manifest["rows"]:
            raise AggregateError(
                f"batch {batch}: part file has {len(part)} rows, its fetch task reported {manifest['rows']}"
            )
        name = partition_name(batch)
        write_csv_atomic(folder / name, to_output(sort_part(part), style, zone))
        partitions.append({"file": name, "rows": len(part), "servers": sorted(manifest["servers"])})
        log.info("%s: %d rows", name, len(part))
    stale = remove_stale_partitions(folder, {p["file"] for p in partitions})
    run_manifest = _run_manifest(ordered, partitions, ds, style, params, stale)
    run_manifest["durations_s"]["aggregate"] = round(time.monotonic() - started, 3)
    write_json_atomic(folder / MANIFEST_NAME, run_manifest)
    return {
        "date": ds,
        "rows": run_manifest["rows"],
        "partitions": {p["file"]: p["rows"] for p in partitions},
        "errors": len(run_manifest["errors"]),
        "manifest": str(folder / MANIFEST_NAME),
    }


def _run_manifest(
    batches: Sequence[Mapping[str, Any]],
    partitions: list[dict[str, Any]],
    ds: str,
    style: str,
    params: Mapping[str, Any] | None,
    stale: list[str],
) -> dict[str, Any]:
    servers = {name: info for m in batches for name, info in m["servers"].items()}
    return {
        "date": ds,
        "anchor": batches[0]["anchor"] if batches else None,
        "heartbeat_cutoff": batches[0]["heartbeat_cutoff"] if batches else None,
        "header_style": style,
        "columns": list(columns_for(style)),  # type: ignore[arg-type]
        "rows": sum(p["rows"] for p in partitions),
        "partitions": partitions,
        "rows_by_server": {name: info["rows"] for name, info in servers.items()},
        "rows_by_store": {
            name: {store: s["rows"] for store, s in info["stores"].items()} for name, info in servers.items()
        },
        "capped_stores": [c for m in batches for c in m["capped_stores"]],
        "errors": [e for m in batches for e in m["errors"]],
        "invalid_records": {
            "count": sum(m["invalid_records"] for m in batches),
            "listed": [
                {"server": name, **r} for name, info in servers.items() for r in info["invalid_records"]
            ],
        },
        "stale_labels": sum(s["stale"] for info in servers.values() for s in info["stores"].values()),
        "removed_stale_partitions": stale,
        "params": dict(params or {}),
        "durations_s": {
            "batches": {str(m["batch"]): m["duration_s"] for m in batches},
            "servers": {name: info["duration_s"] for name, info in servers.items()},
        },
        "servers": servers,
    }
