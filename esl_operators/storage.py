"""File layout and atomic writes under ``output_root``.

Paths are ``pathlib.Path`` or Airflow's ``ObjectStoragePath`` (same API), so a local folder and an
``s3://`` root go through the same code. Every file is written under a temporary name and renamed into
place, so a reader never sees half a file and a rerun replaces, never appends.

Layout of one run::

    {output_root}/{ds}/esl_id_part_{n}.csv      published partitions, n = batch index + 1
    {output_root}/{ds}/_manifest.json            what the run did (rows, errors, params, durations)
    {output_root}/{ds}/_SUCCESS                  written last, once everything above is in place
    {output_root}/{ds}/_parts/batch-{i}.csv      fetch task i's rows (intermediate)
    {output_root}/{ds}/_parts/batch-{i}.json     fetch task i's manifest (also returned via XCom)
"""

from __future__ import annotations

import csv
import json
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import pandas as pd

from esl_operators.exceptions import ConfigError
from esl_operators.records import PART_COLUMNS

PARTS_DIR = "_parts"
MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
_DS = re.compile(r"\d{4}-\d{2}-\d{2}")


class PathLike(Protocol):
    """What we need of a path: satisfied by ``pathlib.Path`` and ``ObjectStoragePath``."""

    name: str

    @property
    def parent(self) -> Any: ...
    def __truediv__(self, other: str) -> Any: ...
    def open(self, mode: str = ..., *args: Any, **kwargs: Any) -> Any: ...
    def rename(self, target: Any) -> Any: ...
    def mkdir(self, parents: bool = ..., exist_ok: bool = ...) -> None: ...
    def exists(self) -> bool: ...
    def unlink(self, missing_ok: bool = ...) -> None: ...
    def glob(self, pattern: str) -> Iterable[Any]: ...


def run_dir(output_root: PathLike, ds: str) -> Any:
    """The folder of one run date. ``ds`` must be a plain date, never a path fragment."""
    if not _DS.fullmatch(ds):
        raise ConfigError(f"run date must look like YYYY-MM-DD, got {ds!r}")
    return output_root / ds


def part_path(output_root: PathLike, ds: str, batch: int) -> Any:
    return run_dir(output_root, ds) / PARTS_DIR / f"batch-{int(batch)}.csv"


def partition_name(batch: int) -> str:
    return f"esl_id_part_{int(batch) + 1}.csv"


def _temporary(path: PathLike) -> Any:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


def write_text_atomic(path: PathLike, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    tmp.rename(path)


def write_json_atomic(path: PathLike, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def read_json(path: PathLike) -> Any:
    with path.open("r", encoding="utf-8") as handle:
        return json.load(handle)


class PartWriter:
    """Thread-safe streaming writer of part rows; the file appears under its name only on commit."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.rows = 0
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path)
        self._tmp = _temporary(path)
        self._handle = self._tmp.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._handle, lineterminator="\n")
        self._csv.writerow(PART_COLUMNS)

    def write_rows(self, rows: Sequence[Sequence[str]]) -> None:
        with self._lock:
            self._csv.writerows(rows)
            self.rows += len(rows)

    def commit(self) -> None:
        with self._lock:
            self._handle.close()
            self._tmp.rename(self.path)

    def discard(self) -> None:
        with self._lock:
            self._handle.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def read_part(path: PathLike) -> pd.DataFrame:
    """Read a part file back as strings, exactly as written (no NA guessing, no float parsing)."""
    with path.open("rb") as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    if tuple(frame.columns) != PART_COLUMNS:
        raise ValueError(f"{path}: unexpected part columns {list(frame.columns)}")
    return frame


def write_csv_atomic(path: PathLike, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")
    tmp.rename(path)


_PARTITION = re.compile(r"esl_id_part_(\d+)\.csv")
_PART = re.compile(r"batch-(\d+)\.(csv|json)")


def remove_stale_outputs(directory: PathLike, batches: int) -> list[str]:
    """Delete what an earlier run of the same date left behind and this run did not write.

    Partitions and parts beyond this run's batch count (an earlier run had more batches) and
    temporary files of killed attempts. Only names of our own patterns are touched.
    """
    removed = []
    for item in directory.glob("esl_id_part_*.csv"):
        match = _PARTITION.fullmatch(item.name)
        if match and int(match.group(1)) > batches:
            removed.append(item.name)
            item.unlink()
    for item in (directory / PARTS_DIR).glob("batch-*"):
        match = _PART.fullmatch(item.name)
        if match and int(match.group(1)) >= batches:
            removed.append(f"{PARTS_DIR}/{item.name}")
            item.unlink()
    for folder, prefix in ((directory, ""), (directory / PARTS_DIR, f"{PARTS_DIR}/")):
        for item in folder.glob(".*.tmp"):
            removed.append(prefix + item.name)
            item.unlink()
    return sorted(removed)


def remove_temporaries(path: PathLike) -> None:
    """Delete temporary files a killed earlier attempt left for ``path`` (and only for it)."""
    for item in path.parent.glob(f".{path.name}.*.tmp"):
        item.unlink(missing_ok=True)


def as_local_root(root: str) -> Path:
    """A local ``output_root`` given without a scheme, made absolute against the working directory."""
    return Path(root).expanduser().resolve()
