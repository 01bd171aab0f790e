"""The typed snapshot of a published date, ``{ds}/_snapshot.parquet``: one row per published label.

The servers report only their current state, so the fleet's history is what we published: every run
keeps its labels in a compact typed file, and :mod:`esl_operators.history` compares it with earlier
ones. The columns are the standard layout's names with real types (:data:`SNAPSHOT_SCHEMA`): texts as
strings, ``created_at``/``last_heartbeat_at`` as ``timestamp[ms, UTC]``, counts as ``int64``,
``frequency`` as ``float64``; an empty cell is null. The rows are the de-duplicated published rows as
the aggregate step hands them to its sinks, before any formatting, so the snapshot does not depend on
``header_style``, ``timezone`` or ``spreadsheet_safe``.

A value the servers sent that does not fit its column (a ``set_wor`` of ``"on"``, a temperature of
``21.5``, a count beyond int64) is null in the snapshot and counted in the log; the CSV keeps it as
sent.

Bounded memory: :class:`SnapshotWriter` writes each chunk it gets (on a thread of its own, one
chunk at a time) as row groups of one server each;
:class:`Snapshot` reads one server's rows at a time, from the row groups that hold it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esl_operators.csvformat import STANDARD_COLUMNS
from esl_operators.exceptions import EslError
from esl_operators.records import PART_COLUMNS
from esl_operators.storage import PathLike, storage_errors

log = logging.getLogger(__name__)

_TIME = pa.timestamp("ms", tz="UTC")
_TYPES = {
    "created_at": _TIME,
    "last_heartbeat_at": _TIME,
    "battery": pa.int64(),
    "refresh_times": pa.int64(),
    "led_times": pa.int64(),
    "product_id": pa.int64(),
    "set_wor": pa.int64(),
    "temperature": pa.int64(),
    "frequency": pa.float64(),
}
SNAPSHOT_SCHEMA = pa.schema([(name, _TYPES.get(name, pa.string())) for name in STANDARD_COLUMNS])
ROW_GROUP_ROWS = 65_536  # rows read at once when a server's rows are taken back
# Columns dictionary-encoded: those whose values repeat. Trying it on the near-unique ones (ids,
# timestamps, frequency, refresh counts) only to fall back cost about 40% of the write, for a larger
# file (measured: 48k rows, 26 ms instead of 45 ms, 1.5 MB instead of 1.9 MB).
_DICTIONARY_COLUMNS = ["store", "server", "screen_size", "description", "firmware", "rom", "extesl_id",
                       "chip_family", "set_wor", "battery", "temperature"]  # fmt: skip
_INT64 = (-(1 << 63), (1 << 63) - 1)


class HistoryError(EslError):
    """A snapshot of an earlier date cannot be used (wrong columns, a label twice): names the file."""


def _integer(text: str | None) -> int | None:
    """An integer cell as the servers may have sent it (``7``, ``-5.0``); None when it is not one."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        if not math.isfinite(number) or not number.is_integer():
            return None
        value = int(number)
    return value if _INT64[0] <= value <= _INT64[1] else None


def _empty_as_null(text: pa.Array) -> pa.Array:
    """``text`` with its empty strings null: the same buffers and a validity bitmap (no copy of the
    values, which ``if_else`` makes: it took about half of :func:`typed`)."""
    if text.null_count or not len(text):
        return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset : text.offset + len(text) + 1]
    present = np.diff(offsets) > 0
    if present.all():
        return text
    validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(text), [validity, pa.py_buffer(offsets), text.buffers()[2]])


def _column(text: pa.ChunkedArray, kind: pa.DataType) -> tuple[pa.ChunkedArray | pa.Array, int]:
    """A part column (strings, "" for missing) as ``kind``; and how many values did not fit it."""
    values = pa.chunked_array([_empty_as_null(chunk) for chunk in text.chunks], pa.string())
    if kind == pa.string():
        return values, 0
    base = pa.int64() if kind == _TIME else kind
    try:
        converted: pa.ChunkedArray | pa.Array = pc.cast(values, base)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if base != pa.int64():
            raise
        # Rare (a server sending "-5.0" or "on"): value by value, the rest of the column stays typed.
        converted = pa.array([_integer(v) for v in values.to_pylist()], pa.int64())
    lost = (len(values) - values.null_count) - (len(converted) - converted.null_count)
    return (pc.cast(converted, _TIME) if kind == _TIME else converted), lost


def typed(part: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Part rows (string columns) as snapshot rows; per column, the values that did not fit its type."""
    columns, lost = [], {}
    for source, field in zip(PART_COLUMNS, SNAPSHOT_SCHEMA, strict=True):
        column, count = _column(part[source], field.type)
        columns.append(column)
        if count:
            lost[field.name] = count
    return pa.Table.from_arrays(columns, schema=SNAPSHOT_SCHEMA), lost


def _open(path: PathLike, mode: str) -> Any:
    """Arrow's own file for a local path; the path's file object for object storage."""
    remote: Any = path  # ObjectStoragePath's open is untyped
    return pa.OSFile(str(path), mode) if isinstance(path, Path) else remote.open(mode)


class SnapshotWriter:
    """A :class:`~esl_operators.spill.RowSink` writing the snapshot, chunk by chunk, to ``path``.

    Use as a context manager: the file is complete when the block ends; after an exception it sits in
    the staging folder, which is discarded.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.rows = 0
        self.lost: dict[str, int] = {}
        with storage_errors("write", path):
            self._handle = _open(path, "wb")
            self._writer = pq.ParquetWriter(
                self._handle, SNAPSHOT_SCHEMA, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS
            )
        # Converting and writing a chunk (Arrow and Parquet let go of the GIL) runs on a thread of its
        # own while the aggregate step renders the chunk's CSV lines; one chunk at most is in flight.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self._pending: Future[None] | None = None

    def add(self, part: pa.Table) -> None:
        self._wait()  # the previous chunk's write error surfaces here
        self._pending = self._worker.submit(self._add_named, part)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _add_named(self, part: pa.Table) -> None:
        # A full disk or a failing store names the snapshot, as every other published file does.
        with storage_errors("write", self.path):
            self._add(part)

    def _add(self, part: pa.Table) -> None:
        table, lost = typed(part)
        for name, count in lost.items():
            self.lost[name] = self.lost.get(name, 0) + count
        self.rows += table.num_rows
        if table.num_rows == 0:
            return
        # One server per row group, so reading a server back touches its groups only. A chunk of a
        # partition of one server (the default servers_per_batch) is written as it comes.
        if pc.count_distinct(table["server"]).as_py() == 1:
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            return
        # Grouped by server name, each server's rows in their order (a stable sort of small codes).
        servers = pc.dictionary_encode(table["server"], null_encoding="encode").combine_chunks()
        names = servers.dictionary.to_pylist()
        rank = np.empty(len(names), dtype=np.int64)
        rank[sorted(range(len(names)), key=lambda i: (names[i] is None, names[i] or ""))] = np.arange(
            len(names)
        )
        codes = rank[servers.indices.to_numpy()]
        table = table.take(pa.array(np.argsort(codes, kind="stable")))
        start = 0
        for count in np.bincount(codes, minlength=len(names)).tolist():
            self._writer.write_table(table.slice(start, count), row_group_size=ROW_GROUP_ROWS)
            start += count

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._wait()
            elif self._pending is not None:  # the block failed: its error is the one to report
                futures.wait([self._pending])
        finally:
            self._worker.shutdown()
            with storage_errors("write", self.path):
                try:
                    self._writer.close()  # after an error too: the file is discarded, but the writer let go
                finally:
                    self._handle.close()
        if exc_type is None and self.lost:
            counts = ", ".join(f"{name} {count}" for name, count in sorted(self.lost.items()))
            log.warning(
                "%s: values that do not fit their column are null in the snapshot: %s", self.path, counts
            )


class Snapshot:
    """A snapshot file opened for reading one server's rows at a time (a local file)."""

    def __init__(self, path: Path, name: str, columns: Sequence[str]) -> None:
        """``name`` says which date's snapshot it is in errors; ``columns`` are the ones read back."""
        self.name = name
        self.columns = list(columns)
        try:
            self._file = pq.ParquetFile(str(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise HistoryError(f"{name}: not a readable snapshot: {exc}") from None
        schema = self._file.schema_arrow
        for column in ("server", *self.columns):
            wanted = SNAPSHOT_SCHEMA.field(column).type
            if column not in schema.names or schema.field(column).type != wanted:
                raise HistoryError(f"{name}: snapshot lacks the column {column} ({wanted})")
        self._groups: dict[str, list[int]] = {}
        self._mixed: set[int] = set()  # row groups of more than one server (files of other writers)
        for group in range(self._file.num_row_groups):
            servers = pc.unique(self._file.read_row_group(group, columns=["server"])["server"]).to_pylist()
            if len(servers) > 1:
                self._mixed.add(group)
            for server in servers:
                if server is not None:
                    self._groups.setdefault(server, []).append(group)

    def servers(self) -> set[str]:
        return set(self._groups)

    def rows(self, server: str) -> pa.Table:
        """The server's rows (the chosen columns), in file order; each label once."""
        groups = self._groups.get(server)
        if not groups:
            return SNAPSHOT_SCHEMA.empty_table().select(self.columns)
        if self._mixed.isdisjoint(groups):
            table = self._file.read_row_groups(groups, columns=self.columns)
        else:
            table = self._file.read_row_groups(groups, columns=[*self.columns, "server"])
            table = table.filter(pc.equal(table["server"], server)).select(self.columns)
        if pc.count_distinct(table["esl_id"]).as_py() != table.num_rows:
            ids = sorted(table["esl_id"].to_pylist())
            twice = next(a for a, b in itertools.pairwise(ids) if a == b)
            raise HistoryError(f"{self.name}: server {server!r} has label {twice!r} more than once")
        return table

    def close(self) -> None:
        self._file.close()
