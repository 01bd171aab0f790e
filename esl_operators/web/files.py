"""Which files the view serves, and where: published files of plain run dates inside the output root.

Only ``{root}/{YYYY-MM-DD}/`` and, inside it, ``esl_id_part_N.csv``, ``report.html``,
``_manifest.json`` and the history files ``_changes.csv``, ``_battery_forecast.csv`` and
``_snapshot.parquet`` (names and patterns from :mod:`esl_operators.storage`). Names are checked against
those patterns before any path is built, so a request can name nothing else, on any store.

The root is what the tasks write to (:func:`esl_operators.config.output_root_path`): a local folder
(``pathlib.Path``), where the resolved file (symlinks followed) must still lie inside the root, or an
object-storage URL (Airflow's ``ObjectStoragePath``, e.g. ``s3://``), which has no symlinks and no
``..``: a key is only ever ``{root}/{date}/{name}``. Object-storage files are streamed in
:data:`CHUNK_BYTES` pieces, one ranged read each, never whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from fastapi import HTTPException

from esl_operators.config import DEFAULT_OUTPUT_ROOT, OUTPUT_ROOT_VARIABLE, output_root_path
from esl_operators.storage import (
    CHANGES_NAME,
    FORECAST_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    SNAPSHOT_NAME,
    as_local_root,
    is_run_date,
    partition_number,
)

#: The history files of a date (issue 14), in the order the listing links them.
HISTORY_FILES = (CHANGES_NAME, FORECAST_NAME, SNAPSHOT_NAME)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

#: A local folder or an object-storage location (a string alias: the api-server imports no SDK path
#: until a request needs one).
ViewRoot: TypeAlias = "Path | ObjectStoragePath"
#: How much of an object-storage file is read (and held) at once while it is sent.
CHUNK_BYTES = 1024 * 1024
NOT_PUBLISHED = "not a published file"
LOCAL_PROTOCOLS = ("file", "local")


class StoreError(HTTPException):
    """502: the object store could not be read (credentials, permissions, unreachable); names the path."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(502, f"cannot read {what}: {type(exc).__name__}: {exc}")


def configured_output_root() -> ViewRoot:
    """The Variable ``esl_output_root`` (else ``./data/esl_export``), read the way the api-server can.

    ``esl_operators.config.resolve_output_root`` goes through the Task SDK, which only sees Variables
    inside a task; here the metadata database (and secrets backends, and ``AIRFLOW_VAR_*``) are read
    directly. The text is then resolved by the writer's own rule (:func:`view_root`).
    """
    from airflow.models import Variable

    return view_root(Variable.get(OUTPUT_ROOT_VARIABLE, default_var=None) or DEFAULT_OUTPUT_ROOT)


def view_root(text: str) -> ViewRoot:
    """The location an ``output_root`` text names, as the tasks resolve it; local folders as ``Path``."""
    path: ObjectStoragePath = output_root_path(text)
    if path.protocol in LOCAL_PROTOCOLS:
        return as_local_root(path.path)
    return path


def is_local(root: ViewRoot) -> bool:
    return isinstance(root, Path)


def shown(root: ViewRoot) -> str:
    """The root as the listing shows it: a local path, or ``protocol://bucket/prefix`` (no user part)."""
    return str(root) if isinstance(root, Path) else f"{root.protocol}://{root.path}"


def is_published_name(name: str) -> bool:
    """A file the aggregate step publishes in a date folder (never ``_SUCCESS``, parts or temporaries)."""
    return name in (REPORT_NAME, MANIFEST_NAME, *HISTORY_FILES) or partition_number(name) is not None


def resolved(path: Path) -> Path | None:
    """``path`` with every symlink resolved; None when it does not exist (or loops)."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None


def inside(base: Path, candidate: Path) -> Path | None:
    """``candidate`` with every symlink resolved, or None if that leaves ``base`` or does not exist.

    ``base`` must itself be resolved already (the output root may legitimately be a symlink).
    """
    found = resolved(candidate)
    return found if found is not None and found.is_relative_to(base) else None


def fresh(root: ObjectStoragePath) -> Any:
    """The root's file system with its listings cache dropped: the tasks of other processes write there."""
    fs = root.fs
    fs.invalidate_cache()
    return fs


def object_info(root: ObjectStoragePath, target: ObjectStoragePath) -> dict[str, Any] | None:
    """The store's description of ``target`` (size, type, ...), None when there is no such object."""
    try:
        info: dict[str, Any] = fresh(root).info(target.path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # each store's client raises its own errors (botocore, ...): name them
        raise StoreError(shown(target), exc) from exc
    return info


def published_file(root: ViewRoot, ds: str, name: str) -> ViewRoot:
    """The published file ``name`` of run date ``ds``; 404 for anything else."""
    if not is_run_date(ds) or not is_published_name(name):
        raise HTTPException(404, NOT_PUBLISHED)
    if not isinstance(root, Path):
        target = root / ds / name
        info = object_info(root, target)
        if info is None or info.get("type") != "file":
            raise HTTPException(404, NOT_PUBLISHED)
        return target
    base = resolved(root)
    found = inside(base, base / ds / name) if base else None
    if found is None or not found.is_file():
        raise HTTPException(404, NOT_PUBLISHED)
    return found


def open_object(target: ObjectStoragePath) -> tuple[IO[bytes], dict[str, Any]]:
    """``target`` opened for chunked reads (no read-ahead, no block cache), and its description.

    Opened before the response starts, so a missing or unreadable object is a 404/502, not a cut stream.
    """
    try:
        info: dict[str, Any] = target.fs.info(target.path)
        handle = target.fs.open(target.path, "rb", block_size=CHUNK_BYTES, cache_type="none")
    except FileNotFoundError:
        raise HTTPException(404, NOT_PUBLISHED) from None
    except Exception as exc:  # as in object_info: the store's own client errors, named
        raise StoreError(shown(target), exc) from exc
    return handle, info


def chunks(handle: IO[bytes], what: str, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of ``handle``, ``size`` at a time, closing it at the end (or when the client leaves)."""
    sent = 0
    with handle:
        try:
            while chunk := handle.read(size):
                sent += len(chunk)
                yield chunk
        except Exception:  # headers are gone already: the client sees a short body; the log says why
            log.exception("reading %s failed after %d bytes", what, sent)
            raise
