"""Fleet history of a date: ``_changes.csv`` and ``_battery_forecast.csv`` from the published snapshots.

History comes only from what was published: the window is the dates before ds, at most
``history_days`` earlier, whose folders have ``_SUCCESS`` and ``_snapshot.parquet``
(:func:`esl_operators.storage.published_dates`); P, the date ``_changes.csv`` compares with, is the
latest of them, so gaps and backfills compare with the right date, and rerunning an old date never
touches a later date's files. Both files are staged into the date's publication
(:mod:`esl_operators.publish`) and are **optional**: with no P neither is written, and one left by an
earlier run of the date is removed when the new set is committed (``OPTIONAL_NAMES``). With a P both
are written, a header alone when nothing changed or nothing runs low.

Servers are taken one at a time, in name order (:mod:`esl_operators.changes`,
:mod:`esl_operators.forecast`): memory holds one server's labels of one date. Rows are written to
local scratch files per key (change kind, days left) as they come and joined in key order at the end,
which gives the files' order (key, then server, then esl_id) without holding them. Snapshots on object
storage are first copied to the same local scratch folder (a few bytes per label): Parquet is read at
random, which object stores do badly.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esl_operators.changes import CHANGES_COLUMNS, COMPARED, KINDS, server_changes
from esl_operators.csvformat import FORMULA_START, csv_lines, string_bytes
from esl_operators.forecast import FORECAST_COLUMNS, server_forecast
from esl_operators.manifest import History
from esl_operators.publish import Publication
from esl_operators.settings import setting
from esl_operators.snapshot import Snapshot
from esl_operators.storage import (
    CHANGES_NAME,
    FORECAST_NAME,
    SNAPSHOT_NAME,
    PathLike,
    published_dates,
    run_dir,
)

log = logging.getLogger(__name__)

_COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class HistorySettings:
    """The run settings of the history (rows of :data:`esl_operators.settings.SETTINGS`)."""

    history_days: int
    battery_drop_points: int
    battery_alert_pct: int
    forecast_horizon_days: int

    @classmethod
    def checked(cls, **values: Any) -> HistorySettings:
        """The settings from values of any entry point, each checked by its row of the table."""
        return cls(**{name: setting(name).parse(value) for name, value in values.items()})


class KeyedLines:
    """CSV lines gathered per integer key in local files, then written out in key order."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self.counts: dict[int, int] = {}

    def _file(self, key: int) -> Path:
        return self.folder / f"{self.name}-{key}.csv"

    def add(self, key: int, lines: pa.Array) -> None:
        if not len(lines):
            return
        with self._file(key).open("ab") as handle:
            handle.write(string_bytes(lines))
        self.counts[key] = self.counts.get(key, 0) + len(lines)

    def write(self, target: PathLike, header: Sequence[str]) -> None:
        with target.open("wb") as out:
            out.write((",".join(header) + "\n").encode("utf-8"))
            for key in sorted(self.counts):
                with self._file(key).open("rb") as part:
                    shutil.copyfileobj(part, out, _COPY_BYTES)


def _guard(rows: pa.Table, names: Sequence[str]) -> pa.Table:
    """``'`` before text cells a spreadsheet would run as formulas (setting ``spreadsheet_safe``)."""
    columns = []
    for name in rows.column_names:
        column = rows[name]
        if name in names:
            risky = pc.fill_null(pc.match_substring_regex(column, FORMULA_START), False)
            column = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    return pa.table(columns, names=rows.column_names)


def _lines(rows: pa.Table, guarded: Sequence[str]) -> pa.Array:
    """The CSV lines of ``rows``, each with its ``\\n``: the partitions' quoting rules."""
    if guarded:
        rows = _guard(rows, guarded)
    lines = pc.binary_join_element_wise(csv_lines(rows), "", "\n")
    return lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines


def _local(path: PathLike, folder: Path, name: str) -> Path:
    """``path`` itself when local; else a copy of it in ``folder``."""
    if isinstance(path, Path):
        return path
    copy = folder / f"snapshot-{name}.parquet"
    remote: Any = path
    with remote.open("rb") as source, copy.open("wb") as target:
        shutil.copyfileobj(source, target, _COPY_BYTES)
    return copy


def history_block(previous: str | None, counts: dict[str, int]) -> History:
    """The manifest's ``history`` block: P (or None) and the rows of each change kind."""
    return {
        "previous_date": previous,
        "new": counts.get("new", 0),
        "gone": counts.get("gone", 0),
        "battery_drop": counts.get("battery_drop", 0),
        "moved": counts.get("moved", 0),
        "firmware": counts.get("firmware", 0),
    }


def publish_history(
    publication: Publication,
    *,
    output_root: PathLike,
    ds: str,
    settings: HistorySettings,
    spreadsheet_safe: bool,
) -> History:
    """Stage ``_changes.csv`` and ``_battery_forecast.csv`` of ``ds`` (its snapshot already staged);
    return the manifest's ``history`` block. ``spreadsheet_safe``: guard the server texts as the
    partitions are guarded."""
    dates = published_dates(output_root, ds, settings.history_days)
    if not dates:
        log.info("history: no published date in the %d days before %s", settings.history_days, ds)
        return history_block(None, {})
    started = time.monotonic()
    previous, today = dates[-1], date.fromisoformat(ds)
    columns = list(COMPARED)
    with tempfile.TemporaryDirectory(prefix="esl-history-") as scratch, contextlib.ExitStack() as stack:
        folder = Path(scratch)

        def open_snapshot(path: PathLike, name: str) -> Snapshot:
            snapshot = Snapshot(_local(path, folder, name), f"{name}/{SNAPSHOT_NAME}", columns)
            stack.callback(snapshot.close)
            return snapshot

        current = open_snapshot(publication.path(SNAPSHOT_NAME), ds)
        earlier = {d: open_snapshot(run_dir(output_root, d) / SNAPSHOT_NAME, d) for d in dates}
        offsets = {d: -(today - date.fromisoformat(d)).days for d in dates}
        changes, forecast = KeyedLines(folder, "changes"), KeyedLines(folder, "forecast")
        change_guard = ("esl_id", "store", "previous", "current") if spreadsheet_safe else ()
        forecast_guard = ("esl_id", "store") if spreadsheet_safe else ()
        for server in sorted(current.servers() | earlier[previous].servers()):
            now = current.rows(server)
            now = now.take(pc.sort_indices(now["esl_id"]))  # the forecast's order within the server
            before = earlier[previous].rows(server)
            found = server_changes(server, before, now, settings.battery_drop_points)
            for key, kind in enumerate(KINDS):
                changes.add(key, _lines(found[kind], change_guard))
            if not now.num_rows:
                continue
            rows, days_left = server_forecast(
                server,
                now.select(["esl_id", "store", "battery"]),
                ((offsets[d], before if d == previous else earlier[d].rows(server)) for d in dates),
                ds=today,
                alert_pct=settings.battery_alert_pct,
                horizon_days=settings.forecast_horizon_days,
            )
            values, starts, sizes = np.unique(days_left, return_index=True, return_counts=True)
            for value, start, size in zip(values.tolist(), starts.tolist(), sizes.tolist(), strict=True):
                forecast.add(value, _lines(rows.slice(start, size), forecast_guard))
        changes.write(publication.path(CHANGES_NAME), CHANGES_COLUMNS)
        forecast.write(publication.path(FORECAST_NAME), FORECAST_COLUMNS)
    counts = {kind: changes.counts.get(key, 0) for key, kind in enumerate(KINDS)}
    log.info(
        "history since %s: %s; %d labels in the battery forecast (%.1f s)",
        previous,
        ", ".join(f"{kind} {count}" for kind, count in counts.items()),
        sum(forecast.counts.values()),
        time.monotonic() - started,
    )
    return history_block(previous, counts)
