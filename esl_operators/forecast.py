"""Battery forecast of one server's labels: rows of ``_battery_forecast.csv``.

For each label of ds with a battery on at least :data:`MIN_OBSERVATIONS` of the window's published
dates (ds included), battery = a + b·t is fitted by ordinary least squares, t the whole days from ds
(0 at ds, -1 the day before). Labels with b < 0 get days_left = floor((a - alert) / -b), or 0 when
a <= alert, and are listed when days_left <= the horizon.

Reproducible to the last bit: t and the batteries are integers, so the sums of the normal equations
are exact integers (far below 2**53), and a and b are each one float64 division of two of them,
i.e. the exact least-squares solution rounded to float64. days_left is then the formula evaluated in
float64. Memory: a few integers per label of the server, whatever the number of dates.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORECAST_COLUMNS = (
    "esl_id",
    "server",
    "store",
    "battery",
    "slope_per_day",
    "days_left",
    "forecast_date",
    "observations",
)
MIN_OBSERVATIONS = 4
#: The snapshot columns the forecast reads from ds (the earlier dates: esl_id and battery only).
CURRENT = ("esl_id", "store", "battery")


class Sums:
    """The sums of the normal equations per label of ds: n, Σt, Σy, Σt², Σty (exact integers)."""

    def __init__(self, ids: pa.ChunkedArray | pa.Array) -> None:
        self.ids = ids
        self.n, self.t, self.y, self.tt, self.ty = (np.zeros(len(ids), dtype=np.int64) for _ in range(5))

    def add(self, t: int, rows: pa.Table) -> None:
        """One date's (esl_id, battery) rows, ``t`` days from ds; labels not in ds are ignored."""
        where = pc.index_in(rows["esl_id"], value_set=self.ids)
        keep = pc.and_(pc.is_valid(where), pc.is_valid(rows["battery"]))
        index = pc.filter(where, keep).to_numpy(zero_copy_only=False).astype(np.int64)
        y = pc.filter(rows["battery"], keep).to_numpy(zero_copy_only=False).astype(np.int64)
        np.add.at(self.n, index, 1)
        np.add.at(self.t, index, t)
        np.add.at(self.y, index, y)
        np.add.at(self.tt, index, t * t)
        np.add.at(self.ty, index, t * y)


def server_forecast(
    server: str,
    current: pa.Table,
    earlier: Iterable[tuple[int, pa.Table]],
    *,
    ds: date,
    alert_pct: int,
    horizon_days: int,
) -> tuple[pa.Table, np.ndarray]:
    """The forecast rows of ``server`` (:data:`FORECAST_COLUMNS`, strings, null for empty) sorted by
    days_left then esl_id, and their days_left. ``current``: :data:`CURRENT` of ds, each label once,
    sorted by esl_id; ``earlier``: (t, esl_id and battery rows) of each earlier date of the window."""
    sums = Sums(current["esl_id"])
    sums.add(0, current)
    for t, rows in earlier:
        sums.add(t, rows)
    fitted = np.flatnonzero(sums.n >= MIN_OBSERVATIONS)
    n, st, sy, stt, sty = (v[fitted] for v in (sums.n, sums.t, sums.y, sums.tt, sums.ty))
    den = (n * stt - st * st).astype(np.float64)  # > 0: the dates of a label are distinct
    b = (n * sty - st * sy).astype(np.float64) / den
    a = (sy * stt - st * sty).astype(np.float64) / den
    with np.errstate(divide="ignore", invalid="ignore"):
        days = np.where(a <= alert_pct, 0.0, np.floor((a - float(alert_pct)) / -b))
    listed = (b < 0) & (days <= horizon_days)
    rows, slopes = fitted[listed], b[listed]
    days_left = days[listed].astype(np.int64)
    order = np.lexsort((rows, days_left))  # ``current`` is in esl_id order: its index is that order
    rows, slopes, days_left = rows[order], slopes[order], days_left[order]
    picked = current.take(pa.array(rows))
    table = pa.table(
        [
            picked["esl_id"],
            pa.repeat(pa.scalar(server, pa.string()), len(rows)),
            picked["store"],
            pc.cast(picked["battery"], pa.string()),
            pa.array([repr(float(s)) for s in slopes], pa.string()),
            pa.array([str(d) for d in days_left.tolist()], pa.string()),
            pa.array([(ds + timedelta(days=d)).isoformat() for d in days_left.tolist()], pa.string()),
            pa.array([str(c) for c in sums.n[rows].tolist()], pa.string()),
        ],
        names=list(FORECAST_COLUMNS),
    )
    return table, days_left
