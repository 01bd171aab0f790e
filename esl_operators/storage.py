"""File layout and atomic writes under ``output_root``.

Paths are ``pathlib.Path`` or Airflow's ``ObjectStoragePath`` (same API), so a local folder and an
``s3://`` root go through the same code. Every file is written under a temporary name and renamed into
place, so a reader never sees half a file and a rerun replaces, never appends.

Layout of one run::

    {output_root}/{ds}/esl_id_part_{n}.csv      published partitions, n = batch index + 1
    {output_root}/{ds}/_manifest.json            what the run did (rows, errors, params, durations)
    {output_root}/{ds}/report.html               the fleet report (charts) of the run
    {output_root}/{ds}/_SUCCESS                  written last, once everything above is in place
    {output_root}/{ds}/_parts/batch-{i}.arrow    fetch task i's rows (intermediate, Arrow IPC stream)
    {output_root}/{ds}/_parts/batch-{i}.json     fetch task i's manifest (also returned via XCom)
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Self

import pyarrow as pa
import pyarrow.ipc

from esl_operators.csvformat import WORKERS, string_bytes
from esl_operators.exceptions import ConfigError
from esl_operators.records import PART_COLUMNS

PARTS_DIR = "_parts"
MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
REPORT_NAME = "report.html"
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


PART_SUFFIX = ".arrow"


def withdraw_success(output_root: PathLike, ds: str) -> None:
    """Remove the date's ``_SUCCESS``: readers must not trust the folder while a run rewrites it."""
    (run_dir(output_root, ds) / SUCCESS_NAME).unlink(missing_ok=True)


def part_path(output_root: PathLike, ds: str, batch: int) -> Any:
    return run_dir(output_root, ds) / PARTS_DIR / f"batch-{int(batch)}{PART_SUFFIX}"


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


PART_SCHEMA = pa.schema([(name, pa.string()) for name in PART_COLUMNS])


class PartWriter:
    """Thread-safe streaming writer of part rows; the file appears under its name only on commit.

    Parts are Arrow IPC streams of string columns (``PART_COLUMNS``): appending a chunk is cheap,
    the aggregate step reads them back without parsing, and any Arrow tool (pyarrow, pandas,
    DuckDB) opens them for debugging.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.rows = 0
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path)
        self._tmp = _temporary(path)
        self._handle = self._tmp.open("wb")
        self._stream = pa.ipc.new_stream(self._handle, PART_SCHEMA)

    def write_rows(self, rows: Sequence[Sequence[str]]) -> None:
        if not rows:
            return
        columns = [pa.array(column, pa.string()) for column in zip(*rows, strict=True)]
        batch = pa.RecordBatch.from_arrays(columns, schema=PART_SCHEMA)
        with self._lock:
            self._stream.write_batch(batch)
            self.rows += len(rows)

    def commit(self) -> None:
        with self._lock:
            self._stream.close()
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


def read_part(path: PathLike) -> pa.Table:
    """Read a part file back: string columns exactly as written."""
    with path.open("rb") as handle:
        table = pa.ipc.open_stream(handle).read_all()
    if table.schema != PART_SCHEMA:
        raise ValueError(f"{path}: unexpected part columns {table.column_names}")
    return table


# Lines moved per slice: bounds the temporary buffers (and Arrow's 2 GiB string offsets).
WRITE_SLICE_ROWS = 250_000


def write_lines_atomic(
    path: PathLike, header: Sequence[str], lines: pa.ChunkedArray, order: pa.Array
) -> None:
    """Write a CSV from ready-made lines (``csvformat.render_lines``: each ends in a line feed) in
    ``order``. The bytes go straight from Arrow's buffers to the file; slices reorder on several cores.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(header)
    # One contiguous array: taking from many chunks would re-concatenate them for every slice.
    whole = lines.combine_chunks() if lines.num_chunks else pa.array([], pa.string())
    tmp = _temporary(path)
    with tmp.open("wb") as handle, ThreadPoolExecutor(max_workers=WORKERS) as pool:
        handle.write(head.getvalue().encode("utf-8"))
        slices = (order.slice(start, WRITE_SLICE_ROWS) for start in range(0, len(order), WRITE_SLICE_ROWS))
        for piece in pool.map(whole.take, slices):
            handle.write(string_bytes(piece))
    tmp.rename(path)


_PARTITION = re.compile(r"esl_id_part_(\d+)\.csv")
_PART = re.compile(r"batch-(\d+)\.(arrow|json)")


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
