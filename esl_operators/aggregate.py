"""Aggregate step: part files of one run into sorted, published CSV partitions plus ``_manifest.json``.

One partition per fetch batch (``esl_id_part_{batch+1}.csv``); each is read, checked against its batch
manifest, cleaned (:mod:`esl_operators.cleaning`: failed stores' rows and duplicate labels dropped,
each counted in the manifest), sorted and formatted on its own.

Memory does not grow with the partition: a partition within a run's share of ``aggregate_memory_mb``
is sorted in memory; a larger one goes through the external sort of :mod:`esl_operators.spill`
(hash buckets, sorted runs, a k-way merge) with byte-identical output. The report's statistics,
the per-store counts and the typed snapshot (:mod:`esl_operators.snapshot`) take the de-duplicated
rows chunk by chunk (:class:`~esl_operators.spill.RowSink`); the fleet history
(:mod:`esl_operators.history`: changes since the previous published date, battery forecast) is
computed from the snapshots before the report.

The new files are staged and replace the date's previous publication as one set
(:mod:`esl_operators.publish`); ``_SUCCESS`` is written last; readers should wait for it.

Just over 300 lines: the order of the publishing steps (clean, sort, sinks, history, report,
manifest, commit) is the contract of a date's set, so it is kept readable in one place.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from esl_operators.cleaning import drop_duplicates, drop_failed
from esl_operators.csvformat import check_style, columns_for, render_lines, sort_order, spreadsheet_safe_for
from esl_operators.exceptions import EslError
from esl_operators.history import HistorySettings, publish_history
from esl_operators.manifest import BatchManifest, Partition, RunManifest, RunSummary, run_manifest
from esl_operators.merge import merge_runs
from esl_operators.partitions import stream_lines_atomic, write_lines_atomic
from esl_operators.parts import PART_SCHEMA, open_part, part_chunks
from esl_operators.publish import Publication, remove_stale_stagings
from esl_operators.settings import HeaderStyle, default, setting
from esl_operators.snapshot import SnapshotWriter
from esl_operators.spill import Budget, RowSink, make_runs, remove_stale_spills, spill_folder
from esl_operators.storage import (
    MANIFEST_NAME,
    PARTS_DIR,
    REPORT_NAME,
    SNAPSHOT_NAME,
    PathLike,
    part_path,
    partition_name,
    run_dir,
    write_json_atomic,
)

__all__ = ["AggregateError", "aggregate_run", "drop_duplicates", "drop_failed"]

log = logging.getLogger(__name__)


class AggregateError(EslError):
    """The parts do not add up to what the fetch tasks reported: nothing is published."""


def _check_batches(manifests: Sequence[BatchManifest]) -> list[BatchManifest]:
    ordered = sorted(manifests, key=lambda m: m["batch"])
    numbers = [m["batch"] for m in ordered]
    if numbers != list(range(len(ordered))):
        raise AggregateError(f"fetch manifests cover batches {numbers}, expected 0..{len(ordered) - 1}")
    return ordered


class StoreCounts:
    """Published rows per server and store, summed over de-duplicated chunks."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, int]] = {}

    def add(self, part: pa.Table) -> None:
        counts = part.group_by(["server", "store"]).aggregate([([], "count_all")])
        for server, store, count in zip(
            *(counts[c].to_pylist() for c in ("server", "store", "count_all")), strict=True
        ):
            stores = self.rows.setdefault(server, {})
            stores[store] = stores.get(store, 0) + count


@dataclass
class PartitionCounts:
    read: int = 0  # part rows
    failed: int = 0
    duplicates: int = 0
    runs: int = 1  # sorted runs merged; 1: sorted in memory

    @property
    def published(self) -> int:
        return self.read - self.failed - self.duplicates


def _head(chunks: Iterator[pa.Table], limit_bytes: int) -> tuple[list[pa.Table], bool]:
    """The first chunks, up to just over ``limit_bytes``; True if they are the whole part."""
    head: list[pa.Table] = []
    size = 0
    for chunk in chunks:
        head.append(chunk)
        size += chunk.nbytes
        if size > limit_bytes:
            return head, False
    return head, True


def _then(head: list[pa.Table], rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``head``'s chunks, then the rest; each let go of once handed on (the list must not hold them)."""
    head.reverse()
    while head:
        yield head.pop()
    yield from rest


def publish_partition(
    part: PathLike,
    manifest: BatchManifest,
    target: PathLike,
    *,
    header_style: HeaderStyle,
    zone: ZoneInfo,
    spreadsheet_safe: bool,
    budget: Budget,
    sinks: Sequence[RowSink],
) -> PartitionCounts:
    """Clean, sort and write one partition from its part file; feed its published rows to ``sinks``."""

    def check_rows(rows: int) -> None:
        if rows != manifest["rows"]:
            raise AggregateError(
                f"batch {manifest['batch']}: part file has {rows} rows, "
                f"its fetch task reported {manifest['rows']}"
            )

    def render(rows: pa.Table) -> pa.ChunkedArray:
        return render_lines(rows, header_style, zone, spreadsheet_safe)

    header = columns_for(header_style)
    with contextlib.ExitStack() as stack:
        chunks = part_chunks(stack.enter_context(open_part(part)), budget.chunk_bytes)
        head, whole = _head(chunks, budget.run_bytes)
        if whole:  # small enough to sort in memory: one table, as it always was
            table = pa.concat_tables(head) if head else PART_SCHEMA.empty_table()
            del head
            check_rows(table.num_rows)
            complete = drop_failed(table, manifest["errors"])
            unique = drop_duplicates(complete)
            for sink in sinks:
                sink.add(unique)
            write_lines_atomic(target, header, render(unique), sort_order(unique))
            return PartitionCounts(
                table.num_rows, table.num_rows - complete.num_rows, complete.num_rows - unique.num_rows
            )
        folder = stack.enter_context(spill_folder(part.parent))
        runs, counts = make_runs(
            _then(head, chunks),
            expected_rows=manifest["rows"],
            budget=budget,
            folder=folder,
            errors=manifest["errors"],
            render=render,
            sinks=sinks,
            check_rows=check_rows,
        )
        stream_lines_atomic(target, header, merge_runs(runs, counts.batch_rows))
        return PartitionCounts(counts.rows, counts.failed, counts.duplicates, len(runs))


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
    aggregate_memory_mb: int = default("aggregate_memory_mb"),
    anchor_source: str = "date",
    history_days: int = default("history_days"),
    battery_drop_points: int = default("battery_drop_points"),
    battery_alert_pct: int = default("battery_alert_pct"),
    forecast_horizon_days: int = default("forecast_horizon_days"),
) -> RunSummary:
    """Publish the partitions, the snapshot, the history files and the run manifest (and
    ``report.html``); return a small summary.

    ``aggregate_memory_mb`` bounds the working memory of sorting a partition, whatever its size.
    The last four are the history's settings (:mod:`esl_operators.history`).
    ``anchor_source`` says where the batches' heartbeat anchor came from: for a DAG run one of
    :data:`esl_operators.config.ANCHOR_SOURCES`; ``"date"`` (the default) is midnight UTC of ``ds``, as
    the standalone command anchors.
    """
    started = time.monotonic()
    style, zone = check_style(header_style, timezone)
    guarded = spreadsheet_safe_for(style, spreadsheet_safe)
    ordered = _check_batches(manifests)
    history = HistorySettings.checked(
        history_days=history_days,
        battery_drop_points=battery_drop_points,
        battery_alert_pct=battery_alert_pct,
        forecast_horizon_days=forecast_horizon_days,
    )
    folder = run_dir(output_root, ds)
    remove_stale_spills(folder / PARTS_DIR)
    remove_stale_stagings(folder)
    # Everything is written into a staging folder first: the previous publication (with its _SUCCESS)
    # stays complete until the whole new set exists (esl_operators.publish).
    with Publication(folder) as publication:
        published = _publish(
            publication,
            ordered,
            output_root=output_root,
            ds=ds,
            style=style,
            zone=zone,
            guarded=guarded,
            params=params,
            report=report,
            budget=Budget.from_mb(setting("aggregate_memory_mb").parse(aggregate_memory_mb)),
            anchor_source=anchor_source,
            started=started,
            history=history,
        )
    return {
        "date": ds,
        "rows": published["rows"],
        "partitions": {p["file"]: p["rows"] for p in published["partitions"]},
        "errors": len(published["errors"]),
        "manifest": str(folder / MANIFEST_NAME),
    }


def _publish(
    publication: Publication,
    ordered: Sequence[BatchManifest],
    *,
    output_root: PathLike,
    ds: str,
    style: HeaderStyle,
    zone: ZoneInfo,
    guarded: bool,
    params: Mapping[str, Any] | None,
    report: bool,
    budget: Budget,
    anchor_source: str,
    started: float,
    history: HistorySettings,
) -> RunManifest:
    """Stage the date's new files, then commit them as one set; return the run manifest."""
    if report:
        from esl_operators.report import FleetStats  # matplotlib: loaded only when a report is wanted

        stats: Any = FleetStats()  # report aggregates only: bounded by stores and days, not by rows
    store_counts = StoreCounts()
    snapshot = SnapshotWriter(publication.path(SNAPSHOT_NAME))
    sinks: list[RowSink] = [store_counts, snapshot, stats] if report else [store_counts, snapshot]
    if report:
        publication.path(REPORT_NAME)  # part of the new set: the earlier report is replaced, not removed
    partitions: list[Partition] = []
    with snapshot:  # complete once every partition has fed it
        for manifest in ordered:
            batch = manifest["batch"]
            name = partition_name(batch)
            counts = publish_partition(
                part_path(output_root, ds, batch),
                manifest,
                publication.path(name),
                header_style=style,
                zone=zone,
                spreadsheet_safe=guarded,
                budget=budget,
                sinks=sinks,
            )
            partitions.append(
                {
                    "file": name,
                    "rows": counts.published,
                    "servers": sorted(manifest["servers"]),
                    "dropped_failed_store_rows": counts.failed,
                    "dropped_duplicate_rows": counts.duplicates,
                }
            )
            how = "in memory" if counts.runs == 1 else f"{counts.runs} runs merged"
            log.info("%s: %d rows (sorted %s)", name, counts.published, how)
    # Before the manifest (its removed_stale_files) and the report (which shows the history).
    changes = publish_history(
        publication, output_root=output_root, ds=ds, settings=history, spreadsheet_safe=guarded
    )
    published = run_manifest(
        ordered,
        partitions,
        {server: dict(sorted(stores.items())) for server, stores in store_counts.rows.items()},
        ds=ds,
        anchor_source=anchor_source,
        header_style=style,
        columns=columns_for(style),
        spreadsheet_safe=guarded,
        params=params,
        removed_files=publication.stale_files(batches=len(ordered)),
    )
    published["history"] = changes
    if report:
        from esl_operators.report import publish_report

        publish_report(
            publication.path(REPORT_NAME).parent,
            stats,
            published,
            output_root=output_root,
            history_days=history.history_days,
            battery_alert_pct=history.battery_alert_pct,
        )
    published["durations_s"]["aggregate"] = round(time.monotonic() - started, 3)
    write_json_atomic(publication.path(MANIFEST_NAME), published)
    publication.commit(batches=len(ordered))
    return published
