"""Airflow operators: thin, declarative wrappers around the engine and the aggregate step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseOperator

from esl_operators.config import anchor_of, resolve_output_root, run_anchor
from esl_operators.exceptions import ConfigError, EslError
from esl_operators.manifest import BatchManifest, RunSummary
from esl_operators.redaction import redact_url
from esl_operators.settings import (
    document_options,
    for_task,
    operator_options,
    rendered_options,
    setting,
    take_options,
)


class EslFetchError(EslError):
    """Raised after a fetch task has written its part and manifest, when something failed."""


@document_options("fetch")
class EslFetchOperator(BaseOperator):
    """Fetch every ESL of a batch of ESL-Working servers into one part file.

    Rows stream to ``{output_root}/{ds}/_parts/batch-{map_index}.arrow``; the task returns a small
    manifest (rows, per-store counts, capped stores, errors), never the rows themselves. If any server or
    store failed and ``on_server_error`` is ``fail``, the task fails after writing its manifest, so the
    retry redoes this batch alone. Every keyword argument but ``servers`` is a run setting
    (:mod:`esl_operators.settings`), templated, with the table's default:

    :param servers: Airflow connection ids (type ``esl_working`` or ``http``) of the servers in this batch.
    """

    template_fields: Sequence[str] = ("servers", *(s.name for s in for_task("fetch")))
    ui_color = "#d8f3dc"

    @operator_options("fetch")
    def __init__(self, *, servers: list[str] | str, **kwargs: Any) -> None:
        options = take_options("fetch", kwargs)
        super().__init__(**kwargs)
        self.servers = servers
        for name, value in options.items():
            setattr(self, name, value)

    def execute(self, context: Any) -> BatchManifest:
        # The engine (aiohttp, pyarrow) is loaded when a task runs, never when the DAG file is parsed.
        from esl_operators.batch import error_summary, run_batch
        from esl_operators.engine import make_settings
        from esl_operators.hooks import resolve_targets
        from esl_operators.lease import check_free, dag_run_holder
        from esl_operators.records import heartbeat_cutoff_ms
        from esl_operators.storage import run_dir

        anchor, ds = run_anchor(context)
        batch = max(int(context["ti"].map_index), 0)  # -1 when the operator is used unmapped
        servers = setting("servers").parse(self.servers, f"task {self.task_id!r} argument 'servers'")
        if not servers:
            raise ConfigError(f"task {self.task_id!r} has no servers")
        options = rendered_options(self, "fetch")
        cutoff = heartbeat_cutoff_ms(anchor, options.pop("lookback_days"))
        root = resolve_output_root(options.pop("output_root"))
        on_error = options.pop("on_server_error")
        max_threads = options.pop("max_threads")
        settings = make_settings(cutoff_ms=cutoff, **options)
        targets = resolve_targets(servers)
        self._lineage_servers = [t.base_url for t in targets]
        # Another writer (esl-export fetch, another deployment) on this date: fail now, retry later.
        check_free(run_dir(root, ds), dag_run_holder(context))
        self.log.info("batch %d: %d servers, heartbeat cutoff %d", batch, len(targets), cutoff)
        manifest = run_batch(
            targets, settings, output_root=root, ds=ds, batch=batch, anchor=anchor, max_threads=max_threads
        )
        self._lineage_errors = list(manifest["errors"])
        self.log.info("batch %d: %d rows, %d errors", batch, manifest["rows"], len(manifest["errors"]))
        if manifest["errors"] and on_error == "fail":
            count = len(manifest["errors"])
            raise EslFetchError(f"batch {batch} had {count} failures:\n{error_summary(manifest)}")
        return manifest

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the batch's servers as inputs; failed servers/stores as a run facet."""
        from esl_operators.lineage import fetch_lineage  # the provider is optional: never at parse time

        return fetch_lineage(getattr(self, "_lineage_servers", []), getattr(self, "_lineage_errors", []))

    # A failed batch reads the same servers; its errors facet is what the FAIL event adds.
    get_openlineage_facets_on_failure = get_openlineage_facets_on_complete


@document_options("aggregate")
class EslAggregateOperator(BaseOperator):
    """Sort the fetch tasks' parts into ``esl_id_part_N.csv`` partitions and write ``_manifest.json``.

    Every Asset in ``outlets`` gets an event when the date is published, whose ``extra`` says what was
    published: ``ds``, ``folder`` (the date's output folder), ``rows``, ``partitions`` and ``errors``.
    Downstream DAGs scheduled on the Asset read it from ``triggering_asset_events``. Every keyword
    argument but ``manifests`` is a run setting (:mod:`esl_operators.settings`), templated:

    :param manifests: The fetch tasks' manifests (usually ``fetch.output``).
    """

    template_fields: Sequence[str] = ("manifests", *(s.name for s in for_task("aggregate")))
    ui_color = "#b7e4c7"

    @operator_options("aggregate")
    def __init__(self, *, manifests: Any, **kwargs: Any) -> None:
        options = take_options("aggregate", kwargs)
        super().__init__(**kwargs)
        self.manifests = manifests
        for name, value in options.items():
            setattr(self, name, value)

    def execute(self, context: Any) -> RunSummary:
        from esl_operators.aggregate import aggregate_run  # pyarrow: at run time only
        from esl_operators.lease import Lease, dag_run_holder

        _, ds = run_anchor(context)
        params = dict(context.get("params") or {})
        options = rendered_options(self, "aggregate")
        root = resolve_output_root(options.pop("output_root"))
        # Index by position: iterating a lazy XCom sequence probes one past the end and logs a 404.
        manifests = self.manifests or []
        self._lineage_folder = root / ds
        # One writer per date (esl_operators.lease): held while the date folder is touched at all.
        with Lease(root / ds, dag_run_holder(context)):
            summary = aggregate_run(
                [manifests[i] for i in range(len(manifests))],
                output_root=root,
                ds=ds,
                params=params,
                anchor_source=anchor_of(context)[1],
                **options,
            )
        announce_published(context, self.outlets, published_event(summary, str(root / ds)))
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the published folder, with its columns and row, byte and file counts."""
        from esl_operators.lineage import aggregate_lineage

        folder = getattr(self, "_lineage_folder", None)
        return None if folder is None else aggregate_lineage(folder, published=True)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """OpenLineage: the folder the run was to publish (nothing was: no statistics)."""
        from esl_operators.lineage import aggregate_lineage

        folder = getattr(self, "_lineage_folder", None)
        return None if folder is None else aggregate_lineage(folder, published=False)


def published_event(summary: RunSummary, folder: str) -> dict[str, Any]:
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
