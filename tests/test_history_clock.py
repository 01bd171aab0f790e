"""Fleet history over 30 days of the simulator's clock (issue 14, section 6): for each day D the
standalone command runs against the simulator as of D, as that day's scheduled run would; every
``_changes.csv`` and ``_battery_forecast.csv`` must be the oracle's (``tests/expected_history.py``),
computed from the simulator's datasets of the published days alone.

Two days are never run (a gap: the day after compares with the last published day), and one is run
twice (a rerun leaves the other days' files as they were).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Mapping
from pathlib import Path

from esl_operators import cli
from esl_operators.simulator import Fleet, SimulatorThread, build_fleet
from tests.expected import expected_partition
from tests.expected_history import (
    Cells,
    Label,
    changes_file,
    expected_changes,
    expected_forecast,
    forecast_file,
)
from tests.support import DAY_MS, free_port

LAST = dt.date(2024, 5, 10)
DAYS = 30
NEVER_RUN = {LAST - dt.timedelta(days=17), LAST - dt.timedelta(days=16)}


def fleet_on(day: dt.date) -> Fleet:
    return build_fleet(servers=2, stores=5, esls=180, page_size=50, seed=21, as_of=day)


def two_free_ports() -> int:
    """A port p with p + 1 free as well: the servers keep their URLs (their names) from day to day."""
    for _ in range(50):
        base = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports on 127.0.0.1")


def run_day(day: dt.date, base_port: int, out: Path) -> tuple[list[str], dict[Label, Cells]]:
    """The command's run for ``day`` against the fleet as of ``day``; the labels it must publish."""
    fleet = fleet_on(day)
    with SimulatorThread(fleet, base_port=base_port) as sim:
        servers = [arg for url in sim.urls for arg in ("--server", url)]
        argv = ["fetch", *servers, "--date", day.isoformat(), "--out", str(out), "--servers-per-batch", "2"]
        assert cli.main(argv) == 0
        urls = list(sim.urls)
    rows = expected_partition(fleet, dict(enumerate(urls)), fleet.reference_ms - 7 * DAY_MS)
    return urls, {(r[2], r[0]): {"store": r[1], "battery": r[5], "firmware": r[10]} for r in rows}


def in_window(published: Mapping[str, Mapping[Label, Cells]], ds: str) -> dict[str, Mapping[Label, Cells]]:
    end = dt.date.fromisoformat(ds)
    return {d: v for d, v in published.items() if (end - dt.date.fromisoformat(d)).days <= 30}


def test_thirty_days_of_the_simulator_clock_give_the_oracles_history(tmp_path: Path) -> None:
    base = two_free_ports()
    published: dict[str, Mapping[Label, Cells]] = {}
    totals = dict.fromkeys(("new", "gone", "battery_drop", "moved", "firmware"), 0)
    forecast_rows = 0
    names: list[str] | None = None
    for k in range(DAYS):
        day = LAST - dt.timedelta(days=DAYS - 1 - k)
        if day in NEVER_RUN:
            continue
        ds = day.isoformat()
        urls, labels = run_day(day, base, tmp_path)
        assert names is None or urls == names  # the same servers every day
        names = urls
        manifest = json.loads((tmp_path / ds / "_manifest.json").read_text(encoding="utf-8"))
        if not published:
            assert manifest["history"]["previous_date"] is None
            assert not (tmp_path / ds / "_changes.csv").exists()
        else:
            previous = max(published)
            found = expected_changes(published[previous], labels, drop_points=10)
            assert manifest["history"] == {"previous_date": previous, **{k: len(v) for k, v in found.items()}}
            assert (tmp_path / ds / "_changes.csv").read_bytes() == changes_file(found), ds
            rows = expected_forecast(in_window({**published, ds: labels}, ds), ds, 10, 60)
            assert (tmp_path / ds / "_battery_forecast.csv").read_bytes() == forecast_file(rows), ds
            for kind, found_rows in found.items():
                totals[kind] += len(found_rows)
            forecast_rows += len(rows)
        published[ds] = labels
    after_gap = (max(NEVER_RUN) + dt.timedelta(days=1)).isoformat()
    previous = json.loads((tmp_path / after_gap / "_manifest.json").read_text())["history"]["previous_date"]
    assert previous == (min(NEVER_RUN) - dt.timedelta(days=1)).isoformat()
    assert min(totals.values()) > 0, totals  # every kind of change happened in the month
    assert forecast_rows > 0

    # A rerun of a day in the middle: its files are rewritten the same, the others' bytes untouched.
    middle = LAST - dt.timedelta(days=10)
    others = {
        p: p.read_bytes()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file() and p.parts[len(tmp_path.parts)] != middle.isoformat()
    }
    before = (tmp_path / middle.isoformat() / "_changes.csv").read_bytes()
    run_day(middle, base, tmp_path)
    assert (tmp_path / middle.isoformat() / "_changes.csv").read_bytes() == before
    assert {p: p.read_bytes() for p in others} == others
