"""Part files: the Arrow IPC streams in which fetch tasks hand their rows to the aggregate step.

Parts are streams of string columns (``PART_COLUMNS``): appending a chunk is cheap, the aggregate
step reads them back without parsing, and any Arrow tool (pyarrow, pandas, DuckDB) opens them for
debugging. Where they live is :func:`esl_operators.storage.part_path`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.ipc

from esl_operators.records import PART_COLUMNS
from esl_operators.storage import PathLike, remove_temporaries, temporary_path

PART_SCHEMA = pa.schema([(name, pa.string()) for name in PART_COLUMNS])


class PartWriter:
    """Thread-safe streaming writer of part rows; the file appears under its name only on commit."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.rows = 0
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path)
        self._tmp = temporary_path(path)
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
