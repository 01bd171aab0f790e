"""Streaming fleet statistics: part-row frames in, small aggregates kept, rows never kept.

The aggregate task reads one partition at a time; :class:`FleetStats` sees each frame once and keeps
only what the report needs: per-store battery counts (one slot per percent), per-store counts of
heartbeats per UTC calendar day, fleet-wide counters, and two top-N lists cut back to N after every
frame. Memory grows with the number of stores and days in the window, never with the number of labels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from esl_operators.records import DAY_MS, PART_COLUMNS

# Refreshes per day: "1-2-5" edges read well on a log-like axis and fit any fleet without a first pass.
FREQUENCY_EDGES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
TOP_N = 15
BATTERY_SLOTS = 101  # 0..100 percent

StoreKey = tuple[str, str]  # (server, store): store codes repeat across servers


@dataclass
class StoreStats:
    """What one store contributes: counts only."""

    labels: int = 0
    battery: np.ndarray = field(default_factory=lambda: np.zeros(BATTERY_SLOTS, dtype=np.int64))
    battery_missing: int = 0  # empty, or outside 0..100
    heartbeat_days: Counter[int] = field(default_factory=Counter)  # UTC epoch day -> labels
    frequency_sum: float = 0.0


@dataclass(frozen=True)
class Outlier:
    """A label refreshing unusually often."""

    frequency: float
    esl_id: str
    server: str
    store: str
    refresh_times: str
    battery: str
    description: str


@dataclass(frozen=True)
class Silent:
    """A label whose last heartbeat is among the oldest still in the window."""

    last_hb_ms: int
    esl_id: str
    server: str
    store: str
    battery: str
    description: str


class FleetStats:
    """Accumulates part-row frames (``PART_COLUMNS``, all strings) into report-sized aggregates."""

    def __init__(self, top_n: int = TOP_N) -> None:
        self.top_n = top_n
        self.labels = 0
        self.stores: dict[StoreKey, StoreStats] = {}
        self.frequency_zero = 0  # 0.0 means "younger than a whole day, or no refresh data"
        self.frequency_bins = np.zeros(len(FREQUENCY_EDGES), dtype=np.int64)  # [edge_i, edge_i+1)
        self.chip_families: Counter[str] = Counter()
        self.screen_sizes: Counter[str] = Counter()
        self.firmwares: Counter[str] = Counter()
        # Bounded lists (at most top_n, re-cut after every frame) instead of heaps: the order needs a
        # tie-break on the id, which a heap of mixed-direction keys would make harder to read.
        self._outliers: list[Outlier] = []
        self._silent: list[Silent] = []

    def add(self, part: pd.DataFrame) -> None:
        """Fold one frame of part rows into the aggregates."""
        missing = [c for c in PART_COLUMNS if c not in part.columns]
        if missing:
            raise ValueError(f"part rows lack columns {missing}")
        if part.empty:
            return
        part = part.reset_index(drop=True)  # row look-ups below need a unique index
        battery = pd.Series(_floats(part["battery"], errors="coerce"))
        heartbeat_ms = _floats(part["last_hb_time"], errors="raise")
        frequency = pd.Series(_floats(part["frequency"], errors="raise"))
        if np.isnan(heartbeat_ms).any() or frequency.isna().any():
            raise ValueError("part rows always carry last_hb_time and frequency; some are empty")
        # float64 holds epoch milliseconds exactly (they stay far below 2**53).
        heartbeat = pd.Series(heartbeat_ms.astype(np.int64))
        self.labels += len(part)
        self._add_stores(part, battery, heartbeat, frequency)
        self._add_frequencies(frequency.to_numpy())
        self.chip_families.update(part["chip_family"].value_counts().to_dict())
        self.screen_sizes.update(part["screen_size"].value_counts().to_dict())
        self.firmwares.update(part["firmware"].value_counts().to_dict())
        self._add_outliers(part, frequency)
        self._add_silent(part, heartbeat)

    def _add_stores(
        self, part: pd.DataFrame, battery: pd.Series, heartbeat: pd.Series, frequency: pd.Series
    ) -> None:
        staged = pd.DataFrame(
            {
                "server": part["server"],
                "store": part["store"],
                "battery": battery,
                "day": heartbeat // DAY_MS,
                "frequency": frequency,
            }
        )
        for (server, store), group in staged.groupby(["server", "store"], sort=False):
            stats = self.stores.setdefault((str(server), str(store)), StoreStats())
            stats.labels += len(group)
            values = group["battery"].to_numpy()
            usable = ~np.isnan(values) & (values >= 0) & (values <= 100) & (values == np.floor(values))
            stats.battery += np.bincount(values[usable].astype(np.int64), minlength=BATTERY_SLOTS)
            stats.battery_missing += int((~usable).sum())
            stats.heartbeat_days.update(group["day"].value_counts().to_dict())
            stats.frequency_sum += float(group["frequency"].sum())

    def _add_frequencies(self, values: np.ndarray) -> None:
        zero = values <= 0
        self.frequency_zero += int(zero.sum())
        index = np.searchsorted(np.asarray(FREQUENCY_EDGES[1:], dtype=float), values[~zero], side="right")
        self.frequency_bins += np.bincount(index, minlength=len(FREQUENCY_EDGES))

    def _add_outliers(self, part: pd.DataFrame, frequency: pd.Series) -> None:
        # Only this frame's own top_n can enter the fleet's top_n: look at no more rows than that.
        for position in _top_positions(part, frequency, self.top_n, largest=True):
            row = part.loc[position]
            self._outliers.append(
                Outlier(
                    float(frequency[position]),
                    row["esl_id"],
                    row["server"],
                    row["store"],
                    row["refresh_times"],
                    row["battery"],
                    row["description"],
                )
            )
        self._outliers = sorted(self._outliers, key=_outlier_key)[: self.top_n]

    def _add_silent(self, part: pd.DataFrame, heartbeat: pd.Series) -> None:
        for position in _top_positions(part, heartbeat, self.top_n, largest=False):
            row = part.loc[position]
            self._silent.append(
                Silent(
                    int(heartbeat[position]),
                    row["esl_id"],
                    row["server"],
                    row["store"],
                    row["battery"],
                    row["description"],
                )
            )
        self._silent = sorted(self._silent, key=_silent_key)[: self.top_n]

    @property
    def outliers(self) -> list[Outlier]:
        """The ``top_n`` highest frequencies, highest first; ties by esl_id."""
        return list(self._outliers)

    @property
    def oldest_heartbeats(self) -> list[Silent]:
        """The ``top_n`` oldest last heartbeats, oldest first; ties by esl_id."""
        return list(self._silent)

    def battery_histogram(self) -> np.ndarray:
        """Fleet-wide labels per battery percent (index 0..100)."""
        total = np.zeros(BATTERY_SLOTS, dtype=np.int64)
        for stats in self.stores.values():
            total += stats.battery
        return total

    @property
    def battery_missing(self) -> int:
        return sum(s.battery_missing for s in self.stores.values())

    def heartbeat_days(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for stats in self.stores.values():
            total.update(stats.heartbeat_days)
        return total


def _floats(column: pd.Series, *, errors: Any) -> np.ndarray:
    """A string column as float64, empty (or, with ``errors="coerce"``, unreadable) cells as NaN."""
    values = pa.array(column, pa.string())
    try:
        # Arrow's cast is ~30x faster than pd.to_numeric on strings; it refuses anything unreadable.
        blanked = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        return pc.cast(blanked, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return pd.to_numeric(column, errors=errors).to_numpy(dtype="float64", na_value=np.nan)


def _outlier_key(o: Outlier) -> tuple[float, str, str, str]:
    return (-o.frequency, o.esl_id, o.server, o.store)


def _silent_key(s: Silent) -> tuple[int, str, str, str]:
    return (s.last_hb_ms, s.esl_id, s.server, s.store)


def _top_positions(part: pd.DataFrame, values: pd.Series, n: int, *, largest: bool) -> list[Any]:
    """Index labels of the n rows with the largest (smallest) values, ties broken by id.

    Never more than n rows, even when thousands tie (e.g. every young label has frequency 0.0).
    """
    if len(values) <= n:
        return list(values.index)
    edge = (values.nlargest(n) if largest else values.nsmallest(n)).iloc[-1]
    beyond = values > edge if largest else values < edge
    tied = part.loc[values == edge, ["esl_id", "server", "store"]].sort_values(["esl_id", "server", "store"])
    return [*values.index[beyond], *tied.index[: n - int(beyond.sum())]]
