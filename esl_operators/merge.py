"""Pass 3 of the external sort (:mod:`esl_operators.spill`): sorted runs merged into the CSV's lines.

Runs are read a record batch at a time. The smallest of the runs' last loaded keys bounds what may
be written: every row up to it is in memory. Each run gives up its rows up to that bound (numpy's
``searchsorted`` on the frequency finds the cut; Python compares the texts only among rows of the
bound's frequency), those few rows are sorted by Arrow with the published order's own keys and their
lines written. Keys are unique (one row per label), so the order is total and the output is byte for
byte the in-memory one. The work per row grows with the runs open, so at most :data:`FAN_IN` runs
are merged at once; more are first merged in groups into longer runs.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc

from esl_operators.csvformat import ORDER

# A run: the sort columns (csvformat.order_keys) and the rendered line of each row, in ORDER.
RUN_SCHEMA = pa.schema(
    [("_freq", pa.float64()), ("esl_id", pa.string()), ("server", pa.string()), ("store", pa.string()),
     ("line", pa.string())]
)  # fmt: skip
MERGE_BATCH_ROWS = (256, 16_384)  # rows per run batch read by the merge, at least / at most
FAN_IN = 32  # runs merged at once; more are merged in groups first

Key = tuple[tuple[int, float], tuple[int, str], tuple[int, str], tuple[int, str]]


def row_key(number: float | None, *texts: str | None) -> Key:
    """A run row's :data:`~esl_operators.csvformat.ORDER` as a Python value: tuples compare the way
    Arrow sorts (-0.0 equal to 0.0, NaN after every number, nulls last; texts by code point)."""
    rank = (2, 0.0) if number is None else (1, 0.0) if math.isnan(number) else (0, number + 0.0)
    esl_id, server, store = ((1, "") if t is None else (0, t) for t in texts)
    return (rank, esl_id, server, store)


class _Keys(Sequence[Key]):
    """A run batch's sort columns as a sequence of :func:`row_key`, for :func:`bisect.bisect_right`."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self._columns = [batch.column(i) for i in range(len(ORDER))]
        self._rows = int(batch.num_rows)

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index: Any) -> Any:
        return row_key(*(column[index].as_py() for column in self._columns))


class _Run:
    """A sorted run being read, one record batch at a time."""

    def __init__(self, path: Path, stack: contextlib.ExitStack) -> None:
        self._reader = pa.ipc.open_stream(stack.enter_context(pa.OSFile(str(path))))
        self.batch: pa.RecordBatch
        self.keys: _Keys
        self.numbers: np.ndarray | None = None  # frequency as floats, None when some are null
        self.position = 0
        self.last: Key
        self.done = False
        self._load()

    def _load(self) -> None:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                self.done = True
                return
            if batch.num_rows:
                self.batch, self.keys, self.position = batch, _Keys(batch), 0
                numbers = batch.column(0)
                self.numbers = None if numbers.null_count else numbers.to_numpy()
                self.last = self.keys[batch.num_rows - 1]
                return

    def _end(self, bound: Key) -> int:
        """Where this batch's rows pass ``bound``: numpy finds the rows of the bound's frequency
        (floats sort in numpy as in Arrow: -0.0 equal to 0.0, NaN last); Python compares the texts
        only among those."""
        (rank, value), start = bound[0], self.position
        if self.numbers is None or rank == 2:  # null frequencies: compare whole keys
            return bisect.bisect_right(self.keys, bound, lo=start)
        numbers = self.numbers[start:]
        target = math.nan if rank == 1 else value
        low = start + int(np.searchsorted(numbers, target, side="left"))
        high = start + int(np.searchsorted(numbers, target, side="right"))
        return bisect.bisect_right(self.keys, bound, lo=low, hi=high) if high > low else low

    def take_upto(self, bound: Key) -> pa.RecordBatch:
        """This run's next rows whose keys are at most ``bound``."""
        end = self._end(bound)
        taken = self.batch.slice(self.position, end - self.position)
        self.position = end
        if end == self.batch.num_rows:
            self._load()
        return taken


def _merged(paths: Sequence[Path], lines_only: bool) -> Iterator[Any]:
    """The rows of ``paths`` (sorted runs) in order, as a stream of tables (or of their lines)."""
    line = len(ORDER)
    with contextlib.ExitStack() as stack:
        runs = [run for run in (_Run(path, stack) for path in paths) if not run.done]
        while runs:
            bound = min(run.last for run in runs)  # every row up to here is in memory now
            pieces = [piece for piece in (run.take_upto(bound) for run in runs) if piece.num_rows]
            runs = [run for run in runs if not run.done]
            if len(pieces) == 1:  # already in order
                yield pieces[0].column(line) if lines_only else pa.Table.from_batches(pieces)
                continue
            gathered = pa.Table.from_batches(pieces)
            order = pc.sort_indices(gathered, sort_keys=ORDER)
            if lines_only:
                yield pa.concat_arrays([piece.column(line) for piece in pieces]).take(order)
            else:
                yield gathered.take(order)


def merge_runs(paths: Sequence[Path], batch_rows: int = MERGE_BATCH_ROWS[1]) -> Iterator[pa.Array]:
    """The lines of all runs in order, as a stream of arrays (each run read batch by batch).

    At most :data:`FAN_IN` runs are merged at once (the merge's work per row grows with the runs
    open): more runs are first merged in groups into longer runs of ``batch_rows`` batches.
    """
    paths = list(paths)
    level = 0
    while len(paths) > FAN_IN:
        level += 1
        merged: list[Path] = []
        for start in range(0, len(paths), FAN_IN):
            group = paths[start : start + FAN_IN]
            target = group[0].with_name(f"merged-{level}-{len(merged)}.arrow")
            with pa.OSFile(str(target), "wb") as handle, pa.ipc.new_stream(handle, RUN_SCHEMA) as writer:
                for rows in _merged(group, lines_only=False):
                    writer.write_table(rows, max_chunksize=batch_rows)
            for path in group:
                path.unlink()
            merged.append(target)
        paths = merged
    yield from _merged(paths, lines_only=True)
