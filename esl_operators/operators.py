"""Airflow operators: thin, declarative wrappers around the engine and the aggregate step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from esl_operators.aggregate import aggregate_run
from esl_operators.config import parse_server_list, resolve_output_root, run_anchor
from esl_operators.engine import FetchSettings, fetch_servers
from esl_operators.exceptions import EslError
from esl_operators.hooks import resolve_targets
from esl_operators.manifests import batch_manifest, error_summary
from esl_operators.records import heartbeat_cutoff_ms
from esl_operators.storage import PartWriter, part_path, write_json_atomic


class EslFetchError(EslError):
    """Raised after a fetch task has written its part and manifest, when something failed."""


class EslFetchOperator(BaseOperator):
    """Fetch every ESL of a batch of ESL-Working servers into one part file.

    Rows stream to ``{output_root}/{ds}/_parts/batch-{map_index}.csv``; the task returns a small
    manifest (rows, per-store counts, capped stores, errors), never the rows themselves. If any server or
    store failed, the task fails after writing its manifest, so the retry redoes this batch alone.

    :param servers: Airflow connection ids (type ``http``) of the servers in this batch.
    :param output_root: Root folder or object-storage URL; empty means the Variable ``esl_output_root``,
        else ``./data/esl_export``.
    :param lookback_days: Keep labels whose last heartbeat is at most this many days before the run's
        ``data_interval_end``.
    :param max_records_per_store: Stop a store once this many rows are kept (named in the manifest).
    :param max_concurrency: Requests in flight per server.
    :param max_threads: Servers fetched at once, each in its own thread and event loop.
    :param progress_interval_s: Seconds between progress lines in the task log.
    """

    template_fields: Sequence[str] = (
        "servers",
        "output_root",
        "lookback_days",
        "max_records_per_store",
        "max_concurrency",
        "max_threads",
    )
    ui_color = "#d8f3dc"

    def __init__(
        self,
        *,
        servers: list[str] | str,
        output_root: str | None = None,
        lookback_days: int | str = 7,
        max_records_per_store: int | str = 50_000,
        max_concurrency: int | str = 4,
        max_threads: int | str = 3,
        progress_interval_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.servers = servers
        self.output_root = output_root
        self.lookback_days = lookback_days
        self.max_records_per_store = max_records_per_store
        self.max_concurrency = max_concurrency
        self.max_threads = max_threads
        self.progress_interval_s = progress_interval_s

    def execute(self, context: Any) -> dict[str, Any]:
        started = time.monotonic()
        anchor, ds = run_anchor(context)
        batch = max(int(context["ti"].map_index), 0)  # -1 when the operator is used unmapped
        servers = parse_server_list(self.servers, f"task {self.task_id!r} param 'servers'")
        cutoff = heartbeat_cutoff_ms(anchor, int(self.lookback_days))
        settings = FetchSettings(
            cutoff_ms=cutoff,
            max_concurrency=int(self.max_concurrency),
            max_records_per_store=int(self.max_records_per_store),
            progress_interval_s=self.progress_interval_s,
        )
        targets = resolve_targets(servers)
        root = resolve_output_root(self.output_root)
        path = part_path(root, ds, batch)
        self.log.info("batch %d: %d servers -> %s (heartbeat cutoff %d)", batch, len(targets), path, cutoff)
        with PartWriter(path) as writer:
            results = fetch_servers(targets, settings, writer, max_threads=int(self.max_threads))
        manifest = batch_manifest(
            results,
            batch=batch,
            part=str(path),
            anchor=anchor,
            cutoff_ms=cutoff,
            duration_s=time.monotonic() - started,
        )
        write_json_atomic(path.with_suffix(".json"), manifest)
        self.log.info("batch %d: %d rows, %d errors", batch, manifest["rows"], len(manifest["errors"]))
        if manifest["errors"]:
            count = len(manifest["errors"])
            raise EslFetchError(f"batch {batch} had {count} failures:\n{error_summary(manifest)}")
        return manifest


class EslAggregateOperator(BaseOperator):
    """Sort the fetch tasks' parts into ``esl_id_part_N.csv`` partitions and write ``_manifest.json``.

    :param manifests: The fetch tasks' manifests (usually ``fetch.output``).
    :param output_root: As for :class:`EslFetchOperator`.
    :param header_style: ``standard`` or ``legacy`` (the legacy script's Chinese headers and order).
    :param timezone: IANA zone for legacy timestamps; standard timestamps are always UTC.
    """

    template_fields: Sequence[str] = ("manifests", "output_root", "header_style", "timezone")
    ui_color = "#b7e4c7"

    def __init__(
        self,
        *,
        manifests: Any,
        output_root: str | None = None,
        header_style: str = "standard",
        timezone: str = "UTC",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.manifests = manifests
        self.output_root = output_root
        self.header_style = header_style
        self.timezone = timezone

    def execute(self, context: Any) -> dict[str, Any]:
        _, ds = run_anchor(context)
        params = dict(context.get("params") or {})
        # Index by position: iterating a lazy XCom sequence probes one past the end and logs a 404.
        manifests = self.manifests or []
        return aggregate_run(
            [manifests[i] for i in range(len(manifests))],
            output_root=resolve_output_root(self.output_root),
            ds=ds,
            header_style=self.header_style,
            timezone=self.timezone,
            params=params,
        )
