"""Part files: the Arrow IPC streams in which fetch tasks hand their rows to the aggregate step.

Parts are streams of string columns (``PART_COLUMNS``): appending a chunk is cheap, the aggregate
step reads them back without parsing, and any Arrow tool (pyarrow, pandas, DuckDB) opens them for
debugging. Where they live is :func:`esl_operators.storage.part_path`.

pyarrow (and numpy, which it loads) is imported when a part is first written or read, not when this
module is: ``esl-export fetch`` imports the writer before its first request, and about 0.2-0.3 s of
imports would delay that request (issue 11, target 3). Rows become Arrow arrays through
:func:`_string_array`, which builds the buffers itself: ``pa.array`` on Python lists would load pandas
(about 0.35 s of CPU) to probe its argument, and is slower for plain strings.
"""

from __future__ import annotations

import array
import contextlib
import functools
import itertools
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from esl_operators.exceptions import StorageError
from esl_operators.records import PART_COLUMNS
from esl_operators.storage import (
    PathLike,
    remove_quietly,
    remove_temporaries,
    storage_errors,
    temporary_path,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.ipc

    PART_SCHEMA: pa.Schema  # built on first use by __getattr__ below

log = logging.getLogger(__name__)

# Rows gathered per record batch: a store's last few rows are not a batch of their own (fewer, larger
# batches read back faster), and ~8k rows of ~20 short strings stay a few MB in memory.
BATCH_ROWS = 8_192
# Arrow ``string`` offsets are int32: a column of one batch may not hold more bytes than this.
_MAX_COLUMN_BYTES = 2**31 - 1
_NATIVE_LITTLE = sys.byteorder == "little"


def _schema() -> pa.Schema:
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = pa.schema([(name, pa.string()) for name in PART_COLUMNS])
    return _SCHEMA


_SCHEMA: pa.Schema | None = None


def __getattr__(name: str) -> Any:
    # ``PART_SCHEMA`` stays importable as a constant while pyarrow loads only when it is first used.
    if name == "PART_SCHEMA":
        return _schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _string_array(values: Sequence[str]) -> pa.Array:
    """An Arrow ``string`` array of ``values`` from its offsets and UTF-8 bytes.

    ASCII columns (ids, numbers, timestamps: most of a part) need no per-cell encoding: their byte
    offsets are their character offsets.
    """
    import pyarrow as pa

    joined = "".join(values)
    offsets = array.array("i", [0])
    if joined.isascii():
        data = joined.encode("ascii")
        offsets.extend(itertools.accumulate(map(len, values)))
    else:
        cells = [value.encode("utf-8") for value in values]
        data = b"".join(cells)
        offsets.extend(itertools.accumulate(map(len, cells)))
    if len(data) > _MAX_COLUMN_BYTES:
        raise OverflowError("column too large for one batch")
    if not _NATIVE_LITTLE:  # Arrow buffers are little-endian
        offsets.byteswap()
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)


def _record_batches(rows: Sequence[Sequence[str]]) -> list[pa.RecordBatch]:
    """``rows`` as record batches of the part schema (split in halves if a column would overflow)."""
    import pyarrow as pa

    columns = list(zip(*rows, strict=True))
    if len(columns) != len(PART_COLUMNS):
        raise ValueError(f"part rows have {len(columns)} cells, expected {len(PART_COLUMNS)}")
    try:
        arrays = [_string_array(column) for column in columns]
    except OverflowError:
        if len(rows) == 1:
            raise ValueError("one part row holds more than 2 GiB in a cell") from None
        half = len(rows) // 2
        return _record_batches(rows[:half]) + _record_batches(rows[half:])
    return [pa.RecordBatch.from_arrays(arrays, schema=_schema())]


class PartWriter:
    """Thread-safe streaming writer of part rows; the file appears under its name only on commit.

    Rows are gathered into record batches of about ``batch_rows`` rows. A write that fails (full
    disk, I/O error, a failing store) raises a :class:`~esl_operators.exceptions.StorageError` naming
    the part; every later write of the batch raises the same error at once, and :meth:`discard`
    removes the temporary file (so does leaving the ``with`` block, a failed commit included).
    """

    def __init__(self, path: PathLike, *, batch_rows: int = BATCH_ROWS) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.path = path
        self.rows = 0
        self._batch_rows = batch_rows
        self._pending: list[Sequence[str]] = []
        self._lock = threading.Lock()
        self._failed: StorageError | None = None
        self._stream: pa.ipc.RecordBatchStreamWriter | None = None  # opened with the first batch
        with storage_errors("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_temporaries(path)
            self._tmp = temporary_path(path)
            self._handle = self._tmp.open("wb")

    def write_rows(self, rows: Sequence[Sequence[str]]) -> None:
        if not rows:
            return
        with self._lock:
            if self._failed is not None:  # the part is broken: the other servers of the batch stop too
                raise self._failed
            self._pending.extend(rows)
            self.rows += len(rows)
            if len(self._pending) >= self._batch_rows:
                self._flush()

    def _flush(self) -> None:
        """Write the gathered rows as record batches (the caller holds the lock)."""
        pending, self._pending = self._pending, []
        stream = self._open_stream()
        for batch in _record_batches(pending):
            self._write(functools.partial(stream.write_batch, batch))

    def _open_stream(self) -> pa.ipc.RecordBatchStreamWriter:
        if self._stream is None:
            import pyarrow.ipc

            def opened() -> None:
                self._stream = pyarrow.ipc.new_stream(self._handle, _schema())

            self._write(opened)
        assert self._stream is not None
        return self._stream

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
            if self._pending:
                self._flush()
            stream = self._open_stream()  # an empty part still holds its schema
            self._write(stream.close)
            self._write(self._handle.close)
            self._write(lambda: self._tmp.rename(self.path))

    def discard(self) -> None:
        with self._lock:
            self._pending = []
            try:
                self._handle.close()
            except OSError as exc:  # closing a broken upload may fail again; the first error counts
                log.warning("%s: closing the discarded part failed: %s", self._tmp, exc)
            remove_quietly(self._tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()  # a commit that failed (full disk at the last batch) leaves nothing behind
            raise


@contextlib.contextmanager
def open_part(path: PathLike) -> Iterator[pa.ipc.RecordBatchStreamReader]:
    """A part file as a stream of record batches (as its fetch task wrote them), schema checked.

    A local file is read by Arrow itself (its buffers come from Arrow's memory pool, which gives memory
    back; Python file objects hand over bytes the C allocator tends to keep); object storage through
    the path's own file object.
    """
    import pyarrow as pa
    import pyarrow.ipc

    remote: Any = path  # ObjectStoragePath's open is untyped
    opened = pa.OSFile(str(path)) if isinstance(path, Path) else remote.open("rb")
    with opened as handle:
        reader = pyarrow.ipc.open_stream(handle)
        if reader.schema != _schema():
            raise ValueError(f"{path}: unexpected part columns {reader.schema.names}")
        yield reader


def read_part(path: PathLike) -> pa.Table:
    """Read a whole part file back: string columns exactly as written."""
    with open_part(path) as reader:
        return reader.read_all()


def part_chunks(reader: pa.ipc.RecordBatchStreamReader, max_bytes: int) -> Iterator[pa.Table]:
    """The part's rows in tables of about ``max_bytes`` (small fetch batches gathered, large ones cut)."""
    import pyarrow as pa

    gathered: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        rows_per_cut = max(1, max_bytes * batch.num_rows // max(1, batch.nbytes))
        for start in range(0, batch.num_rows, rows_per_cut):
            piece = batch.slice(start, rows_per_cut)
            gathered.append(piece)
            size += piece.nbytes
            if size >= max_bytes:
                yield pa.Table.from_batches(gathered, _schema())
                gathered, size = [], 0
    if gathered:
        yield pa.Table.from_batches(gathered, _schema())
