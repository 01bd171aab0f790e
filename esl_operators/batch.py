"""One fetch batch: servers -> part file + the small JSON manifest written beside it.

The manifest (also a fetch task's XCom) holds only counts, names and errors: rows never travel through
XCom. Shared by the Airflow operator and the standalone command, so both write the same layout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import datetime

from esl_operators.client import ServerTarget
from esl_operators.engine import FetchSettings, fetch_servers
from esl_operators.manifest import BatchManifest, batch_manifest
from esl_operators.parts import PartWriter
from esl_operators.storage import PathLike, part_path, write_json_atomic


def error_summary(manifest: BatchManifest, limit: int = 5) -> str:
    """One line per failure, for the exception that fails the task."""
    errors = manifest["errors"]
    lines = [e["error"] for e in errors[:limit]]  # each already names its server, store and id
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more (see the batch manifest)")
    return "\n".join(lines)


def run_batches(
    batches: Sequence[Sequence[ServerTarget]],
    settings: FetchSettings,
    *,
    output_root: PathLike,
    ds: str,
    anchor: datetime,
    max_threads: int,
    first_batch: int = 0,
) -> list[BatchManifest]:
    """Fetch batches into ``_parts/batch-{i}.arrow`` (one pool of ``max_threads`` for all servers)
    and write each batch's manifest; return the manifests in batch order.

    A part appears atomically (temporary name, then rename), so a killed attempt leaves nothing a
    retry could mistake for output.
    """
    started = time.monotonic()
    numbers = range(first_batch, first_batch + len(batches))
    paths = [part_path(output_root, ds, number) for number in numbers]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(PartWriter(path)) for path in paths]
        targets = [t for batch in batches for t in batch]
        sinks = [w for w, batch in zip(writers, batches, strict=True) for _ in batch]
        results = fetch_servers(targets, settings, sinks, max_threads=max_threads)
    duration = time.monotonic() - started
    manifests = []
    offset = 0
    for number, path, batch in zip(numbers, paths, batches, strict=True):
        manifest = batch_manifest(
            results[offset : offset + len(batch)],
            batch=number,
            part=str(path),
            anchor=anchor,
            cutoff_ms=settings.cutoff_ms,
            duration_s=duration,
        )
        offset += len(batch)
        write_json_atomic(path.with_suffix(".json"), manifest)
        manifests.append(manifest)
    return manifests


def run_batch(
    targets: Sequence[ServerTarget],
    settings: FetchSettings,
    *,
    output_root: PathLike,
    ds: str,
    batch: int,
    anchor: datetime,
    max_threads: int,
) -> BatchManifest:
    """One batch (what one mapped fetch task does); see :func:`run_batches`."""
    [manifest] = run_batches(
        [targets],
        settings,
        output_root=output_root,
        ds=ds,
        anchor=anchor,
        max_threads=max_threads,
        first_batch=batch,
    )
    return manifest
