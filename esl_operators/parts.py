"""Part files: the Arrow IPC streams in which fetch tasks hand their rows to the aggregate step.

Parts are streams of string columns (``PART_COLUMNS``): appending a chunk is cheap, the aggregate
step reads them back without parsing, and any Arrow tool (pyarrow, pandas, DuckDB) opens them for
debugging. Where they live is :func:`esl_operators.storage.part_path`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.ipc

from esl_operators.exceptions import StorageError
from esl_operators.records import PART_COLUMNS
from esl_operators.storage import (
    PathLike,
    remove_quietly,
    remove_temporaries,
    storage_errors,
    temporary_path,
)

log = logging.getLogger(__name__)

PART_SCHEMA = pa.schema([(name, pa.string()) for name in PART_COLUMNS])


class PartWriter:
    """Thread-safe streaming writer of part rows; the file appears under its name only on commit.

    A write that fails (full disk, I/O error, a failing store) raises a
    :class:`~esl_operators.exceptions.StorageError` naming the part; every later write of the batch
    raises the same error at once, and :meth:`discard` removes the temporary file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.rows = 0
        self._lock = threading.Lock()
        self._failed: StorageError | None = None
        with storage_errors("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_temporaries(path)
            self._tmp = temporary_path(path)
            self._handle = self._tmp.open("wb")
        try:
            with storage_errors("write", path):
                self._stream = pa.ipc.new_stream(self._handle, PART_SCHEMA)
        except StorageError:
            self.discard()
            raise

    def write_rows(self, rows: Sequence[Sequence[str]]) -> None:
        if not rows:
            return
        columns = [pa.array(column, pa.string()) for column in zip(*rows, strict=True)]
        batch = pa.RecordBatch.from_arrays(columns, schema=PART_SCHEMA)
        with self._lock:
            self._write(lambda: self._stream.write_batch(batch))
            self.rows += len(rows)

    def _write(self, action: Callable[[], object]) -> None:
        if self._failed is not None:  # the part is broken: the other servers of the batch stop too
            raise self._failed
        try:
            with storage_errors("write", self.path):
                action()
        except StorageError as exc:
            self._failed = exc
            raise

    def commit(self) -> None:
        with self._lock:
            self._write(self._stream.close)
            self._write(self._handle.close)
            self._write(lambda: self._tmp.rename(self.path))

    def discard(self) -> None:
        with self._lock:
            try:
                self._handle.close()
            except OSError as exc:  # closing a broken upload may fail again; the first error counts
                log.warning("%s: closing the discarded part failed: %s", self._tmp, exc)
            remove_quietly(self._tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def open_part(path: PathLike) -> Iterator[pa.ipc.RecordBatchStreamReader]:
    """A part file as a stream of record batches (as its fetch task wrote them), schema checked.

    A local file is read by Arrow itself (its buffers come from Arrow's memory pool, which gives memory
    back; Python file objects hand over bytes the C allocator tends to keep); object storage through
    the path's own file object.
    """
    remote: Any = path  # ObjectStoragePath's open is untyped
    opened = pa.OSFile(str(path)) if isinstance(path, Path) else remote.open("rb")
    with opened as handle:
        reader = pa.ipc.open_stream(handle)
        if reader.schema != PART_SCHEMA:
            raise ValueError(f"{path}: unexpected part columns {reader.schema.names}")
        yield reader


def read_part(path: PathLike) -> pa.Table:
    """Read a whole part file back: string columns exactly as written."""
    with open_part(path) as reader:
        return reader.read_all()


def part_chunks(reader: pa.ipc.RecordBatchStreamReader, max_bytes: int) -> Iterator[pa.Table]:
    """The part's rows in tables of about ``max_bytes`` (small fetch batches gathered, large ones cut)."""
    gathered: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        rows_per_cut = max(1, max_bytes * batch.num_rows // max(1, batch.nbytes))
        for start in range(0, batch.num_rows, rows_per_cut):
            piece = batch.slice(start, rows_per_cut)
            gathered.append(piece)
            size += piece.nbytes
            if size >= max_bytes:
                yield pa.Table.from_batches(gathered, PART_SCHEMA)
                gathered, size = [], 0
    if gathered:
        yield pa.Table.from_batches(gathered, PART_SCHEMA)
