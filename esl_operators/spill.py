"""External sort of one partition in bounded memory, passes 1 and 2: hash buckets, sorted runs.

A partition larger than a run (1/``RUN_SHARE`` of ``aggregate_memory_mb``, see :class:`Budget`) is
published in three passes, each holding a bounded slice of it (why this design and not an embedded
engine, with numbers: BENCHMARKS.md, section "Bounded memory"):

1. **scatter**: the part is read in chunks; failed stores' rows are dropped; every row goes to one
   of K bucket files by a hash of its ``esl_id``, so all copies of a label share a bucket, in part
   order. K is chosen so that a bucket fits in a run.
2. **runs**: each bucket is read back, de-duplicated by the very rule of the in-memory path, handed
   to the sinks (report statistics, per-store counts), rendered into CSV lines by our vectorised
   formatter and written sorted by :data:`esl_operators.csvformat.ORDER` as a run: the sort columns
   and the line of each row (:data:`RUN_SCHEMA`).
3. **merge** (:mod:`esl_operators.merge`): the runs are merged into the CSV's lines.

Spill files live in a hidden folder next to the parts (``{ds}/_parts/.spill-*``), or in a local
temporary folder when the output root is object storage; the folder is removed when the partition is
done, failed or not, and one left by a killed attempt is removed by the next.

Longer than most modules (about 350 lines) because passes 1 and 2 share the budget, the bucket
files' format and the row checks; split apart they would have to agree on all three across modules.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc

from esl_operators.cleaning import drop_duplicates, drop_failed, id_hashes
from esl_operators.csvformat import ORDER, WORKERS, order_keys
from esl_operators.manifest import ErrorEntry
from esl_operators.merge import FAN_IN, MERGE_BATCH_ROWS, RUN_SCHEMA
from esl_operators.parts import PART_SCHEMA
from esl_operators.storage import PathLike

log = logging.getLogger(__name__)

MB = 1 << 20
# A run is the budget / RUN_SHARE of part rows (Arrow bytes). Processing one holds several times its
# size (the rows, the output columns, the lines, a slice of the sorted copy), and the allocator keeps
# some slack beside: measured, 24 keeps a 4M-row partition well inside the budget at the speed of 8
# (BENCHMARKS.md). Tests raise it to force many runs on a small partition.
RUN_SHARE = 24
SPILL_PREFIX = ".spill-"
_WRITE_SLICE_ROWS = 32_768  # rows of a run taken into order at once
# Spill files are read and written through Arrow's own file class, never Python file objects: the
# data then lands in Arrow's memory pool instead of Python bytes, which the C allocator keeps.


class RowSink(Protocol):
    """Takes the de-duplicated rows of a partition, chunk by chunk (``FleetStats`` is one)."""

    def add(self, part: pa.Table) -> None: ...


@dataclass(frozen=True)
class Budget:
    """The aggregate step's working memory, and the sizes derived from it."""

    total_bytes: int

    @classmethod
    def from_mb(cls, megabytes: float) -> Budget:
        return cls(int(megabytes * MB))

    @property
    def run_bytes(self) -> int:
        """Part rows (Arrow bytes) handled at once: a partition up to this size is sorted in memory."""
        return max(1, self.total_bytes // RUN_SHARE)

    @property
    def chunk_bytes(self) -> int:
        """Part rows read at once while scattering."""
        return max(1, min(self.run_bytes // 4, 16 * MB))

    def buckets(self, rows: int, row_bytes: float) -> int:
        """How many buckets ``rows`` part rows of ``row_bytes`` each need (at least 2: spilled)."""
        return max(2, int(np.ceil(rows * row_bytes * 1.1 / self.run_bytes)))

    def merge_rows(self, runs: int, row_bytes: float) -> int:
        """Rows per run batch such that the merge holds about a quarter of the budget: a batch of
        every run, their rows up to the bound gathered, and those in order."""
        low, high = MERGE_BATCH_ROWS
        fit = self.total_bytes // max(1.0, 12 * runs * row_bytes)
        return int(min(high, max(low, fit)))


def remove_stale_spills(parts_dir: PathLike) -> None:
    """Remove spill folders a killed attempt left next to the parts (one date has one writer)."""
    if isinstance(parts_dir, Path) and parts_dir.is_dir():
        for stale in parts_dir.glob(f"{SPILL_PREFIX}*"):
            log.info("removing %s, left by an earlier attempt", stale)
            shutil.rmtree(stale)


@contextlib.contextmanager
def spill_folder(parts_dir: PathLike) -> Iterator[Path]:
    """A fresh local folder for spill files, removed on the way out whatever happens.

    Next to the parts (a hidden ``.spill-*`` under ``_parts``) for a local output root; for object
    storage a local temporary folder (spill files are rewritten and reread at random, which object
    stores do badly), so only the part is read from and the CSV written to the store.
    """
    if isinstance(parts_dir, Path):
        parts_dir.mkdir(parents=True, exist_ok=True)
        folder = parts_dir / f"{SPILL_PREFIX}{uuid.uuid4().hex[:8]}"
        folder.mkdir()
    else:
        folder = Path(tempfile.mkdtemp(prefix="esl-aggregate-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=False)


# --- 1. scatter -------------------------------------------------------------------------------------


def bucket_of(part: pa.Table, buckets: int) -> np.ndarray:
    """The bucket (0..buckets-1) of each row: a function of its ``esl_id`` alone, so all copies of a
    label (same server and esl_id) share one."""
    which: np.ndarray = (id_hashes(part["esl_id"]) % np.uint64(buckets)).astype(np.int64)
    return which


class Buckets:
    """K bucket files being written: each chunk's rows go to their buckets, in their part order.

    Grouping a chunk by bucket and writing it happen on a worker thread (Arrow lets go of the GIL)
    while the next chunk is read and hashed; at most one chunk waits to be written.
    """

    def __init__(self, folder: Path, count: int) -> None:
        self.paths = [folder / f"bucket-{k}.arrow" for k in range(count)]
        self._stack = contextlib.ExitStack()
        self._writers = []
        for path in self.paths:
            handle = self._stack.enter_context(pa.OSFile(str(path), "wb"))
            self._writers.append(self._stack.enter_context(pa.ipc.new_stream(handle, PART_SCHEMA)))
        self._worker = self._stack.enter_context(ThreadPoolExecutor(max_workers=1))
        self._pending: Future[None] | None = None

    def write(self, chunk: pa.Table) -> None:
        if chunk.num_rows == 0:
            return
        which = bucket_of(chunk, len(self.paths))
        self._wait()
        self._pending = self._worker.submit(self._write, chunk, which)

    def _write(self, chunk: pa.Table, which: np.ndarray) -> None:
        # stable: a bucket keeps its rows in part order; one contiguous table takes fastest
        grouped = chunk.combine_chunks().take(pa.array(np.argsort(which, kind="stable")))
        sizes = np.bincount(which, minlength=len(self.paths)).tolist()
        start = 0
        for writer, count in zip(self._writers, sizes, strict=True):
            if count:
                writer.write_table(grouped.slice(start, count))
            start += count

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a write error surfaces here

    def close(self) -> None:
        """Finish the last write and close the files (also after an error, which then goes on)."""
        try:
            self._wait()
        finally:
            self._stack.close()


# --- 2. runs ----------------------------------------------------------------------------------------


def read_bucket(path: Path, limit_bytes: int) -> tuple[pa.Table, int]:
    """A bucket's rows de-duplicated, and how many copies were dropped.

    Read batch by batch; should a bucket outgrow ``limit_bytes`` (a label repeated very many times),
    what was read so far is de-duplicated first, which keeps the same rows as doing it once at the end.
    """
    kept: list[pa.Table] = []
    size = dropped = 0
    threshold = limit_bytes
    with pa.OSFile(str(path)) as handle:
        for batch in pa.ipc.open_stream(handle):
            kept.append(pa.Table.from_batches([batch]))
            size += batch.nbytes
            if size > threshold:
                table = pa.concat_tables(kept)
                unique = drop_duplicates(table)
                dropped += table.num_rows - unique.num_rows
                kept, size = [unique], unique.nbytes
                threshold = max(limit_bytes, 2 * size)  # many distinct labels: do not redo it per batch
    table = pa.concat_tables(kept) if kept else PART_SCHEMA.empty_table()
    unique = drop_duplicates(table)
    return unique, dropped + table.num_rows - unique.num_rows


def write_run(path: Path, rows: pa.Table, order: pa.Array, batch_rows: int, pool: Executor) -> None:
    """``rows`` (:data:`RUN_SCHEMA`) in ``order``, as a run file of record batches of ``batch_rows``.

    Slices of the order are taken on the pool's threads, at most one per thread ahead of the one
    being written: the sorted copy never exists whole.
    """
    step = max(batch_rows, min(_WRITE_SLICE_ROWS, -(-len(order) // WORKERS)))
    pending: deque[Future[pa.Table]] = deque()
    with pa.OSFile(str(path), "wb") as handle, pa.ipc.new_stream(handle, RUN_SCHEMA) as writer:
        for start in range(0, len(order), step):
            pending.append(pool.submit(rows.take, order.slice(start, step)))
            if len(pending) > WORKERS:
                writer.write_table(pending.popleft().result(), max_chunksize=batch_rows)
        while pending:
            writer.write_table(pending.popleft().result(), max_chunksize=batch_rows)


# --- a whole partition -------------------------------------------------------------------------------


@dataclass
class SpillCounts:
    """What the external sort did to one partition (the manifest's counters, and how it ran)."""

    rows: int = 0  # part rows read
    failed: int = 0  # rows of failed stores, dropped
    duplicates: int = 0  # copies of labels, dropped
    buckets: int = 0
    batch_rows: int = MERGE_BATCH_ROWS[1]  # rows per record batch of the runs


def make_runs(
    chunks: Iterable[pa.Table],
    *,
    expected_rows: int,
    budget: Budget,
    folder: Path,
    errors: Sequence[ErrorEntry],
    render: Callable[[pa.Table], pa.ChunkedArray],
    sinks: Sequence[RowSink],
    check_rows: Callable[[int], None],
) -> tuple[list[Path], SpillCounts]:
    """Passes 1 and 2: scatter ``chunks`` into buckets, then turn each bucket into a sorted run.

    ``check_rows`` gets the number of part rows once the part is read through, before any run is
    made (it raises if the part does not add up). Returns the runs, for
    :func:`esl_operators.merge.merge_runs`.
    """
    counts = SpillCounts()
    buckets = _scatter(chunks, expected_rows, budget, folder, errors, counts)
    check_rows(counts.rows)
    runs: list[Path] = []
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for bucket in buckets:
            unique, dropped = read_bucket(bucket, 2 * budget.run_bytes)
            bucket.unlink()
            counts.duplicates += dropped
            for sink in sinks:
                sink.add(unique)
            keys = order_keys(unique)
            order = pc.sort_indices(keys, sort_keys=ORDER)
            lines = render(unique)
            del unique
            rows = keys.append_column("line", lines.combine_chunks())
            del keys, lines
            run = folder / f"run-{len(runs)}.arrow"
            row_bytes = rows.nbytes / max(1, rows.num_rows)
            counts.batch_rows = budget.merge_rows(min(len(buckets), FAN_IN), row_bytes)
            write_run(run, rows, order, counts.batch_rows, pool)
            runs.append(run)
            del rows, order
            _release()
    counts.buckets = len(runs)
    return runs, counts


def _scatter(
    chunks: Iterable[pa.Table],
    expected_rows: int,
    budget: Budget,
    folder: Path,
    errors: Sequence[ErrorEntry],
    counts: SpillCounts,
) -> list[Path]:
    """Pass 1: the part's rows, failed stores' dropped, into bucket files; returns their paths."""
    buckets: Buckets | None = None
    try:
        for chunk in chunks:
            if buckets is None:
                row_bytes = chunk.nbytes / max(1, chunk.num_rows)
                buckets = Buckets(folder, budget.buckets(max(expected_rows, chunk.num_rows), row_bytes))
            counts.rows += chunk.num_rows
            complete = drop_failed(chunk, errors)
            counts.failed += chunk.num_rows - complete.num_rows
            buckets.write(complete)
            del chunk, complete  # freed memory is kept for the next chunk (see _release)
    finally:
        if buckets is not None:
            buckets.close()
    return buckets.paths if buckets else []


def _release() -> None:
    """Hand freed memory back to the system between runs: the pool (mimalloc) would otherwise keep
    each phase's high-water mark; measured: -30 MB peak RSS. Not between the scatter's chunks: the
    peak is in the runs, and pages handed back are faulted in again (1M rows: 40k page faults, 0.3 s
    of system time)."""
    pa.default_memory_pool().release_unused()
