"""Part files: the Arrow IPC streams in which fetch tasks hand their rows to the aggregate step.

Parts are streams of string columns (``PART_COLUMNS``): appending a chunk is cheap, the aggregate
step reads them back without parsing, and any Arrow tool (pyarrow, pandas, DuckDB) opens them for
debugging. Where they live is :func:`esl_operators.storage.part_path`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Self

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


def read_part(path: PathLike) -> pa.Table:
    """Read a part file back: string columns exactly as written."""
    with path.open("rb") as handle:
        table = pa.ipc.open_stream(handle).read_all()
    if table.schema != PART_SCHEMA:
        raise ValueError(f"{path}: unexpected part columns {table.column_names}")
    return table
