"""File layout and atomic writes under ``output_root``: the one definition of every published name.

Paths are ``pathlib.Path`` or Airflow's ``ObjectStoragePath`` (same API), so a local folder and an
``s3://`` root go through the same code. Every file is written under a temporary name and renamed into
place, so a reader never sees half a file and a rerun replaces, never appends.

Layout of one run::

    {output_root}/{ds}/esl_id_part_{n}.csv      published partitions, n = batch index + 1
    {output_root}/{ds}/_manifest.json            what the run did (rows, errors, params, durations)
    {output_root}/{ds}/report.html               the fleet report (charts) of the run
    {output_root}/{ds}/_snapshot.parquet         one typed row per published label (history input)
    {output_root}/{ds}/_changes.csv              changes since the previous published date
    {output_root}/{ds}/_battery_forecast.csv     labels whose battery reaches the alert level soon
    {output_root}/{ds}/_SUCCESS                  written last, once everything above is in place
    {output_root}/{ds}/_lease.json               while a run writes the date: who (esl_operators.lease)
    {output_root}/{ds}/.staging-{id}/            the next set, before it is published (publish.py)
    {output_root}/{ds}/_parts/batch-{i}.arrow    fetch task i's rows (intermediate, Arrow IPC stream)
    {output_root}/{ds}/_parts/batch-{i}.json     fetch task i's manifest (also returned via XCom)

The writer (aggregate step) and the reader (the "ESL exports" web view) both take names and patterns
from here. This module stays light on purpose: no pyarrow or numpy (the Arrow file code is in
:mod:`esl_operators.parts` and :mod:`esl_operators.partitions`), so the api-server can import it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from esl_operators.exceptions import ConfigError, StorageError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

PARTS_DIR = "_parts"
PART_SUFFIX = ".arrow"
MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
LEASE_NAME = "_lease.json"
REPORT_NAME = "report.html"
SNAPSHOT_NAME = "_snapshot.parquet"
CHANGES_NAME = "_changes.csv"
FORECAST_NAME = "_battery_forecast.csv"
PARTITION_GLOB = "esl_id_part_*.csv"
# ASCII digits only (``\d`` also accepts other scripts' digits); partition numbers 1..999999, no
# leading zero, so a number has exactly one name.
PARTITION = re.compile(r"esl_id_part_([1-9][0-9]{0,5})\.csv")
RUN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PART = re.compile(r"batch-([0-9]+)\.(arrow|json)")


# A local folder (``pathlib.Path``) or an object-storage URL (Airflow's ``ObjectStoragePath``): the same
# API, so both go through the same code. A string alias, so the api-server never imports the SDK's path.
PathLike: TypeAlias = "Path | ObjectStoragePath"


def local_path(path: PathLike) -> Path | None:
    """``path`` as a local ``pathlib.Path`` if it is on the local file system (also a ``file://``
    ``ObjectStoragePath``); None for object storage."""
    if isinstance(path, Path):
        return path
    from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

    remote: Any = path
    if remote.protocol in ("file", "local") or isinstance(remote.fs, LocalFileSystem):
        return Path(remote.path)
    return None


def is_run_date(text: str) -> bool:
    """``YYYY-MM-DD`` in ASCII digits, and a real calendar date (no 2024-02-30)."""
    if not RUN_DATE.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def run_dir(output_root: PathLike, ds: str) -> Any:
    """The folder of one run date. ``ds`` must be a plain date, never a path fragment."""
    if not is_run_date(ds):
        raise ConfigError(f"run date must be a calendar date written YYYY-MM-DD, got {ds!r}")
    return output_root / ds


def part_path(output_root: PathLike, ds: str, batch: int) -> Any:
    return run_dir(output_root, ds) / PARTS_DIR / f"batch-{int(batch)}{PART_SUFFIX}"


def partition_name(batch: int) -> str:
    return f"esl_id_part_{int(batch) + 1}.csv"


def partition_number(name: str) -> int | None:
    """``n`` of a published partition name ``esl_id_part_{n}.csv``; None for any other name."""
    match = PARTITION.fullmatch(name)
    return int(match.group(1)) if match else None


def temporary_path(path: PathLike) -> Any:
    """Where ``path`` is written before it is renamed into place (hidden, unique per attempt)."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


@contextlib.contextmanager
def storage_errors(action: str, path: PathLike) -> Iterator[None]:
    """Turn an ``OSError`` of the block (full disk, I/O error, a failing store) into a
    :class:`StorageError` naming ``path``; one that already names its file passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(action, path, exc) from exc


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``path`` under a temporary name, then rename it into place. If anything fails, the
    temporary file is removed and a :class:`StorageError` names ``path`` and the cause."""
    with storage_errors("write", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            with tmp.open("w", encoding="utf-8", newline="") as handle:
                handle.write(text)
            tmp.rename(path)
        except BaseException:
            remove_quietly(tmp)
            raise


def remove_quietly(path: PathLike) -> None:
    """Remove a temporary file after a failure; if even that fails, log it (the first error is what
    the task reports; ``stale_outputs`` removes what is left on the next run)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the temporary file %s: %s", path, exc)


def write_json_atomic(path: PathLike, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def read_json(path: PathLike) -> Any:
    with path.open("r", encoding="utf-8") as handle:
        return json.load(handle)


def stale_outputs(directory: PathLike, batches: int) -> list[str]:
    """What an earlier run of the same date left behind that a run of ``batches`` batches does not write.

    Partitions and parts beyond the batch count (an earlier run had more batches) and temporary files
    of killed attempts, as names relative to ``directory``. Only names of our own patterns count.
    """
    stale = []
    for item in directory.glob(PARTITION_GLOB):
        number = partition_number(item.name)
        if number is not None and number > batches:
            stale.append(item.name)
    for item in (directory / PARTS_DIR).glob("batch-*"):
        match = _PART.fullmatch(item.name)
        if match and int(match.group(1)) >= batches:
            stale.append(f"{PARTS_DIR}/{item.name}")
    for folder, prefix in ((directory, ""), (directory / PARTS_DIR, f"{PARTS_DIR}/")):
        stale += [prefix + item.name for item in folder.glob(".*.tmp")]
    return sorted(stale)


def remove_stale_outputs(directory: PathLike, batches: int) -> list[str]:
    """Delete :func:`stale_outputs`; return their names."""
    stale = stale_outputs(directory, batches)
    for name in stale:
        (directory / name).unlink(missing_ok=True)
    return stale


def remove_temporaries(path: PathLike) -> None:
    """Delete temporary files a killed earlier attempt left for ``path`` (and only for it)."""
    for item in path.parent.glob(f".{path.name}.*.tmp"):
        item.unlink(missing_ok=True)


def published_dates(output_root: PathLike, ds: str, days: int) -> list[str]:
    """The published dates in the ``days`` days before ``ds`` (``ds`` itself excluded), oldest first.

    Published: the folder has ``_SUCCESS`` and ``_snapshot.parquet``. History comes only from what was
    published, never from the wall clock, so gaps and backfills compare with the right date.
    """
    end = date.fromisoformat(run_dir(output_root, ds).name)
    if not output_root.exists():
        return []
    found = []
    for item in output_root.iterdir():
        name = item.name
        if not is_run_date(name):
            continue
        age = (end - date.fromisoformat(name)).days
        if 0 < age <= days and (item / SUCCESS_NAME).exists() and (item / SNAPSHOT_NAME).exists():
            found.append(name)
    return sorted(found)


def as_local_root(root: str) -> Path:
    """A local ``output_root`` given without a scheme, made absolute against the working directory."""
    return Path(root).expanduser().resolve()
