"""Aggregate step: part files of one run into sorted, published CSV partitions plus ``_manifest.json``.

One partition per fetch batch (``esl_id_part_{batch+1}.csv``); each is read, checked against its batch
manifest, cleaned, sorted and formatted on its own, so memory is bounded by the largest batch.

Cleaning, each step counted in the manifest:

* rows of a store (or server) that failed are dropped, so a published store is always complete;
* an ESL id seen twice on one server keeps the row with the latest ``last_hb_time``.

``_SUCCESS`` is written last; readers should wait for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esl_operators.csvformat import check_style, columns_for, render_lines, sort_order, spreadsheet_safe_for
from esl_operators.exceptions import EslError
from esl_operators.manifest import BatchManifest, ErrorEntry, Partition, RunSummary, run_manifest
from esl_operators.partitions import write_lines_atomic
from esl_operators.parts import read_part
from esl_operators.storage import (
    MANIFEST_NAME,
    REPORT_NAME,
    SUCCESS_NAME,
    PathLike,
    part_path,
    partition_name,
    remove_stale_outputs,
    run_dir,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)


class AggregateError(EslError):
    """The parts do not add up to what the fetch tasks reported: nothing is published."""


def _check_batches(manifests: Sequence[BatchManifest]) -> list[BatchManifest]:
    ordered = sorted(manifests, key=lambda m: m["batch"])
    numbers = [m["batch"] for m in ordered]
    if numbers != list(range(len(ordered))):
        raise AggregateError(f"fetch manifests cover batches {numbers}, expected 0..{len(ordered) - 1}")
    return ordered


def drop_failed(part: pa.Table, errors: Sequence[ErrorEntry]) -> pa.Table:
    """Remove the rows of failed stores (``store`` empty: the whole server failed)."""
    failed_servers = sorted({e["server"] for e in errors if not e["store"]})
    failed_stores = sorted({f"{e['server']}\x1f{e['store']}" for e in errors if e["store"]})
    if not failed_servers and not failed_stores:
        return part
    keys = pc.binary_join_element_wise(part["server"], part["store"], "\x1f")
    bad = pc.or_(
        pc.is_in(part["server"], pa.array(failed_servers, pa.string())),
        pc.is_in(keys, pa.array(failed_stores, pa.string())),
    )
    return part.filter(pc.invert(bad))


def drop_duplicates(part: pa.Table) -> pa.Table:
    """Keep one row per (server, esl_id): the latest ``last_hb_time``, ties to the first store by name."""
    if pc.count_distinct(part["esl_id"]).as_py() == part.num_rows:
        return part  # the usual case: every id once, so no (server, esl_id) pair repeats either
    keys = pc.binary_join_element_wise(part["server"], part["esl_id"], "\x1f")
    ranked = part.append_column("_key", keys).append_column("_hb", pc.cast(part["last_hb_time"], pa.int64()))
    order = pc.sort_indices(
        ranked, sort_keys=[("_key", "ascending"), ("_hb", "descending"), ("store", "ascending")]
    )
    ranked = ranked.take(order)
    sorted_keys = ranked["_key"].combine_chunks()
    first = np.ones(len(sorted_keys), dtype=bool)
    first[1:] = pc.not_equal(sorted_keys[1:], sorted_keys[:-1]).to_numpy(zero_copy_only=False)
    return ranked.filter(pa.array(first)).drop_columns(["_key", "_hb"])


def aggregate_run(
    manifests: Sequence[BatchManifest],
    *,
    output_root: PathLike,
    ds: str,
    header_style: str = "standard",
    timezone: str = "UTC",
    spreadsheet_safe: bool | None = None,
    params: Mapping[str, Any] | None = None,
    report: bool = True,
    anchor_source: str = "date",
) -> RunSummary:
    """Publish the partitions and the run manifest (and ``report.html``); return a small summary.

    ``anchor_source`` says where the batches' heartbeat anchor came from: for a DAG run one of
    :data:`esl_operators.config.ANCHOR_SOURCES`; ``"date"`` (the default) is midnight UTC of ``ds``, as
    the standalone command anchors.
    """
    started = time.monotonic()
    style, zone = check_style(header_style, timezone)
    guarded = spreadsheet_safe_for(style, spreadsheet_safe)
    ordered = _check_batches(manifests)
    folder = run_dir(output_root, ds)
    (folder / SUCCESS_NAME).unlink(missing_ok=True)
    (folder / REPORT_NAME).unlink(missing_ok=True)  # never leave an earlier run's report behind
    if report:
        from esl_operators.report import FleetStats  # matplotlib: loaded only when a report is wanted

        stats: Any = FleetStats()  # report aggregates only: bounded by stores and days, not by rows
    partitions: list[Partition] = []
    rows_by_store: dict[str, dict[str, int]] = {}
    for manifest in ordered:
        batch = manifest["batch"]
        part = read_part(part_path(output_root, ds, batch))
        if len(part) != manifest["rows"]:
            raise AggregateError(
                f"batch {batch}: part file has {len(part)} rows, its fetch task reported {manifest['rows']}"
            )
        complete = drop_failed(part, manifest["errors"])
        unique = drop_duplicates(complete)
        if report:
            stats.add(unique)
        name = partition_name(batch)
        write_lines_atomic(
            folder / name, columns_for(style), render_lines(unique, style, zone, guarded), sort_order(unique)
        )
        partitions.append(
            {
                "file": name,
                "rows": unique.num_rows,
                "servers": sorted(manifest["servers"]),
                "dropped_failed_store_rows": len(part) - len(complete),
                "dropped_duplicate_rows": len(complete) - len(unique),
            }
        )
        counts = unique.group_by(["server", "store"]).aggregate([([], "count_all")])
        for server, store, count in zip(
            *(counts[c].to_pylist() for c in ("server", "store", "count_all")), strict=True
        ):
            rows_by_store.setdefault(server, {})[store] = count
        log.info("%s: %d rows", name, len(unique))
    removed = remove_stale_outputs(folder, len(ordered))
    published = run_manifest(
        ordered,
        partitions,
        rows_by_store,
        ds=ds,
        anchor_source=anchor_source,
        header_style=style,
        columns=columns_for(style),
        spreadsheet_safe=guarded,
        params=params,
        removed_files=removed,
    )
    if report:
        from esl_operators.report import publish_report

        publish_report(folder, stats, published)  # before the manifest, which marks the run published
    published["durations_s"]["aggregate"] = round(time.monotonic() - started, 3)
    write_json_atomic(folder / MANIFEST_NAME, published)
    write_text_atomic(folder / SUCCESS_NAME, "")
    return {
        "date": ds,
        "rows": published["rows"],
        "partitions": {p["file"]: p["rows"] for p in partitions},
        "errors": len(published["errors"]),
        "manifest": str(folder / MANIFEST_NAME),
    }
