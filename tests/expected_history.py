"""An independent oracle of the fleet history: ``_changes.csv`` and ``_battery_forecast.csv`` rows
computed in plain Python from the labels each date published (the tests' own data, never the files).

Written without the package's history code: dictionaries and sorted lists for the changes, exact
fractions (the textbook centred least-squares formulas) for the forecast, the csv module for the file.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from fractions import Fraction

Label = tuple[str, str]  # (server, esl_id)
Cells = Mapping[str, str]  # a published label: part column -> text ("" when empty)

CHANGES_HEADER = ["change", "esl_id", "server", "store", "previous", "current"]
FORECAST_HEADER = [
    "esl_id",
    "server",
    "store",
    "battery",
    "slope_per_day",
    "days_left",
    "forecast_date",
    "observations",
]
KINDS = ["new", "gone", "battery_drop", "moved", "firmware"]
_FORMULA = re.compile(r"[=+\-@\t\r]")


def guard(text: str) -> str:
    """What spreadsheet safety makes of a server text."""
    return "'" + text if _FORMULA.match(text) else text


def expected_changes(
    previous: Mapping[Label, Cells], current: Mapping[Label, Cells], drop_points: int
) -> dict[str, list[list[str]]]:
    """Per kind, the rows in file order (server, then esl_id)."""
    found: dict[str, list[list[str]]] = {kind: [] for kind in KINDS}
    for server, esl_id in sorted(set(previous) | set(current)):
        p, c = previous.get((server, esl_id)), current.get((server, esl_id))
        if p is None:
            assert c is not None
            found["new"].append(["new", esl_id, server, c["store"], "", ""])
            continue
        if c is None:
            found["gone"].append(["gone", esl_id, server, p["store"], "", ""])
            continue
        if p["battery"] and c["battery"] and int(p["battery"]) - int(c["battery"]) >= drop_points:
            found["battery_drop"].append(
                ["battery_drop", esl_id, server, c["store"], p["battery"], c["battery"]]
            )
        if p["store"] != c["store"]:
            found["moved"].append(["moved", esl_id, server, c["store"], p["store"], c["store"]])
        if p["firmware"] != c["firmware"]:
            found["firmware"].append(["firmware", esl_id, server, c["store"], p["firmware"], c["firmware"]])
    return found


def changes_file(found: Mapping[str, list[list[str]]], guarded: bool = False) -> bytes:
    rows = [row for kind in KINDS for row in found[kind]]
    if guarded:
        rows = [[r[0], guard(r[1]), r[2], guard(r[3]), guard(r[4]), guard(r[5])] for r in rows]
    return csv_bytes([CHANGES_HEADER, *rows])


def fit(points: Sequence[tuple[int, int]]) -> tuple[Fraction, Fraction]:
    """(a, b) of battery = a + b*t by least squares, exactly: b = Sxy / Sxx, a = mean(y) - b * mean(t)."""
    n = len(points)
    t_mean = Fraction(sum(t for t, _ in points), n)
    y_mean = Fraction(sum(y for _, y in points), n)
    sxx = sum((t - t_mean) ** 2 for t, _ in points)
    sxy = sum((t - t_mean) * (y - y_mean) for t, y in points)
    b = sxy / sxx
    return y_mean - b * t_mean, b


def expected_forecast(
    dates: Mapping[str, Mapping[Label, Cells]], ds: str, alert_pct: int, horizon_days: int
) -> list[list[str]]:
    """``dates``: the labels of every published date of the window, ds included."""
    today = date.fromisoformat(ds)
    rows = []
    for (server, esl_id), cells in dates[ds].items():
        points = [
            ((date.fromisoformat(d) - today).days, int(labels[(server, esl_id)]["battery"]))
            for d, labels in dates.items()
            if (server, esl_id) in labels and labels[(server, esl_id)]["battery"]
        ]
        if len(points) < 4:
            continue
        exact_a, exact_b = fit(points)
        a, b = float(exact_a), float(exact_b)  # float64, rounded once from the exact solution
        if not b < 0:
            continue
        days = 0 if a <= alert_pct else math.floor((a - alert_pct) / -b)
        if days > horizon_days:
            continue
        when = (today + timedelta(days=days)).isoformat()
        rows.append(
            [esl_id, server, cells["store"], cells["battery"], repr(b), str(days), when, str(len(points))]
        )
    return sorted(rows, key=lambda r: (int(r[5]), r[1], r[0]))


def forecast_file(rows: list[list[str]], guarded: bool = False) -> bytes:
    if guarded:
        rows = [[guard(r[0]), r[1], guard(r[2]), *r[3:]] for r in rows]
    return csv_bytes([FORECAST_HEADER, *rows])


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")
