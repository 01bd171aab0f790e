"""The manifests: what a fetch batch and a published date report, as typed contracts and their builders.

Two documents, both JSON:

* the **batch manifest** (:class:`BatchManifest`): one per fetch task, written as
  ``_parts/batch-N.json`` and returned through XCom; counts, names and errors, never rows;
* the **run manifest** (:class:`RunManifest`): ``{ds}/_manifest.json``, written by the aggregate step
  from the batch manifests and what it published.

Everything that writes or reads them (engine, batch, aggregate, report, view, consumer DAG) uses these
types. Keys are only ever added, never renamed: outside tools read the files. Keys added after the
first release are ``NotRequired``, so older files still type-check when read back.

Just over 300 lines: every TypedDict of the manifests and their builders in one place, on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

if TYPE_CHECKING:
    from esl_operators.engine import ServerResult


class ErrorEntry(TypedDict):
    """A server (``store`` empty) or store that failed after its retries; ``error`` names it all."""

    server: str
    store: str
    error: str


class StoreRef(TypedDict):
    server: str
    store: str


class InvalidRecord(TypedDict):
    """A label left out because its detail could not be trusted (listed up to a cap per store)."""

    store: str
    esl_id: str
    reason: str


class RemovedId(TypedDict):
    """A label that answered 404 between listing and detail."""

    store: str
    esl_id: str


class StoreManifest(TypedDict):
    rows: int
    seen: int
    stale: int  # outside the heartbeat window
    invalid: int
    removed: int
    blanked_fields: dict[str, int]  # field -> values written empty because they were impossible
    capped: bool
    error: str | None
    # total_page of page 1, and the pages walked: they differ when the store moved onto more or fewer
    # pages while it was paged (the walk follows every page's total_page).
    pages_announced_first: NotRequired[int]
    pages_walked: NotRequired[int]


class Concurrency(TypedDict):
    final: int
    changes: int


class ServerManifest(TypedDict):
    rows: int
    duration_s: float
    requests: int
    retries: int
    concurrency: Concurrency
    error: str | None
    stores: dict[str, StoreManifest]
    invalid_records: list[InvalidRecord]
    removed_ids: list[RemovedId]


class BatchManifest(TypedDict):
    batch: int
    part: str
    rows: int
    anchor: str  # ISO 8601 UTC, ``...Z``
    heartbeat_cutoff: str
    duration_s: float
    servers: dict[str, ServerManifest]
    capped_stores: list[StoreRef]
    errors: list[ErrorEntry]
    invalid_records: int


class Partition(TypedDict):
    file: str
    rows: int
    servers: list[str]
    dropped_failed_store_rows: int
    dropped_duplicate_rows: int


class ListedInvalidRecord(InvalidRecord):
    server: str


class ListedRemovedId(RemovedId):
    server: str


class InvalidRecordListing(TypedDict):
    count: int
    listed: list[ListedInvalidRecord]


class RemovedListing(TypedDict):
    count: int
    listed: list[ListedRemovedId]


class Durations(TypedDict):
    batches: dict[str, float]
    servers: dict[str, float]
    aggregate: NotRequired[float]


class History(TypedDict):
    """What changed since the previous published date (``_changes.csv``): rows per change kind."""

    previous_date: str | None  # YYYY-MM-DD; None: no published date in the history window
    new: int
    gone: int
    battery_drop: int
    moved: int
    firmware: int


class RunManifest(TypedDict):
    date: str
    anchor: str | None
    #: Where ``anchor`` came from: ``logical_date``, ``data_interval_end`` or ``run_after`` for a DAG run
    #: (:data:`esl_operators.config.ANCHOR_SOURCES`), ``date`` for the standalone command's ``--date``.
    anchor_source: str
    heartbeat_cutoff: str | None
    header_style: str
    columns: list[str]
    # Text cells a spreadsheet would run as formulas were prefixed with ' (setting spreadsheet_safe).
    spreadsheet_safe: NotRequired[bool]
    rows: int
    partitions: list[Partition]
    rows_by_server: dict[str, int]
    rows_by_store: dict[str, dict[str, int]]
    capped_stores: list[StoreRef]
    errors: list[ErrorEntry]
    stale_labels: int
    invalid_records: InvalidRecordListing
    removed_labels: RemovedListing
    blanked_fields: dict[str, int]
    duplicates_dropped: int
    failed_store_rows_dropped: int
    retries: int
    removed_stale_files: list[str]
    params: dict[str, Any]
    durations_s: Durations
    servers: dict[str, ServerManifest]
    # Fleet history (esl_operators.history); added by the aggregate step after run_manifest().
    history: NotRequired[History]


class RunSummary(TypedDict):
    """What the aggregate task returns (XCom) and the command line prints."""

    date: str
    rows: int
    partitions: dict[str, int]
    errors: int
    manifest: str


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def server_manifest(result: ServerResult) -> ServerManifest:
    return {
        "rows": result.rows,
        "duration_s": round(result.duration_s, 3),
        "requests": result.requests,
        "retries": result.retries,
        "concurrency": {"final": result.concurrency, "changes": result.concurrency_changes},
        "error": result.error,
        "stores": {
            s.store: {
                "rows": s.rows,
                "seen": s.seen,
                "stale": s.stale,
                "invalid": s.invalid,
                "removed": s.removed,
                "blanked_fields": dict(sorted(s.blanked_fields.items())),
                "capped": s.capped,
                "error": s.error,
                "pages_announced_first": s.pages_announced_first,
                "pages_walked": s.pages_walked,
            }
            for s in result.stores
        },
        "invalid_records": [
            {"store": s.store, "esl_id": sample["esl_id"], "reason": sample["reason"]}
            for s in result.stores
            for sample in s.invalid_samples
        ],
        "removed_ids": [{"store": s.store, "esl_id": i} for s in result.stores for i in s.removed_ids],
    }


def batch_manifest(
    results: Sequence[ServerResult],
    *,
    batch: int,
    part: str,
    anchor: datetime,
    cutoff_ms: int,
    duration_s: float,
) -> BatchManifest:
    return {
        "batch": batch,
        "part": part,
        "rows": sum(r.rows for r in results),
        "anchor": iso_utc(anchor),
        "heartbeat_cutoff": iso_utc(datetime.fromtimestamp(cutoff_ms / 1000, tz=UTC)),
        "duration_s": round(duration_s, 3),
        "servers": {r.server: server_manifest(r) for r in results},
        "capped_stores": [
            {"server": r.server, "store": s.store} for r in results for s in r.stores if s.capped
        ],
        "errors": [e for r in results for e in r.errors()],
        "invalid_records": sum(s.invalid for r in results for s in r.stores),
    }


def run_manifest(
    batches: Sequence[BatchManifest],
    partitions: list[Partition],
    rows_by_store: dict[str, dict[str, int]],
    *,
    ds: str,
    anchor_source: str,
    header_style: str,
    columns: Sequence[str],
    spreadsheet_safe: bool = False,
    params: Mapping[str, Any] | None,
    removed_files: list[str],
) -> RunManifest:
    servers = {name: info for m in batches for name, info in m["servers"].items()}
    stores = [s for info in servers.values() for s in info["stores"].values()]
    blanked: dict[str, int] = {}
    for store in stores:
        for field, count in store["blanked_fields"].items():
            blanked[field] = blanked.get(field, 0) + count
    return {
        "date": ds,
        "anchor": batches[0]["anchor"] if batches else None,
        "anchor_source": anchor_source,
        "heartbeat_cutoff": batches[0]["heartbeat_cutoff"] if batches else None,
        "header_style": header_style,
        "columns": list(columns),
        "spreadsheet_safe": spreadsheet_safe,
        "rows": sum(p["rows"] for p in partitions),
        "partitions": partitions,
        "rows_by_server": {name: sum(rows_by_store.get(name, {}).values()) for name in servers},
        "rows_by_store": {name: rows_by_store.get(name, {}) for name in servers},
        "capped_stores": [c for m in batches for c in m["capped_stores"]],
        "errors": [e for m in batches for e in m["errors"]],
        "stale_labels": sum(s["stale"] for s in stores),
        "invalid_records": {
            "count": sum(s["invalid"] for s in stores),
            "listed": [
                {"server": name, "store": r["store"], "esl_id": r["esl_id"], "reason": r["reason"]}
                for name, info in servers.items()
                for r in info["invalid_records"]
            ],
        },
        "removed_labels": {
            "count": sum(s["removed"] for s in stores),
            "listed": [
                {"server": name, "store": r["store"], "esl_id": r["esl_id"]}
                for name, info in servers.items()
                for r in info["removed_ids"]
            ],
        },
        "blanked_fields": dict(sorted(blanked.items())),
        "duplicates_dropped": sum(p["dropped_duplicate_rows"] for p in partitions),
        "failed_store_rows_dropped": sum(p["dropped_failed_store_rows"] for p in partitions),
        "retries": sum(info["retries"] for info in servers.values()),
        "removed_stale_files": removed_files,
        "params": dict(params or {}),
        "durations_s": {
            "batches": {str(m["batch"]): m["duration_s"] for m in batches},
            "servers": {name: info["duration_s"] for name, info in servers.items()},
        },
        "servers": servers,
    }
