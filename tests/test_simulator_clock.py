"""The simulator's clock (``build_fleet(..., as_of=D)``, ``--as-of``): a fleet that changes day by day."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest

from esl_operators import cli
from esl_operators.simulator import DEFAULT_STORE, Fleet, SimulatorThread, build_fleet, reference_ms_for
from tests.expected import expected_partition
from tests.support import DAY_MS, REPO, csv_rows, get_json, ok_data, simulator_cli
from tests.test_simulator import DETAIL_KEYS, fleet_digest

START = dt.date(2026, 10, 20)
DAYS = 30
#: (server index, esl_id) -> (store, detail) of the labels a fleet lists (the default store left out).
Labels = dict[tuple[int, str], tuple[str, dict[str, object]]]


def fleet_on(day: dt.date, seed: int = 7) -> Fleet:
    return build_fleet(servers=2, stores=6, esls=230, page_size=50, seed=seed, as_of=day)


def labels(fleet: Fleet) -> Labels:
    return {
        (s.index, esl["esl_id"]): (code, esl)
        for s in fleet.servers
        for code, esls in s.real_stores.items()
        for esl in esls
    }


def in_window(fleet: Fleet) -> set[tuple[int, str]]:
    cutoff = fleet.reference_ms - 7 * DAY_MS
    return {key for key, (_, esl) in labels(fleet).items() if int(str(esl["last_hb_time"])) >= cutoff}


@pytest.fixture(scope="module")
def month() -> list[Fleet]:
    return [fleet_on(START + dt.timedelta(days=k)) for k in range(DAYS)]


def test_same_day_same_fleet_in_any_interpreter(month: list[Fleet]) -> None:
    assert fleet_on(START) == month[0]
    assert fleet_on(START, seed=8) != month[0]
    assert month[1] != month[0]
    assert (month[0].as_of, month[0].reference_ms) == (START, reference_ms_for(START))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tests.test_simulator_clock as c; "
        "print(c.fleet_digest(c.fleet_on(c.START)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO)],
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == fleet_digest(month[0])


def test_reference_and_as_of_must_agree() -> None:
    with pytest.raises(ValueError, match="reference_ms must be midnight UTC of as_of"):
        build_fleet(servers=1, stores=2, esls=5, as_of=START, reference_ms=reference_ms_for(START) + 1)
    with pytest.raises(ValueError, match=r"give reference_ms \(a static fleet\) or as_of"):
        build_fleet(servers=1, stores=2, esls=5)
    same = build_fleet(servers=1, stores=2, esls=5, as_of=START, reference_ms=reference_ms_for(START))
    assert same == build_fleet(servers=1, stores=2, esls=5, as_of=START)


def test_heartbeats_are_relative_to_the_day(month: list[Fleet]) -> None:
    for fleet in month:
        now = fleet.reference_ms
        for server in fleet.servers:
            assert [u["user"] for u in server.users] == list(server.stores)
            assert len(server.stores[DEFAULT_STORE]) == 3
            hbs = Counter()
            for code, esls in server.real_stores.items():
                for esl in esls:
                    assert esl["user"] == code and set(esl) - {"temperature"} == DETAIL_KEYS
                    assert esl["create_time"] <= esl["last_hb_time"] <= now + DAY_MS
                    assert 0 <= int(esl["battery"]) <= 100
                    hbs[esl["last_hb_time"]] += 1
            # One label exactly on the 7-day boundary of that day, one 1 ms past it.
            assert hbs[now - 7 * DAY_MS] == 1 and hbs[now - 7 * DAY_MS - 1] == 1
            # Most labels heartbeat within the day before; some are long silent; a few are ahead.
            recent = sum(n for hb, n in hbs.items() if now - DAY_MS < hb <= now + DAY_MS)
            stale = sum(n for hb, n in hbs.items() if hb < now - 7 * DAY_MS)
            total = sum(hbs.values())
            assert 0.6 < recent / total < 0.85 and 0.15 < stale / total < 0.35
            assert any(hb > now for hb in hbs)
        ids = [key for key in labels(fleet)]
        assert len(ids) == len(set(ids))


def test_batteries_drain_at_their_own_rate(month: list[Fleet]) -> None:
    days = [labels(f) for f in month]
    fast: set[tuple[int, str]] = set()
    drained: set[tuple[int, str]] = set()
    for before, after in itertools.pairwise(days):
        for key in before.keys() & after.keys():
            old, new = int(str(before[key][1]["battery"])), int(str(after[key][1]["battery"]))
            # Monotone, except when an empty battery is replaced by a full one.
            assert new <= old or (old <= 15 and new >= 85), (key, old, new)
            if old - new >= 10:
                fast.add(key)
            if new < old:
                drained.add(key)
    common = set.intersection(*(set(d) for d in days))
    assert 4 <= len(fast) <= 0.05 * len(common)
    # Every label heard from every day, its battery not yet empty, drained (the slowest lose 1.45 points).
    heard = {
        key
        for key in common
        if all(int(str(d[key][1]["battery"])) >= 2 for d in days)
        and len({d[key][1]["last_hb_time"] for d in days}) == DAYS
    }
    assert heard and heard <= drained


def test_labels_go_silent_come_back_are_added_removed_and_moved(month: list[Fleet]) -> None:
    days = [labels(f) for f in month]
    windows = [in_window(f) for f in month]
    gone_silent = back = 0
    added: set[tuple[int, str]] = set()
    removed: set[tuple[int, str]] = set()
    moves = 0
    for k in range(1, DAYS):
        left = windows[k - 1] - windows[k]
        # Silent: still listed by the server, but its heartbeat stopped moving.
        silent = {key for key in left if key in days[k]}
        for key in silent:
            assert days[k][key][1]["last_hb_time"] == days[k - 1][key][1]["last_hb_time"]
        gone_silent += len(silent)
        back += len({key for key in windows[k] - windows[k - 1] if key in days[k - 1]})
        added |= days[k].keys() - days[k - 1].keys()
        removed |= days[k - 1].keys() - days[k].keys()
        moves += sum(
            1 for key in days[k].keys() & days[k - 1].keys() if days[k][key][0] != days[k - 1][key][0]
        )
    assert gone_silent >= 10 and back >= 10
    assert len(added) >= 5 and len(removed) >= 5
    assert not added & set(days[0])  # new labels get new ids
    assert moves >= 5


def test_one_store_gets_a_firmware_upgrade_on_a_day(month: list[Fleet]) -> None:
    upgrades = []
    for k in range(1, DAYS):
        for server in month[k].servers:
            for code, esls in server.real_stores.items():
                versions = {esl["firmware"] for esl in esls}
                before = {esl["firmware"] for esl in month[k - 1].servers[server.index].stores[code]}
                if len(versions) == 1 and versions != before:
                    upgrades.append((month[k].as_of, server.index, code, versions.pop()))
    # Every 10 days one store of the fleet (days 2490, 2500 and 2510 from the clock's epoch), all its
    # labels at once; the rest of the fleet keeps its firmware.
    assert upgrades == [
        (dt.date(2026, 10, 26), 1, "S0006", "7.0.249"),
        (dt.date(2026, 11, 5), 0, "S0006", "7.0.250"),
        (dt.date(2026, 11, 15), 0, "50%off", "7.0.251"),
    ]
    before, after = labels(month[9]), labels(month[10])  # 2026-10-29 -> 2026-10-30: no upgrade
    assert all(
        after[k][1]["firmware"] == before[k][1]["firmware"]
        for k in after.keys() & before.keys()
        if after[k][0] == before[k][0]
    )


def test_a_run_for_a_date_sees_the_fleet_of_that_date(tmp_path: Path) -> None:
    day = START + dt.timedelta(days=3)
    fleet = build_fleet(servers=1, stores=4, esls=60, page_size=10, seed=5, as_of=day)
    with SimulatorThread(fleet) as sim:
        code = cli.main(["fetch", "--server", sim.urls[0], "--date", day.isoformat(), "--out", str(tmp_path)])
    assert code == 0
    published = csv_rows(tmp_path / day.isoformat() / "esl_id_part_1.csv")[1:]
    expected = expected_partition(fleet, {0: sim.urls[0]}, fleet.reference_ms - 7 * DAY_MS)
    assert published == expected and len(expected) > 30
    manifest = json.loads((tmp_path / day.isoformat() / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["stale_labels"] == sum(len(e) for e in fleet.servers[0].real_stores.values()) - len(
        expected
    )


def test_cli_as_of() -> None:
    args = ["--servers", "1", "--base-port", "0", "--stores", "3", "--esls", "20", "--seed", "4"]
    with simulator_cli([*args, "--as-of", "2026-11-05"], 1) as (_, lines):
        url = lines[0].split(" listening on ")[1]
        [server] = build_fleet(servers=1, stores=3, esls=20, seed=4, as_of=dt.date(2026, 11, 5)).servers
        status, body, _ = get_json(f"{url}/api3/users")
        assert status == 200 and ok_data(server, body) == server.users
        store = next(code for code, esls in server.real_stores.items() if esls)
        status, body, _ = get_json(f"{url}/api3/{quote(store, safe='')}/esls/page/1")
        assert [e["esl_id"] for e in ok_data(server, body)["esls"]] == [
            e["esl_id"] for e in server.stores[store]
        ]
        first = server.stores[store][0]
        status, body, _ = get_json(f"{url}/api3/esls/{first['esl_id']}")
        assert status == 200 and ok_data(server, body) == first
    both = subprocess.run(
        [
            sys.executable,
            "-m",
            "esl_operators.simulator",
            "--as-of",
            "2026-11-05",
            "--reference-date",
            "2026-11-05",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (
        both.returncode == 2 and "argument --reference-date: not allowed with argument --as-of" in both.stderr
    )
    bad = subprocess.run(
        [sys.executable, "-m", "esl_operators.simulator", "--as-of", "2026-13-01"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "expected a date as YYYY-MM-DD, got '2026-13-01'" in bad.stderr
