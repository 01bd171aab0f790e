"""Which part rows are published: the two cleaning rules of the aggregate step, on Arrow tables.

* rows of a store (or server) that failed are dropped, so a published store is always complete;
* an ESL id seen twice on one server keeps the row with the latest ``last_hb_time``; ties go to the
  first store by name, then to the row that came first in the part.

Both work on any slice of a partition: the external sort (:mod:`esl_operators.spill`) applies them to
chunks and to hash buckets of ``esl_id`` (copies of a label share their ``esl_id``, hence a bucket),
the in-memory path to the whole partition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esl_operators.manifest import ErrorEntry

_SEP = "\x1f"  # unit separator: joins server and store into one key


def drop_failed(part: pa.Table, errors: Sequence[ErrorEntry]) -> pa.Table:
    """Remove the rows of failed stores (``store`` empty: the whole server failed)."""
    failed_servers = sorted({e["server"] for e in errors if not e["store"]})
    failed_stores = sorted({f"{e['server']}{_SEP}{e['store']}" for e in errors if e["store"]})
    if not failed_servers and not failed_stores:
        return part
    keys = pc.binary_join_element_wise(part["server"], part["store"], _SEP)
    bad = pc.or_(
        pc.is_in(part["server"], pa.array(failed_servers, pa.string())),
        pc.is_in(keys, pa.array(failed_stores, pa.string())),
    )
    return part.filter(pc.invert(bad))


def drop_duplicates(part: pa.Table) -> pa.Table:
    """Keep one row per (server, esl_id): the latest ``last_hb_time``, ties to the first store by name.

    Arrow's sort is stable, so rows equal in all four keys keep the one that came first: applied
    again to its own output followed by later rows, it picks the same rows (the external sort
    relies on that).
    """
    if pc.count_distinct(part["esl_id"]).as_py() == part.num_rows:
        return part  # the usual case: every id once, so no (server, esl_id) pair repeats either
    ranked = part.append_column("_hb", pc.cast(part["last_hb_time"], pa.int64()))
    order = pc.sort_indices(
        ranked,
        sort_keys=[
            ("server", "ascending"),
            ("esl_id", "ascending"),
            ("_hb", "descending"),
            ("store", "ascending"),
        ],
    )
    ranked = ranked.take(order)
    repeat = np.ones(max(0, ranked.num_rows - 1), dtype=bool)  # same label as the row before
    for name in ("server", "esl_id"):
        column = ranked[name].combine_chunks()
        repeat &= pc.fill_null(pc.equal(column[1:], column[:-1]), False).to_numpy(zero_copy_only=False)
    return ranked.filter(pa.array(np.concatenate([[True], ~repeat]))).drop_columns(["_hb"])
