"""Airflow operators: thin, declarative wrappers around the engine and the aggregate step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseOperator

from esl_operators.aggregate import aggregate_run
from esl_operators.batch import error_summary, run_batch
from esl_operators.config import anchor_of, parse_server_list, resolve_output_root, run_anchor
from esl_operators.engine import FetchSettings, make_settings
from esl_operators.exceptions import ConfigError, EslError
from esl_operators.hooks import resolve_targets
from esl_operators.pagination import DEFAULT_MAX_PAGES
from esl_operators.records import heartbeat_cutoff_ms
from esl_operators.redaction import redact_url

ON_SERVER_ERROR = ("fail", "skip")


class EslFetchError(EslError):
    """Raised after a fetch task has written its part and manifest, when something failed."""


class EslFetchOperator(BaseOperator):
    """Fetch every ESL of a batch of ESL-Working servers into one part file.

    Rows stream to ``{output_root}/{ds}/_parts/batch-{map_index}.arrow``; the task returns a small
    manifest (rows, per-store counts, capped stores, errors), never the rows themselves. If any server or
    store failed, the task fails after writing its manifest, so the retry redoes this batch alone.

    :param servers: Airflow connection ids (type ``http``) of the servers in this batch.
    :param output_root: Root folder or object-storage URL; empty means the Variable ``esl_output_root``,
        else ``./data/esl_export``.
    :param lookback_days: Keep labels whose last heartbeat is at most this many days before the run's
        anchor: its logical date (else ``data_interval_end``, then ``run_after``).
    :param max_records_per_store: Stop a store once this many rows are kept (named in the manifest).
    :param max_concurrency: Requests in flight per server (the ceiling, when adaptive).
    :param adaptive_concurrency: Adapt each server's limit between 1 and ``max_concurrency`` to its
        latency and overload answers (429/503/timeouts); ``False`` keeps it fixed at ``max_concurrency``.
    :param max_threads: Servers fetched at once, each in its own thread and event loop.
    :param on_server_error: ``fail`` (default): after writing its part and manifest the task fails if
        any server or store failed, so Airflow retries this batch alone. ``skip``: succeed anyway; the
        failures are in the manifest and the aggregate step leaves the failed stores out.
    :param request_timeout_s: Total time for one request attempt (connection extra ``timeout`` wins).
    :param connect_timeout_s: Time to connect (connection extra ``connect_timeout`` wins).
    :param retry_attempts: Tries per request on transient failures, the first included.
    :param retry_max_delay_s: Cap of the exponential backoff between tries.
    :param max_pages: A store announcing more pages than this is refused as a server bug.
    :param max_body_mb: A response body larger than this is refused (memory safety).
    :param progress_interval_s: Seconds between progress lines in the task log.
    """

    template_fields: Sequence[str] = (
        "servers",
        "output_root",
        "lookback_days",
        "max_records_per_store",
        "max_concurrency",
        "adaptive_concurrency",
        "max_threads",
        "on_server_error",
        "request_timeout_s",
        "connect_timeout_s",
        "retry_attempts",
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
        adaptive_concurrency: bool | str = True,
        max_threads: int | str = 3,
        on_server_error: str = "fail",
        request_timeout_s: float | str = 60.0,
        connect_timeout_s: float | str = 10.0,
        retry_attempts: int | str = 5,
        retry_max_delay_s: float = 30.0,
        max_pages: int = DEFAULT_MAX_PAGES,
        max_body_mb: float = 32.0,
        progress_interval_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.servers = servers
        self.output_root = output_root
        self.lookback_days = lookback_days
        self.max_records_per_store = max_records_per_store
        self.max_concurrency = max_concurrency
        self.adaptive_concurrency = adaptive_concurrency
        self.max_threads = max_threads
        self.on_server_error = on_server_error
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_attempts = retry_attempts
        self.retry_max_delay_s = retry_max_delay_s
        self.max_pages = max_pages
        self.max_body_mb = max_body_mb
        self.progress_interval_s = progress_interval_s

    def _settings(self, cutoff_ms: int) -> FetchSettings:
        if self.on_server_error not in ON_SERVER_ERROR:
            raise ConfigError(
                f"on_server_error must be one of {ON_SERVER_ERROR}, got {self.on_server_error!r}"
            )
        return make_settings(
            cutoff_ms=cutoff_ms,
            max_concurrency=int(self.max_concurrency),
            max_records_per_store=int(self.max_records_per_store),
            max_pages=int(self.max_pages),
            request_timeout_s=float(self.request_timeout_s),
            connect_timeout_s=float(self.connect_timeout_s),
            retry_attempts=int(self.retry_attempts),
            retry_max_delay_s=float(self.retry_max_delay_s),
            max_body_mb=float(self.max_body_mb),
            adaptive_concurrency=str(self.adaptive_concurrency).lower() not in ("false", "0", "no", "off"),
            progress_interval_s=self.progress_interval_s,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        anchor, ds = run_anchor(context)
        batch = max(int(context["ti"].map_index), 0)  # -1 when the operator is used unmapped
        servers = parse_server_list(self.servers, f"task {self.task_id!r} param 'servers'")
        cutoff = heartbeat_cutoff_ms(anchor, int(self.lookback_days))
        settings = self._settings(cutoff)
        targets = resolve_targets(servers)
        root = resolve_output_root(self.output_root)
        self.log.info("batch %d: %d servers, heartbeat cutoff %d", batch, len(targets), cutoff)
        manifest = run_batch(
            targets,
            settings,
            output_root=root,
            ds=ds,
            batch=batch,
            anchor=anchor,
            max_threads=int(self.max_threads),
        )
        self.log.info("batch %d: %d rows, %d errors", batch, manifest["rows"], len(manifest["errors"]))
        if manifest["errors"] and self.on_server_error == "fail":
            count = len(manifest["errors"])
            raise EslFetchError(f"batch {batch} had {count} failures:\n{error_summary(manifest)}")
        return manifest


class EslAggregateOperator(BaseOperator):
    """Sort the fetch tasks' parts into ``esl_id_part_N.csv`` partitions and write ``_manifest.json``.

    Every Asset in ``outlets`` gets an event when the date is published, whose ``extra`` says what was
    published: ``ds``, ``folder`` (the date's output folder), ``rows``, ``partitions`` and ``errors``.
    Downstream DAGs scheduled on the Asset read it from ``triggering_asset_events``.

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
        root = resolve_output_root(self.output_root)
        summary = aggregate_run(
            [manifests[i] for i in range(len(manifests))],
            output_root=root,
            ds=ds,
            header_style=self.header_style,
            timezone=self.timezone,
            params=params,
            anchor_source=anchor_of(context)[1],
        )
        announce_published(context, self.outlets, published_event(summary, str(root / ds)))
        return summary


def published_event(summary: dict[str, Any], folder: str) -> dict[str, Any]:
    """The ``extra`` of the Asset event for a published date (JSON; no credentials)."""
    # ``s3://aws_default@bucket/...`` names a connection id, not a secret: keep it, so consumers can
    # open the folder; a URL that carries a password is redacted.
    if urlsplit(folder).password is not None:
        folder = redact_url(folder)
    return {
        "ds": summary["date"],
        "folder": folder,
        "rows": summary["rows"],
        "partitions": sorted(summary["partitions"]),
        "errors": summary["errors"],
    }


def announce_published(context: Any, outlets: Sequence[Any], extra: dict[str, Any]) -> None:
    """Attach ``extra`` to the events of the task's Asset outlets (aliases and others are left alone)."""
    from airflow.sdk import Asset

    events = context.get("outlet_events")
    if events is None:
        return
    for outlet in outlets or ():
        if isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)
