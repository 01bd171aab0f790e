"""Writing a published CSV partition (``esl_id_part_{n}.csv``) from rendered Arrow lines, atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from esl_operators.csvformat import WORKERS, string_bytes
from esl_operators.storage import PathLike, remove_quietly, storage_errors, temporary_path

# Lines moved per slice: bounds the temporary buffers (and Arrow's 2 GiB string offsets).
WRITE_SLICE_ROWS = 250_000


def header_line(header: Sequence[str]) -> bytes:
    """The CSV header row, quoted the way the csv module quotes it."""
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(header)
    return head.getvalue().encode("utf-8")


def write_lines_atomic(
    path: PathLike, header: Sequence[str], lines: pa.ChunkedArray, order: pa.Array
) -> None:
    """Write a CSV from ready-made lines (``csvformat.render_lines``: each ends in a line feed) in
    ``order``. The bytes go straight from Arrow's buffers to the file; slices reorder on several cores.
    """
    # One contiguous array: taking from many chunks would re-concatenate them for every slice.
    whole = lines.combine_chunks() if lines.num_chunks else pa.array([], pa.string())
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        slices = (order.slice(start, WRITE_SLICE_ROWS) for start in range(0, len(order), WRITE_SLICE_ROWS))
        stream_lines_atomic(path, header, pool.map(whole.take, slices))


def stream_lines_atomic(path: PathLike, header: Sequence[str], pieces: Iterable[pa.Array]) -> None:
    """Write a CSV from pieces of ready-made lines, already in order, as they come (a local file or
    an object-storage upload). It appears under its name only once complete; if writing fails, the
    temporary file is removed and a :class:`~esl_operators.exceptions.StorageError` names the CSV.
    """
    with storage_errors("write", path):  # a full disk or a failing store: the error names the CSV
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            with tmp.open("wb") as handle:
                handle.write(header_line(header))
                for piece in pieces:
                    handle.write(string_bytes(piece))
            tmp.rename(path)
        except BaseException:
            remove_quietly(tmp)
            raise
