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

from esl_operators.csvformat import string_bytes
from esl_operators.manifest import ErrorEntry

_SEP = "\x1f"  # unit separator: joins server and store into one key

# Odd 64-bit multipliers, one per byte position (mod 64): a fixed polynomial hash, so buckets are
# reproducible from run to run.
_MULTIPLIERS = np.random.default_rng(0x45534C).integers(1, 1 << 62, 64, dtype=np.uint64) * 2 + 1
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
# Key bytes hashed at once: bounds the per-byte temporaries (8 bytes per key byte, several of them).
# Kept under the C allocator's mmap threshold (128 KB): larger ones are mapped and unmapped every
# time, a page fault per 4 KB (measured, 1M rows: 72,000 faults and 0.15 s of system time at 4096
# keys of 11 bytes; 1,800 at 16 KB).
_HASH_BYTES = 16_384


def _hash(keys: pa.Array) -> np.ndarray:
    """64-bit hashes of a binary-like array's values (vectorised; equal bytes, equal hash)."""
    n = len(keys)
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset : keys.offset + n + 1]
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    raw = np.frombuffer(string_bytes(keys), dtype=np.uint8)
    starts = offsets[:-1] - offsets[0]
    position = np.arange(len(raw), dtype=np.int64) - np.repeat(starts, lengths)
    weighted = raw.astype(np.uint64) * _MULTIPLIERS[position & 63]
    sums = np.zeros(n, dtype=np.uint64)
    filled = lengths > 0
    if len(raw):
        sums[filled] = np.add.reduceat(weighted, starts[filled])
    h = sums ^ (lengths.astype(np.uint64) << np.uint64(40))
    for multiplier, shift in ((_MIX[0], 30), (_MIX[1], 27)):  # splitmix64's finaliser
        h = (h ^ (h >> np.uint64(shift))) * multiplier
    hashes: np.ndarray = h ^ (h >> np.uint64(31))
    return hashes


def id_hashes(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed 64-bit hash of each ``esl_id`` (equal ids, equal hashes): the external sort's buckets
    and the quick test for duplicates."""
    out = np.empty(len(ids), dtype=np.uint64)
    done = 0
    for chunk in ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]:
        step = max(1, _HASH_BYTES * len(chunk) // max(1, len(string_bytes(chunk))))
        for start in range(0, len(chunk), step):
            piece = chunk.slice(start, step)
            out[done : done + len(piece)] = _hash(piece)
            done += len(piece)
    return out


def _distinct_ids(ids: pa.ChunkedArray) -> bool:
    """True if no ``esl_id`` repeats: distinct hashes mean distinct ids (3x faster than counting the
    distinct strings); equal hashes (a repeat, or very rarely a collision) say nothing."""
    hashes = id_hashes(ids)
    hashes.sort()
    return not bool((hashes[1:] == hashes[:-1]).any())


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
    if _distinct_ids(part["esl_id"]):
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
