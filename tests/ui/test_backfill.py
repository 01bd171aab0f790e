"""``airflow backfill create`` over three past dates: one folder per date, each with its own window.

The running scheduler of ``esl_airflow`` executes the backfill's runs; the simulated fleet's reference
day (today) is after the three dates. The servers report their *current* state, so each date keeps the
labels whose last heartbeat is at most 7 days before that date: the earlier the date, the more labels.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
from pathlib import Path

import pytest

from esl_operators.simulator import reference_ms_for
from tests.expected import expected_partition
from tests.support import DAY_MS
from tests.ui.stack import EslAirflow


def _ids(path: Path) -> set[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return {(row[2], row[0]) for row in rows}  # (server, esl_id)


@pytest.mark.services
@pytest.mark.timeout(600)
def test_backfill_of_three_past_dates_gives_three_windows(esl_airflow: EslAirflow) -> None:
    rest, stack, fleet = esl_airflow.rest, esl_airflow.stack, esl_airflow.fleet
    dates = [esl_airflow.reference_day - dt.timedelta(days=n) for n in (3, 2, 1)]
    known = {r["dag_run_id"] for r in rest.dag_runs("esl_export")}

    stack.home.airflow(
        "backfill",
        "create",
        "--dag-id",
        "esl_export",
        "--from-date",
        dates[0].isoformat(),
        "--to-date",
        dates[-1].isoformat(),
    )
    runs = [r for r in rest.dag_runs("esl_export", run_type="backfill") if r["dag_run_id"] not in known]
    assert sorted(r["logical_date"][:10] for r in runs) == [d.isoformat() for d in dates]  # @daily
    finished = stack.wait_for_runs(rest, "esl_export", [r["dag_run_id"] for r in runs], timeout=540)
    assert {run_id: r["state"] for run_id, r in finished.items()} == dict.fromkeys(finished, "success")

    kept: dict[dt.date, set[tuple[str, str]]] = {}
    cutoffs = []
    for day in dates:
        out = esl_airflow.output_root / day.isoformat()
        manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
        cutoff_ms = reference_ms_for(day) - 7 * DAY_MS
        cutoff_text = (day - dt.timedelta(days=7)).isoformat() + "T00:00:00Z"
        assert manifest["heartbeat_cutoff"] == cutoff_text
        cutoffs.append(manifest["heartbeat_cutoff"])
        kept[day] = set()
        for index, name in enumerate(esl_airflow.servers):  # servers_per_batch 1: one partition each
            part = out / f"esl_id_part_{index + 1}.csv"
            with part.open(encoding="utf-8", newline="") as handle:
                assert list(csv.reader(handle))[1:] == expected_partition(fleet, {index: name}, cutoff_ms)
            kept[day] |= _ids(part)
        assert (out / "_SUCCESS").exists()
    assert len(set(cutoffs)) == 3

    # The windows differ exactly as the data says: an earlier date also keeps the labels whose last
    # heartbeat lies between its cutoff and the later date's cutoff.
    heartbeats = {
        (name, d["esl_id"]): d["last_hb_time"]
        for index, name in enumerate(esl_airflow.servers)
        for store, details in fleet.servers[index].stores.items()
        if store != "default"
        for d in details
    }
    for earlier, later in itertools.pairwise(dates):
        extra = kept[earlier] - kept[later]
        assert kept[later] < kept[earlier] and extra
        low, high = reference_ms_for(earlier) - 7 * DAY_MS, reference_ms_for(later) - 7 * DAY_MS
        assert extra == {key for key, hb in heartbeats.items() if low <= hb < high}
