"""Writing a published CSV partition (``esl_id_part_{n}.csv``) from rendered Arrow lines, atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from esl_operators.csvformat import WORKERS, string_bytes
from esl_operators.storage import PathLike, temporary_path

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
    tmp = temporary_path(path)
    with tmp.open("wb") as handle, ThreadPoolExecutor(max_workers=WORKERS) as pool:
        handle.write(head.getvalue().encode("utf-8"))
        slices = (order.slice(start, WRITE_SLICE_ROWS) for start in range(0, len(order), WRITE_SLICE_ROWS))
        for piece in pool.map(whole.take, slices):
            handle.write(string_bytes(piece))
    tmp.rename(path)
