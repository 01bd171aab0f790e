"""Reading the history files for the report: the change list, the forecast, the window's snapshots.

Streamed or one file at a time (see :mod:`.history`); every file is checked against the columns the
issue's contract gives it, and a file that does not match is refused with its path and what differs.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esl_operators.storage import MANIFEST_NAME, SNAPSHOT_NAME, PathLike, published_dates, read_json, run_dir

log = logging.getLogger(__name__)

CHANGE_KINDS = ("new", "gone", "battery_drop", "moved", "firmware")
CHANGES_COLUMNS = ("change", "esl_id", "server", "store", "previous", "current")
FORECAST_COLUMNS = (
    "esl_id", "server", "store", "battery", "slope_per_day", "days_left", "forecast_date", "observations",
)  # fmt: skip
#: Rows each list shows; the full lists are the files, linked.
LISTED = 15
#: "Batteries to order": labels expected under the alert level within this many days.
ORDER_HORIZONS = (7, 30)
StoreKey = tuple[str, str]  # (server, store)


class HistoryFileError(ValueError):
    """A history file does not have the contract's columns."""


def _csv_rows(path: PathLike, columns: Sequence[str]) -> Iterator[list[str]]:
    """The rows of a published CSV after checking its header against the contract."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != list(columns):
            raise HistoryFileError(f"{path}: expected the columns {list(columns)}, found {header}")
        for number, row in enumerate(reader, start=2):
            if len(row) != len(columns):
                raise HistoryFileError(f"{path}: line {number} has {len(row)} cells, expected {len(columns)}")
            yield row


@dataclass
class Changes:
    counts: Counter[str] = field(default_factory=Counter)
    listed: dict[str, list[list[str]]] = field(default_factory=lambda: {k: [] for k in CHANGE_KINDS})
    gone_by_store: Counter[StoreKey] = field(default_factory=Counter)


def read_changes(path: PathLike) -> Changes:
    """Counts per change and per store of the gone labels, and the first :data:`LISTED` rows of each."""
    found = Changes()
    for change, esl_id, server, store, previous, current in _csv_rows(path, CHANGES_COLUMNS):
        if change not in CHANGE_KINDS:
            raise HistoryFileError(f"{path}: unknown change {change!r} for label {esl_id!r} of {server!r}")
        found.counts[change] += 1
        if change == "gone":
            found.gone_by_store[(server, store)] += 1
        if len(found.listed[change]) < LISTED:
            found.listed[change].append([esl_id, store, server, previous, current])
    return found


def read_forecast(path: PathLike) -> dict[StoreKey, list[int]]:
    """Per store, the labels expected under the alert level within each of :data:`ORDER_HORIZONS` days."""
    per_store: dict[StoreKey, list[int]] = {}
    for row in _csv_rows(path, FORECAST_COLUMNS):
        _, server, store, _, _, days_left, _, _ = row
        counts = per_store.setdefault((server, store), [0] * len(ORDER_HORIZONS))
        for index, horizon in enumerate(ORDER_HORIZONS):
            counts[index] += int(days_left) <= horizon
    return per_store


@dataclass(frozen=True)
class DatePoint:
    date: str
    exported: int
    low: int
    new: int | None  # None: that date's manifest has no history block
    gone: int | None


def _read_snapshot(path: PathLike, columns: list[str]) -> pa.Table:
    with path.open("rb") as handle:
        return pq.read_table(handle, columns=columns)


def _history_of(folder: PathLike) -> Mapping[str, Any] | None:
    try:
        manifest = read_json(folder / MANIFEST_NAME)
    except (OSError, ValueError) as exc:  # shown as "–" in the trend table; the run itself is not harmed
        log.warning("%s: no history counts for the trends: %s", folder / MANIFEST_NAME, exc)
        return None
    block = manifest.get("history") if isinstance(manifest, dict) else None
    return block if isinstance(block, dict) else None


class Trends:
    """Per date: labels exported, under the threshold, new and gone; per store: the label uptime."""

    def __init__(self, low_threshold: int) -> None:
        self.low_threshold = low_threshold
        self.points: list[DatePoint] = []
        self._seen: pa.Table | None = None  # server, esl_id, store (latest), n (dates published)

    def add(self, date: str, snapshot: pa.Table, history: Mapping[str, Any] | None) -> None:
        low = pc.sum(pc.less(snapshot["battery"], self.low_threshold)).as_py() or 0
        new = history.get("new") if history else None
        gone = history.get("gone") if history else None
        self.points.append(
            DatePoint(
                date,
                snapshot.num_rows,
                int(low),
                new if isinstance(new, int) else None,
                gone if isinstance(gone, int) else None,
            )
        )
        today = snapshot.select(["server", "esl_id", "store"]).append_column(
            "n", pa.array(np.ones(snapshot.num_rows, dtype=np.int64))
        )
        if self._seen is None:
            self._seen = today
            return
        before = self._seen.rename_columns(["server", "esl_id", "store_before", "n_before"])
        joined = before.join(today, keys=["server", "esl_id"], join_type="full outer")
        self._seen = pa.table(
            {
                "server": joined["server"],
                "esl_id": joined["esl_id"],
                # A label that moved counts for the store it was last published in.
                "store": pc.coalesce(joined["store"], joined["store_before"]),
                "n": pc.add(pc.fill_null(joined["n_before"], 0), pc.fill_null(joined["n"], 0)),
            }
        )

    def uptime(self) -> dict[StoreKey, tuple[int, float]]:
        """Per store: labels seen in the window, and the mean share of the window's dates they were
        published on."""
        if self._seen is None or not self.points:
            return {}
        dates = len(self.points)
        grouped = self._seen.group_by(["server", "store"]).aggregate([("n", "sum"), ("n", "count")])
        return {
            (server, store): (count, total / (count * dates))
            for server, store, total, count in zip(
                *(grouped[c].to_pylist() for c in ("server", "store", "n_sum", "n_count")), strict=True
            )
        }


def read_trends(
    folder: PathLike, output_root: PathLike, ds: str, history: Mapping[str, Any], days: int, low: int
) -> Trends:
    """The trends over the published dates of the window, ``ds`` (its staged files in ``folder``) last."""
    trends = Trends(low)
    columns = ["server", "esl_id", "store", "battery"]
    for date in published_dates(output_root, ds, days):
        earlier = run_dir(output_root, date)
        trends.add(date, _read_snapshot(earlier / SNAPSHOT_NAME, columns), _history_of(earlier))
    if (folder / SNAPSHOT_NAME).exists():
        trends.add(ds, _read_snapshot(folder / SNAPSHOT_NAME, columns), history)
    return trends
