"""What changed on one server between the previous published date P and ds: rows of ``_changes.csv``.

Labels are keyed by (server, esl_id); one server at a time, so memory is bounded by one server's
labels. The kinds, in the file's order (:data:`KINDS`):

* ``new``: in ds, not in P (previous and current empty);
* ``gone``: in P, not in ds (store: its store in P);
* ``battery_drop``: in both, battery(P) - battery(ds) >= ``battery_drop_points``; previous/current:
  the two batteries (a label without a battery on either date has no drop);
* ``moved``: in both, the store differs; previous/current: the store codes;
* ``firmware``: in both, the firmware differs (a firmware missing on one date counts as different);
  previous/current: the versions.

``store`` is the label's store in ds, except for ``gone``. Pure: Arrow tables in, tables out.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

CHANGES_COLUMNS = ("change", "esl_id", "server", "store", "previous", "current")
KINDS = ("new", "gone", "battery_drop", "moved", "firmware")
#: The snapshot columns a comparison reads.
COMPARED = ("esl_id", "store", "battery", "firmware")


def _differ(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    return pc.not_equal(pc.fill_null(a, ""), pc.fill_null(b, ""))


def _rows(kind: str, server: str, ids: Any, store: Any, before: Any = None, after: Any = None) -> pa.Table:
    n = len(ids)
    text = [pa.repeat(pa.scalar(value, pa.string()), n) for value in (kind, server)]
    empty = pa.nulls(n, pa.string())
    columns = [
        text[0],
        ids,
        text[1],
        store,
        empty if before is None else before,
        empty if after is None else after,
    ]
    return pa.table(columns, names=list(CHANGES_COLUMNS))


def server_changes(
    server: str, previous: pa.Table, current: pa.Table, drop_points: int
) -> dict[str, pa.Table]:
    """Per kind, the change rows of ``server`` (:data:`CHANGES_COLUMNS`, strings, null for empty),
    sorted by esl_id. ``previous`` and ``current`` hold :data:`COMPARED` of P and ds, each label once;
    ``current`` sorted by esl_id."""
    where = pc.index_in(current["esl_id"], value_set=previous["esl_id"])  # the label's row in P
    known = pc.is_valid(where)
    new = current.filter(pc.invert(known))
    gone = previous.filter(pc.invert(pc.is_in(previous["esl_id"], value_set=current["esl_id"])))
    gone = gone.take(pc.sort_indices(gone["esl_id"]))
    now = current.filter(known)  # in both, in esl_id order
    then = previous.take(pc.filter(where, known))
    drop = pc.fill_null(pc.greater_equal(pc.subtract(then["battery"], now["battery"]), drop_points), False)
    moved = _differ(then["store"], now["store"])
    firmware = _differ(then["firmware"], now["firmware"])

    def pick(mask: Any, column: str, source: pa.Table) -> Any:
        values = source[column]
        return pc.filter(pc.cast(values, pa.string()) if column == "battery" else values, mask)

    return {
        "new": _rows("new", server, new["esl_id"], new["store"]),
        "gone": _rows("gone", server, gone["esl_id"], gone["store"]),
        "battery_drop": _rows(
            "battery_drop", server, pick(drop, "esl_id", now), pick(drop, "store", now),
            pick(drop, "battery", then), pick(drop, "battery", now),
        ),
        "moved": _rows(
            "moved", server, pick(moved, "esl_id", now), pick(moved, "store", now),
            pick(moved, "store", then), pick(moved, "store", now),
        ),
        "firmware": _rows(
            "firmware", server, pick(firmware, "esl_id", now), pick(firmware, "store", now),
            pick(firmware, "firmware", then), pick(firmware, "firmware", now),
        ),
    }  # fmt: skip
