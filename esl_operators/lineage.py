"""OpenLineage for the fetch and aggregate tasks: which servers a batch read, which folder a date published.

The OpenLineage provider (the optional extra ``esl-export[openlineage]``) calls the operators'
``get_openlineage_facets_on_complete`` / ``_on_failure`` after a task ran; those thin methods import this
module, so neither DAG parsing nor a run without the provider ever loads it. What the events carry:

* a fetch task's **inputs**: one dataset per server, namespace ``http://host:port`` (the connection's
  scheme, never its credentials), name ``/api3`` (after the URL's own path, if any);
* the aggregate task's **output**: the date's folder (namespace ``file`` for a local folder, ``s3://bucket``
  for S3; name: the folder's path), with a ``schema`` facet (the published columns, per ``header_style``,
  in order) and an ``outputStatistics`` facet (rows, bytes and number of the CSV partitions);
* the run facet ``eslExport_errors`` listing each failed server or store with its reason, whenever there
  is one (a failed fetch task's FAIL event, a ``skip`` run's COMPLETE events). Error texts are redacted
  where they are made (:mod:`esl_operators.redaction`); the facet holds no other connection field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
from airflow.providers.common.compat.openlineage.facet import (
    InputDataset,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
    RunFacet,
    SchemaDatasetFacet,
    SchemaDatasetFacetFields,
)
from airflow.providers.openlineage.extractors import OperatorLineage

from esl_operators.manifest import ErrorEntry, RunManifest
from esl_operators.redaction import redact_url
from esl_operators.storage import MANIFEST_NAME, read_json

#: Key of the errors facet; custom facets carry their producer's prefix (OpenLineage naming rules).
ERRORS_FACET = "eslExport_errors"
API_PATH = "/api3"
#: CSV fields are text; the README says how to read each column.
COLUMN_TYPE = "string"


@attrs.define
class EslExportErrorsRunFacet(RunFacet):
    """Servers and stores that failed after their retries: ``{"server", "store", "error"}`` each
    (``store`` empty: the whole server failed)."""

    errors: list[dict[str, str]]


def server_dataset(base_url: str) -> tuple[str, str]:
    """``(namespace, name)`` of a server's API: ``("https://10.1.2.3:9443", "/api3")``, no user info."""
    parts = urlsplit(redact_url(base_url))
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/") + API_PATH


def folder_dataset(folder: str) -> tuple[str, str]:
    """``(namespace, name)`` of a published folder URL: ``("file", "/data/esl/2024-05-10")`` or
    ``("s3://bucket", "esl/2024-05-10")``; a connection id before the bucket (``s3://conn@bucket``) is
    dropped, it names no data."""
    parts = urlsplit(folder)
    if parts.scheme in ("", "file"):
        return "file", parts.path
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}", parts.path.lstrip("/")


def _run_facets(errors: Sequence[ErrorEntry]) -> dict[str, Any]:
    if not errors:
        return {}
    listed = [{"server": e["server"], "store": e["store"], "error": e["error"]} for e in errors]
    return {ERRORS_FACET: EslExportErrorsRunFacet(errors=listed)}


def fetch_lineage(base_urls: Sequence[str], errors: Sequence[ErrorEntry]) -> Any:
    """A fetch task's lineage: its servers as inputs, its failures (if any) as the errors facet."""
    inputs = []
    for base_url in base_urls:
        namespace, name = server_dataset(base_url)
        inputs.append(InputDataset(namespace=namespace, name=name))
    return OperatorLineage(inputs=inputs, run_facets=_run_facets(errors))


def aggregate_lineage(folder: Any, *, published: bool) -> Any:
    """The aggregate task's lineage: the date's folder; once published, its columns and statistics.

    ``folder`` is the date's ``Path`` / ``ObjectStoragePath``. The statistics are read back from what
    was published (``_manifest.json`` and the partitions' sizes), so they describe the files, not intent.
    """
    namespace, name = folder_dataset(str(folder))
    if not published:
        return OperatorLineage(outputs=[OutputDataset(namespace=namespace, name=name)])
    manifest: RunManifest = read_json(folder / MANIFEST_NAME)
    partitions = manifest["partitions"]
    size = sum(int((folder / p["file"]).stat().st_size) for p in partitions)
    output = OutputDataset(
        namespace=namespace,
        name=name,
        facets={
            "schema": SchemaDatasetFacet(
                fields=[SchemaDatasetFacetFields(name=c, type=COLUMN_TYPE) for c in manifest["columns"]]
            )
        },
        outputFacets={
            "outputStatistics": OutputStatisticsOutputDatasetFacet(
                rowCount=manifest["rows"], size=size, fileCount=len(partitions)
            )
        },
    )
    return OperatorLineage(outputs=[output], run_facets=_run_facets(manifest["errors"]))
