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

import pyarrow as pa
import pyarrow.compute as pc

CHANGES_COLUMNS = ("change", "esl_id", "server", "store", "previous", "current")
KINDS = ("new", "gone", "battery_drop", "moved", "firmware")
#: The snapshot columns a comparison reads.
COMPARED = ("esl_id", "store", "battery", "firmware")


def _side(rows: pa.Table, prefix: str) -> pa.Table:
    here = pa.repeat(pa.scalar(True), rows.num_rows)
    names = ["esl_id", *(f"{prefix}{n}" for n in COMPARED[1:]), f"{prefix}here"]
    return pa.table([*(rows[n] for n in COMPARED), here], names=names)


def _differ(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.not_equal(pc.fill_null(a, ""), pc.fill_null(b, ""))


def server_changes(
    server: str, previous: pa.Table, current: pa.Table, drop_points: int
) -> dict[str, pa.Table]:
    """Per kind, the change rows of ``server`` (:data:`CHANGES_COLUMNS`, strings, null for empty),
    sorted by esl_id. ``previous`` and ``current`` hold :data:`COMPARED` of P and ds, each label once."""
    joined = _side(current, "c_").join(_side(previous, "p_"), keys="esl_id", join_type="full outer")
    joined = joined.take(pc.sort_indices(joined["esl_id"]))
    in_p, in_ds = pc.is_valid(joined["p_here"]), pc.is_valid(joined["c_here"])
    both = pc.and_(in_p, in_ds)
    drop = pc.subtract(joined["p_battery"], joined["c_battery"])
    battery = [pc.cast(joined[f"{p}battery"], pa.string()) for p in ("p_", "c_")]
    masks = {
        "new": pc.invert(in_p),
        "gone": pc.invert(in_ds),
        "battery_drop": pc.and_(both, pc.fill_null(pc.greater_equal(drop, drop_points), False)),
        "moved": pc.and_(both, _differ(joined["p_store"], joined["c_store"])),
        "firmware": pc.and_(both, _differ(joined["p_firmware"], joined["c_firmware"])),
    }
    empty = pa.nulls(joined.num_rows, pa.string())
    values = {
        "new": (joined["c_store"], empty, empty),
        "gone": (joined["p_store"], empty, empty),
        "battery_drop": (joined["c_store"], *battery),
        "moved": (joined["c_store"], joined["p_store"], joined["c_store"]),
        "firmware": (joined["c_store"], joined["p_firmware"], joined["c_firmware"]),
    }
    found = {}
    for kind in KINDS:
        mask = masks[kind]
        store, before, after = (pc.filter(column, mask) for column in values[kind])
        ids = pc.filter(joined["esl_id"], mask)
        kinds, servers = (pa.repeat(pa.scalar(text, pa.string()), len(ids)) for text in (kind, server))
        found[kind] = pa.table([kinds, ids, servers, store, before, after], names=list(CHANGES_COLUMNS))
    return found
