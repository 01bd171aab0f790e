"""Streaming fleet statistics: Arrow chunks of part rows in, small aggregates kept, rows never kept.

The aggregate task hands :class:`FleetStats` each chunk of part rows once (a ``pyarrow.Table`` or
``RecordBatch`` of string columns, ``PART_COLUMNS``, of any size); it keeps only what the report
needs: per-store battery counts (one slot per percent), per-store counts of heartbeats per UTC
calendar day, fleet-wide counters, and two top-N lists cut back to N after every chunk. Memory grows
with the number of stores and days in the window, never with the number of labels, and the result
does not depend on how the rows were cut into chunks. Computed with pyarrow.compute and numpy; no
pandas on this path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esl_operators.records import DAY_MS, PART_COLUMNS

# Refreshes per day: "1-2-5" edges read well on a log-like axis and fit any fleet without a first pass.
FREQUENCY_EDGES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
TOP_N = 15
BATTERY_SLOTS = 101  # 0..100 percent
# Plain decimal numbers (what a spreadsheet would read), for cells Arrow's strict cast refuses.
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_KEYS = ("esl_id", "server", "store")  # tie-break of both top-N lists, after their value

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
    """Accumulates chunks of part rows (``PART_COLUMNS``, all strings) into report-sized aggregates."""

    def __init__(self, top_n: int = TOP_N) -> None:
        self.top_n = top_n
        self.labels = 0
        self.stores: dict[StoreKey, StoreStats] = {}
        self.frequency_zero = 0  # 0.0 means "younger than a whole day, or no refresh data"
        self.frequency_bins = np.zeros(len(FREQUENCY_EDGES), dtype=np.int64)  # [edge_i, edge_i+1)
        self.chip_families: Counter[str] = Counter()
        self.screen_sizes: Counter[str] = Counter()
        self.firmwares: Counter[str] = Counter()
        # Bounded lists (at most top_n, re-cut after every chunk) instead of heaps: the order needs a
        # tie-break on the id, which a heap of mixed-direction keys would make harder to read.
        self._outliers: list[Outlier] = []
        self._silent: list[Silent] = []

    def add(self, part: pa.Table | pa.RecordBatch | Any) -> None:
        """Fold one chunk of part rows into the aggregates.

        :param part: a ``pyarrow.Table`` or ``RecordBatch``; anything else that speaks the Arrow
            stream protocol (``__arrow_c_stream__``, e.g. a pandas or polars frame) is read as a table.
        """
        table = _as_table(part)
        missing = [c for c in PART_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"part rows lack columns {missing}")
        if table.num_rows == 0:
            return
        for name in _KEYS:
            if table[name].null_count:
                raise ValueError(f"part rows always carry {name}; {table[name].null_count} are null")
        battery = _floats(table["battery"], "battery", coerce=True)
        heartbeat_ms = _floats(table["last_hb_time"], "last_hb_time", coerce=False)
        frequency = _floats(table["frequency"], "frequency", coerce=False)
        if np.isnan(heartbeat_ms).any() or np.isnan(frequency).any():
            raise ValueError("part rows always carry last_hb_time and frequency; some are empty")
        # float64 holds epoch milliseconds exactly (they stay far below 2**53).
        heartbeat = heartbeat_ms.astype(np.int64)
        self.labels += table.num_rows
        self._add_stores(table, battery, heartbeat, frequency)
        self._add_frequencies(frequency)
        for counter, name in (
            (self.chip_families, "chip_family"),
            (self.screen_sizes, "screen_size"),
            (self.firmwares, "firmware"),
        ):
            counter.update(_value_counts(table[name]))
        self._add_outliers(table, frequency)
        self._add_silent(table, heartbeat)

    def _add_stores(
        self, table: pa.Table, battery: np.ndarray, heartbeat: np.ndarray, frequency: np.ndarray
    ) -> None:
        keys, group = _store_groups(table)
        count = len(keys)
        labels = np.bincount(group, minlength=count)
        usable = ~np.isnan(battery) & (battery >= 0) & (battery <= 100) & (battery == np.floor(battery))
        slots = group[usable] * BATTERY_SLOTS + battery[usable].astype(np.int64)
        batteries = np.bincount(slots, minlength=count * BATTERY_SLOTS).reshape(count, BATTERY_SLOTS)
        missing = np.bincount(group[~usable], minlength=count)
        sums = np.bincount(group, weights=frequency, minlength=count)
        day = heartbeat // DAY_MS
        first_day = int(day.min())
        span = int(day.max()) - first_day + 1
        pairs, pair_counts = np.unique(group * span + (day - first_day), return_counts=True)
        days: list[dict[int, int]] = [{} for _ in keys]
        for pair, n in zip(pairs.tolist(), pair_counts.tolist(), strict=True):
            days[pair // span][pair % span + first_day] = n
        for index, key in enumerate(keys):
            stats = self.stores.setdefault(key, StoreStats())
            stats.labels += int(labels[index])
            stats.battery += batteries[index]
            stats.battery_missing += int(missing[index])
            stats.heartbeat_days.update(days[index])
            stats.frequency_sum += float(sums[index])

    def _add_frequencies(self, values: np.ndarray) -> None:
        zero = values <= 0
        self.frequency_zero += int(zero.sum())
        index = np.searchsorted(np.asarray(FREQUENCY_EDGES[1:], dtype=float), values[~zero], side="right")
        self.frequency_bins += np.bincount(index, minlength=len(FREQUENCY_EDGES))

    def _add_outliers(self, table: pa.Table, frequency: np.ndarray) -> None:
        # Only this chunk's own top_n can enter the fleet's top_n: look at no more rows than that.
        for value, row in _top_rows(table, frequency, self.top_n, "descending"):
            self._outliers.append(
                Outlier(
                    float(value),
                    row["esl_id"],
                    row["server"],
                    row["store"],
                    row["refresh_times"],
                    row["battery"],
                    row["description"],
                )
            )
        self._outliers = sorted(self._outliers, key=_outlier_key)[: self.top_n]

    def _add_silent(self, table: pa.Table, heartbeat: np.ndarray) -> None:
        for value, row in _top_rows(table, heartbeat, self.top_n, "ascending"):
            self._silent.append(
                Silent(
                    int(value), row["esl_id"], row["server"], row["store"], row["battery"], row["description"]
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


def _as_table(part: Any) -> pa.Table:
    if isinstance(part, pa.Table):
        return part
    if isinstance(part, pa.RecordBatch):
        return pa.Table.from_batches([part])
    if hasattr(part, "__arrow_c_stream__"):
        return pa.table(part)
    raise TypeError(f"part rows must be a pyarrow Table or RecordBatch, got {type(part).__name__}")


def _floats(column: pa.ChunkedArray, name: str, *, coerce: bool) -> np.ndarray:
    """A string column as float64, empty cells (and, with ``coerce``, unreadable ones) as NaN."""
    nothing = pa.scalar(None, column.type)
    blanked = pc.if_else(pc.equal(column, ""), nothing, column)
    try:
        return np.asarray(pc.cast(blanked, pa.float64()).to_numpy(), dtype=np.float64)
    except pa.ArrowInvalid as exc:
        if not coerce:
            raise ValueError(f"part rows hold a {name} that is not a number: {exc}") from None
    trimmed = pc.utf8_trim_whitespace(blanked)
    readable = pc.if_else(pc.match_substring_regex(trimmed, _NUMBER), trimmed, nothing)
    return np.asarray(pc.cast(readable, pa.float64()).to_numpy(), dtype=np.float64)


def _store_groups(table: pa.Table) -> tuple[list[StoreKey], np.ndarray]:
    """The (server, store) pairs in order of first appearance, and each row's index into them."""
    servers = pc.unique(table["server"])
    stores = pc.unique(table["store"])
    server_codes = pc.index_in(table["server"], value_set=servers).to_numpy().astype(np.int64)
    store_codes = pc.index_in(table["store"], value_set=stores).to_numpy().astype(np.int64)
    pairs, first, inverse = np.unique(
        server_codes * len(stores) + store_codes, return_index=True, return_inverse=True
    )
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    server_names, store_names = servers.to_pylist(), stores.to_pylist()
    keys = [(server_names[p // len(stores)], store_names[p % len(stores)]) for p in pairs[order].tolist()]
    return keys, rank[inverse.reshape(-1)]


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column)
    values, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    return {v: n for v, n in zip(values, numbers, strict=True) if v is not None}


def _top_rows(table: pa.Table, values: np.ndarray, n: int, order: str) -> list[tuple[Any, dict[str, Any]]]:
    """The n rows with the largest (``descending``) or smallest values, ties broken by id, store.

    Never more than n rows, even when thousands tie (e.g. every young label has frequency 0.0).
    """
    if n <= 0:
        return []
    ranked = pa.table({"value": values, **{k: table[k] for k in _KEYS}})
    keys = [("value", order), *((k, "ascending") for k in _KEYS)]
    positions = pc.select_k_unstable(ranked, min(n, table.num_rows), sort_keys=keys)
    return list(zip(values[positions.to_numpy()].tolist(), table.take(positions).to_pylist(), strict=True))


def _outlier_key(o: Outlier) -> tuple[float, str, str, str]:
    return (-o.frequency, o.esl_id, o.server, o.store)


def _silent_key(s: Silent) -> tuple[int, str, str, str]:
    return (s.last_hb_ms, s.esl_id, s.server, s.store)
