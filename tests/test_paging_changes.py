"""A store that changes while it is paged (issue 12, item 1): the walk follows every page's
``total_page``, so a store that grows onto one more page loses no label, one that shrinks ends where
the server now says, and growth past ``max_pages`` is a named store error.

The simulator changes every store right after its page 1 is served (``FaultProfile.grow_*``); the
expected CSVs come from the independent oracle (``tests/expected.py``: ``labels_read`` says what a
correct client reads, ``expected_row`` what it publishes), never from the package's own code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from esl_operators.aggregate import aggregate_run
from esl_operators.batch import run_batch
from esl_operators.client import ServerTarget
from esl_operators.engine import FetchSettings
from esl_operators.simulator import FaultProfile, Fleet, SimulatorThread, build_fleet, grown_store
from tests.expected import expected_row, labels_read, pages_of
from tests.support import ANCHOR, ANCHOR_MS, DAY_MS, DS, csv_rows, fast_transport

pytestmark = [pytest.mark.timeout(120)]

NAMES = ["esl_0", "esl_1"]
PAGE = 50
# A 30-day window: every label of the fleet is inside it, so each one the walk reads is published.
CUTOFF = ANCHOR_MS - 30 * DAY_MS


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    """Server 0: 'Store 12' 100 labels (exactly 2 pages), '上海.001' 155 (4 pages), '50%off' 45 (1 page),
    'S0004' empty. Server 1: 'Store 12' 100, '50%off' 107 (3 pages), '上海.001' 93 (2 pages), 'S0004' empty.
    """
    built = build_fleet(servers=2, stores=4, esls=300, page_size=PAGE, seed=1, reference_ms=ANCHOR_MS)
    sizes = [{code: len(labels) for code, labels in s.real_stores.items()} for s in built.servers]
    assert sizes == [
        {"S0004": 0, "Store 12": 100, "50%off": 45, "上海.001": 155},
        {"上海.001": 93, "S0004": 0, "50%off": 107, "Store 12": 100},
    ]
    return built


def export(sim: SimulatorThread, root: Path, *, max_pages: int = 10_000) -> dict[str, Any]:
    """Both batches (one server each) and the aggregate step, as the DAG runs them (skip semantics)."""
    settings = FetchSettings(
        cutoff_ms=CUTOFF, max_pages=max_pages, transport=fast_transport(3), progress_interval_s=60
    )
    manifests = [
        run_batch(
            [ServerTarget(name=name, base_url=sim.urls[i])],
            settings,
            output_root=root,
            ds=DS,
            batch=i,
            anchor=ANCHOR,
            max_threads=1,
        )
        for i, name in enumerate(NAMES)
    ]
    aggregate_run(manifests, output_root=root, ds=DS)
    manifest: dict[str, Any] = json.loads((root / DS / "_manifest.json").read_text(encoding="utf-8"))
    return manifest


class Oracle:
    """What a correct export of ``fleet`` publishes when every store changes per ``profile``."""

    def __init__(self, fleet: Fleet, profile: FaultProfile, max_pages: int = 10_000) -> None:
        assert profile.grow_after_page == 1  # see ``removed`` below
        self.rows: dict[int, list[list[str]]] = {}
        self.pages: dict[tuple[str, str], tuple[int, int]] = {}  # (first announced, walked)
        self.requests = 0
        self.duplicates = 0
        self.removed = 0
        self.failed: list[tuple[str, str]] = []
        for index, server in enumerate(fleet.servers):
            rows = []
            for store, before in server.real_stores.items():
                after = grown_store(profile, server, store)
                read, requested = labels_read(before, after, PAGE, profile.grow_after_page)
                self.requests += requested
                last = before if requested <= profile.grow_after_page else after
                walked = requested if requested <= pages_of(last, PAGE) else requested - 1
                self.pages[(NAMES[index], store)] = (pages_of(before, PAGE), walked)
                if pages_of(last, PAGE) > max_pages:
                    self.failed.append((NAMES[index], store))
                    continue
                # A label listed but removed answers 404: the change comes right after page 1, before
                # any detail is asked for, so every removed label that was read counts as removed.
                there = {d["esl_id"] for d in after}
                self.removed += sum(d["esl_id"] not in there for d in read)
                read = [d for d in read if d["esl_id"] in there]
                ids = [d["esl_id"] for d in read]
                self.duplicates += len(ids) - len(set(ids))
                unique = {d["esl_id"]: d for d in read}.values()
                rows += [expected_row(d, store, NAMES[index]) for d in unique if d["last_hb_time"] >= CUTOFF]
            self.rows[index] = sorted(rows, key=lambda r: (float(r[17]), r[0], r[2], r[1]))


def published(root: Path) -> dict[int, list[list[str]]]:
    return {i: csv_rows(root / DS / f"esl_id_part_{i + 1}.csv")[1:] for i in range(len(NAMES))}


def ids_of(rows: list[list[str]], store: str) -> list[str]:
    return [r[0] for r in rows if r[1] == store]


def pages_in(manifest: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (name, store): (info["pages_announced_first"], info["pages_walked"])
        for name, server in manifest["servers"].items()
        for store, info in server["stores"].items()
    }


def test_one_label_appended_onto_a_new_page_is_published(fleet: Fleet, tmp_path: Path) -> None:
    profile = FaultProfile(grow_while_paged=1, grow_at="end")
    oracle = Oracle(fleet, profile)
    with SimulatorThread(fleet, faults=profile) as sim:
        manifest = export(sim, tmp_path)
        pages_requested = sum(s.pages for s in sim.stats)
    rows = published(tmp_path)
    assert rows == oracle.rows
    assert manifest["errors"] == [] and manifest["duplicates_dropped"] == 0 == oracle.duplicates
    assert pages_requested == oracle.requests
    # 'Store 12' had exactly 2 full pages: its new label is alone on page 3, which page 1 never
    # announced. It is published (the walk believed page 2's total_page of 3).
    for index, server in enumerate(fleet.servers):
        old = [d["esl_id"] for d in server.stores["Store 12"]]
        new = grown_store(profile, server, "Store 12")[-1]["esl_id"]
        assert new not in old and new.endswith("-0001")
        assert sorted(ids_of(rows[index], "Store 12")) == sorted([*old, new])
    # '50%off' on server 0 had one page: its new label landed on page 1, already read, so it waits
    # for the next run; on '上海.001' (4 pages) it landed on the last page, read after the change.
    assert len(ids_of(rows[0], "50%off")) == 45 and len(ids_of(rows[0], "上海.001")) == 156
    assert pages_in(manifest) == oracle.pages
    assert oracle.pages[("esl_0", "Store 12")] == (2, 3) and oracle.pages[("esl_0", "50%off")] == (1, 1)
    assert oracle.pages[("esl_0", "S0004")] == (0, 0)


@pytest.mark.parametrize("added", [1, PAGE], ids=["one label", "a whole page"])
def test_labels_inserted_at_the_front_lose_no_old_label_and_count_the_repeats(
    added: int, fleet: Fleet, tmp_path: Path
) -> None:
    """Inserted at the front after page 1: every later label moves ``added`` positions on. The last
    ``added`` labels of page 1 are served again at the start of page 2 (duplicates: dropped and
    counted, never published twice), the last ``added`` labels of the last page are pushed onto a
    page page 1 never announced (read), and the inserted labels sit on page 1, already read (they
    are the next run's)."""
    profile = FaultProfile(grow_while_paged=added, grow_at="front")
    oracle = Oracle(fleet, profile)
    with SimulatorThread(fleet, faults=profile) as sim:
        manifest = export(sim, tmp_path)
    rows = published(tmp_path)
    assert rows == oracle.rows
    assert manifest["errors"] == []
    for index, server in enumerate(fleet.servers):
        for store, labels in server.real_stores.items():
            # Exactly the labels the store had when page 1 was read, each once.
            assert sorted(ids_of(rows[index], store)) == sorted(d["esl_id"] for d in labels), store
    pushed = fleet.servers[0].stores["Store 12"][-1]["esl_id"]  # from page 2 onto page 3
    assert ids_of(rows[0], "Store 12").count(pushed) == 1
    # ``added`` repeats in every store of 2+ pages: Store 12 on both servers, 上海.001 on both (4 and
    # 2 pages), 50%off on server 1 (3 pages).
    stores_paged_twice = 5
    assert manifest["duplicates_dropped"] == oracle.duplicates == stores_paged_twice * added
    assert sum(p["dropped_duplicate_rows"] for p in manifest["partitions"]) == oracle.duplicates
    assert pages_in(manifest) == oracle.pages
    assert oracle.pages[("esl_0", "Store 12")] == (2, 3)


def test_a_store_that_shrinks_while_paged_ends_at_its_new_end(fleet: Fleet, tmp_path: Path) -> None:
    """Ten labels removed from the end after page 1: '上海.001' (155 -> 145) ends after page 3 and
    '50%off' on server 1 (107 -> 97) after page 2; the pages beyond are never requested. '50%off' on
    server 0 (45 labels, one page) loses 10 labels that page 1 still listed: their details answer 404
    and they are counted as removed."""
    profile = FaultProfile(grow_while_paged=-10, grow_at="end")
    oracle = Oracle(fleet, profile)
    with SimulatorThread(fleet, faults=profile) as sim:
        manifest = export(sim, tmp_path)
        pages_requested = sum(s.pages for s in sim.stats)
    rows = published(tmp_path)
    assert rows == oracle.rows
    assert manifest["errors"] == [] and manifest["duplicates_dropped"] == 0
    assert manifest["removed_labels"]["count"] == oracle.removed == 10
    assert {r["store"] for r in manifest["removed_labels"]["listed"]} == {"50%off"}
    assert pages_requested == oracle.requests
    # Store 12, 50%off, 上海.001 on server 0; 上海.001, 50%off, Store 12 on server 1; the empty stores'
    # page 1. Believing page 1's count would have asked for 16 (4 of 上海.001/0, 3 of 50%off/1).
    assert oracle.requests == (2 + 1 + 3) + (2 + 2 + 2) + 2
    assert len(ids_of(rows[0], "上海.001")) == 145 and len(ids_of(rows[1], "50%off")) == 97
    assert len(ids_of(rows[0], "50%off")) == 35
    gone = {d["esl_id"] for d in fleet.servers[0].stores["上海.001"][-10:]}
    assert gone.isdisjoint(ids_of(rows[0], "上海.001"))
    assert pages_in(manifest) == oracle.pages
    assert oracle.pages[("esl_0", "上海.001")] == (4, 3) and oracle.pages[("esl_1", "50%off")] == (3, 2)


def test_growth_past_max_pages_is_a_named_store_error(fleet: Fleet, tmp_path: Path) -> None:
    """With max_pages 4, '上海.001' on server 0 (4 pages) grows onto a 5th: that store fails, named
    with the numbers; its rows are dropped, every other store is published complete."""
    profile = FaultProfile(grow_while_paged=PAGE, grow_at="end")
    oracle = Oracle(fleet, profile, max_pages=4)
    assert oracle.failed == [("esl_0", "上海.001")]
    with SimulatorThread(fleet, faults=profile) as sim:
        manifest = export(sim, tmp_path, max_pages=4)
    assert published(tmp_path) == oracle.rows
    assert manifest["errors"] == [
        {
            "server": "esl_0",
            "store": "上海.001",
            "error": "esl_0: store '上海.001' page 2: total_page grew from 4 (page 1) to 5 while the store "
            "was paged, past the cap of 4 pages (max_pages)",
        }
    ]
    assert manifest["failed_store_rows_dropped"] == 50  # the page read before the error
    assert ids_of(published(tmp_path)[0], "上海.001") == []
