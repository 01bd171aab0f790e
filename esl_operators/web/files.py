"""Which files the view serves, and where: published files of plain run dates inside the output root.

Only ``{root}/{YYYY-MM-DD}/`` and, inside it, ``esl_id_part_N.csv``, ``report.html``,
``_manifest.json`` and the history files ``_changes.csv``, ``_battery_forecast.csv`` and
``_snapshot.parquet`` (names and patterns from :mod:`esl_operators.storage`). Names are checked against
those patterns before any path is built, and the resolved file (symlinks followed) must still lie
inside the output root.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from fastapi import HTTPException

from esl_operators.config import DEFAULT_OUTPUT_ROOT, OUTPUT_ROOT_VARIABLE
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


def configured_output_root() -> Path:
    """The Variable ``esl_output_root`` (else ``./data/esl_export``), read the way the api-server can.

    ``esl_operators.config.resolve_output_root`` goes through the Task SDK, which only sees Variables
    inside a task; here the metadata database (and secrets backends, and ``AIRFLOW_VAR_*``) are read
    directly.
    """
    from airflow.models import Variable

    root = Variable.get(OUTPUT_ROOT_VARIABLE, default_var=None) or DEFAULT_OUTPUT_ROOT
    if root.startswith("file://"):
        root = unquote(urlparse(root).path)
    elif "://" in root:
        raise HTTPException(
            501, f"browsing an object-storage output root ({root.split('://')[0]}://) is not supported"
        )
    return as_local_root(root)


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


def published_file(root: Path, ds: str, name: str) -> Path:
    """The published file ``name`` of run date ``ds``; 404 for anything else."""
    if not is_run_date(ds) or not is_published_name(name):
        raise HTTPException(404, "not a published file")
    base = resolved(root)
    target = inside(base, base / ds / name) if base else None
    if target is None or not target.is_file():
        raise HTTPException(404, "not a published file")
    return target
