"""fetch_servers / fetch_server over real HTTP: the simulator, a dead port and small faulty servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from esl_operators.client import ServerTarget
from esl_operators.engine import FetchSettings, ServerResult, fetch_server, fetch_servers
from esl_operators.parts import PartWriter, read_part
from esl_operators.records import PART_COLUMNS
from esl_operators.simulator import DEFAULT_STORE, Fleet, SimulatorThread, build_fleet, envelope
from tests.support import ANCHOR_MS, CUTOFF_MS, DAY_MS, ListSink, fetch_settings, serve, sim_target

pytestmark = pytest.mark.timeout(60)

ESL_ID = PART_COLUMNS.index("esl_id")
STORE = PART_COLUMNS.index("store")
SERVER = PART_COLUMNS.index("server")
CREATE = PART_COLUMNS.index("create_time")
LAST_HB = PART_COLUMNS.index("last_hb_time")
DESCRIPTION = PART_COLUMNS.index("description")


def targets_of(sim: SimulatorThread, indexes: Sequence[int]) -> list[ServerTarget]:
    return [sim_target(sim, i) for i in indexes]


def eligible(esls: list[dict[str, Any]], cutoff_ms: int = CUTOFF_MS) -> list[str]:
    return [e["esl_id"] for e in esls if e["last_hb_time"] >= cutoff_ms]


def store_counts(result: ServerResult) -> dict[str, tuple[int, int, int, int, bool, str | None]]:
    return {s.store: (s.rows, s.seen, s.stale, s.invalid, s.capped, s.error) for s in result.stores}


# --- the simulator fleet -------------------------------------------------------------------------


def test_rows_are_the_fresh_esls_of_real_stores_and_counts_add_up(
    simulator: SimulatorThread, small_fleet: Fleet
) -> None:
    sink = ListSink()
    results = fetch_servers(targets_of(simulator, [0, 1, 2]), fetch_settings(), sink, max_threads=3)

    assert [r.server for r in results] == ["esl_sim_0", "esl_sim_1", "esl_sim_2"]
    expected_rows: set[tuple[str, str, str]] = set()
    for index, result in enumerate(results):
        server = small_fleet.servers[index]
        name = f"esl_sim_{index}"
        assert result.error is None
        assert result.errors() == []
        expected_counts = {}
        for code, esls in server.real_stores.items():
            keep = eligible(esls)
            expected_counts[code] = (len(keep), len(esls), len(esls) - len(keep), 0, False, None)
            expected_rows |= {(name, code, esl_id) for esl_id in keep}
        # Stores in users order, "default" left out.
        assert [s.store for s in result.stores] == list(server.real_stores)
        assert store_counts(result) == expected_counts
        assert result.rows == sum(c[0] for c in expected_counts.values())
        # The lookback boundary is inclusive: the ESL exactly on the cutoff is kept, 1 ms older is not.
        edge = {
            e["last_hb_time"] - CUTOFF_MS: (code, e["esl_id"])
            for code, esls in server.real_stores.items()
            for e in esls
            if e["last_hb_time"] in (CUTOFF_MS, CUTOFF_MS - 1)
        }
        assert sorted(edge) == [-1, 0]
        assert edge[0][1] in sink.ids(name, edge[0][0])
        assert edge[-1][1] not in sink.ids(name, edge[-1][0])

    written = [(r[SERVER], r[STORE], r[ESL_ID]) for r in sink.rows]
    assert len(written) == len(set(written)) == sum(r.rows for r in results)
    assert set(written) == expected_rows
    assert not {r[STORE] for r in sink.rows} & {DEFAULT_STORE}
    # Timestamps travel as epoch milliseconds, exactly as the server sent them.
    details = {e["esl_id"]: e for s in small_fleet.servers for esls in s.stores.values() for e in esls}
    for row in sink.rows:
        detail = details[row[ESL_ID]]
        assert (row[CREATE], row[LAST_HB]) == (str(detail["create_time"]), str(detail["last_hb_time"]))


def test_max_records_per_store_keeps_the_first_eligible_esls_in_page_order(
    simulator: SimulatorThread, small_fleet: Fleet
) -> None:
    sink = ListSink()
    results = fetch_servers(targets_of(simulator, [0, 1, 2]), fetch_settings(max_records_per_store=10), sink)

    capped_stores = 0
    for index, result in enumerate(results):
        name = f"esl_sim_{index}"
        assert result.errors() == []
        by_store = {s.store: s for s in result.stores}
        assert list(by_store) == list(small_fleet.servers[index].real_stores)
        for code, esls in small_fleet.servers[index].real_stores.items():
            keep = eligible(esls)
            got = by_store[code]
            if len(keep) >= 10:
                capped_stores += 1
                assert (got.rows, got.capped) == (10, True), (name, code)
                assert sink.ids(name, code) == keep[:10]
                # The walk stops at the 10th kept ESL: everything looked at before it was stale.
                position = [e["esl_id"] for e in esls].index(keep[9]) + 1
                assert (got.seen, got.stale, got.invalid) == (position, position - 10, 0)
            else:
                assert (got.rows, got.capped, got.seen) == (len(keep), False, len(esls)), (name, code)
                assert sink.ids(name, code) == keep
    assert capped_stores == 9  # three per server in this fleet: the cap is really exercised
    assert len(sink.rows) == sum(r.rows for r in results)


def test_a_down_server_is_reported_and_the_others_deliver_everything(
    simulator: SimulatorThread, small_fleet: Fleet, refused_port: int
) -> None:
    down = ServerTarget(name="esl_down", base_url=f"http://127.0.0.1:{refused_port}")
    sim0, sim1 = targets_of(simulator, [0, 1])
    sink = ListSink()
    results = fetch_servers([sim0, down, sim1], fetch_settings(), sink, max_threads=2)

    assert [r.server for r in results] == ["esl_sim_0", "esl_down", "esl_sim_1"]
    failed = results[1]
    assert failed.error is not None
    assert failed.error.startswith(
        "esl_down: list stores: request failed (ClientConnectorError: "
        f"Cannot connect to host 127.0.0.1:{refused_port}"
    )
    assert (failed.stores, failed.rows) == ([], 0)
    assert failed.errors() == [{"server": "esl_down", "store": "", "error": failed.error}]
    for result, index in ((results[0], 0), (results[2], 1)):
        expected = {
            (code, esl_id)
            for code, esls in small_fleet.servers[index].real_stores.items()
            for esl_id in eligible(esls)
        }
        assert result.errors() == []
        assert result.rows == len(expected)
        assert {(r[STORE], r[ESL_ID]) for r in sink.rows if r[SERVER] == result.server} == expected
    assert {r[SERVER] for r in sink.rows} == {"esl_sim_0", "esl_sim_1"}


def test_unparsable_base_url_is_refused_naming_the_server() -> None:
    # An Airflow connection accepts port 99999; it must fail up front, not as a bare error mid-batch.
    with pytest.raises(ValueError, match=r"^server 'esl_badport': unusable base URL \(Port out of range"):
        ServerTarget(name="esl_badport", base_url="http://127.0.0.1:99999")
    with pytest.raises(ValueError, match=r"^server 'esl_nohost': unusable base URL"):
        ServerTarget(name="esl_nohost", base_url="http://:8080")


def test_concurrency_limit_is_exactly_what_the_server_sees() -> None:
    fleet = build_fleet(servers=2, stores=3, esls=45, page_size=10, seed=5, reference_ms=ANCHOR_MS)
    with SimulatorThread(fleet, latency_ms=20) as sim:
        results = []
        for index, limit in ((0, 3), (1, 1)):
            sink = ListSink()
            [result] = fetch_servers(targets_of(sim, [index]), fetch_settings(max_concurrency=limit), sink)
            results.append((result, sink))
        stats = sim.stats

    for index, limit in ((0, 3), (1, 1)):
        result, sink = results[index]
        server = fleet.servers[index]
        assert result.errors() == []
        assert stats[index].max_in_flight == limit
        # One users call, every page once, every real ESL's detail once: nothing fetched twice.
        pages = sum(max(1, -(-len(esls) // 10)) for esls in server.real_stores.values())
        details = sum(len(esls) for esls in server.real_stores.values())
        assert (stats[index].users, stats[index].pages, stats[index].details) == (1, pages, details)
        assert (stats[index].errors, stats[index].in_flight) == (0, 0)
        assert sorted(r[ESL_ID] for r in sink.rows) == sorted(
            esl_id for esls in server.real_stores.values() for esl_id in eligible(esls)
        )


def test_part_file_round_trips_through_read_part(
    simulator: SimulatorThread, small_fleet: Fleet, tmp_path: Path
) -> None:
    path = tmp_path / "2024-05-10" / "_parts" / "batch-0.arrow"
    with PartWriter(path) as writer:
        results = fetch_servers(targets_of(simulator, [0, 1]), fetch_settings(), writer, max_threads=2)
    assert [r.errors() for r in results] == [[], []]

    frame = read_part(path).to_pandas()
    assert tuple(frame.columns) == PART_COLUMNS
    assert len(frame) == writer.rows == sum(r.rows for r in results)
    details = {
        e["esl_id"]: e for s in small_fleet.servers[:2] for esls in s.real_stores.values() for e in esls
    }
    expected_ids = {esl_id for esl_id, d in details.items() if d["last_hb_time"] >= CUTOFF_MS}
    assert set(frame["esl_id"]) == expected_ids and frame["esl_id"].is_unique
    # CSV-hostile descriptions (commas, quotes, non-ASCII) come back exactly.
    for esl_id, description in zip(frame["esl_id"], frame["description"], strict=True):
        assert description == (details[esl_id]["description"] or "")
    assert any('"' in d or "," in d for d in frame["description"])
    assert [p.name for p in path.parent.iterdir()] == ["batch-0.arrow"]  # no temporary left behind


def test_settings_and_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^max_concurrency must be >= 1, got 0$"):
        FetchSettings(cutoff_ms=0, max_concurrency=0)
    with pytest.raises(ValueError, match=r"^max_records_per_store must be >= 1, got 0$"):
        FetchSettings(cutoff_ms=0, max_records_per_store=0)
    with pytest.raises(ValueError, match=r"^max_threads must be >= 1, got 0$"):
        fetch_servers([], fetch_settings(), ListSink(), max_threads=0)
    assert fetch_servers([], fetch_settings(), ListSink()) == []


# --- small faulty servers of our own -------------------------------------------------------------

PAGE = 3
FRESH = CUTOFF_MS + DAY_MS
STALE = CUTOFF_MS - DAY_MS


def detail(esl_id: str, store: str, last_hb: Any) -> dict[str, Any]:
    return {
        "esl_id": esl_id,
        "user": store,
        "last_hb_time": last_hb,
        "create_time": STALE - 30 * DAY_MS,
        "battery": 80,
        "refresh_times": 12,
        "product_id": 0xBEEF,
    }


def tiny_stores() -> dict[str, list[dict[str, Any]]]:
    """alpha: 3 pages, beta: 2 pages, gamma: 1 page; stale labels spread over all of them."""
    hb = {
        "alpha": [FRESH, STALE, FRESH, FRESH, FRESH, STALE, FRESH],
        "beta": [FRESH, STALE, FRESH, FRESH, FRESH],
    }
    hb["gamma"] = [STALE, FRESH]
    hb[DEFAULT_STORE] = [FRESH]
    return {
        store: [detail(f"{store[0].upper()}-{n:02d}", store, value) for n, value in enumerate(values)]
        for store, values in hb.items()
    }


class TinyServer:
    """API v3 over a hand-made dataset, with injectable faults (HTTP 500 pages, rewritten details)."""

    def __init__(
        self,
        stores: dict[str, list[dict[str, Any]]],
        *,
        fail_pages: frozenset[tuple[str, int]] = frozenset(),
        rewrite: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.stores = stores
        self.fail_pages = fail_pages
        self.rewrite = rewrite
        self.by_id = {e["esl_id"]: e for esls in stores.values() for e in esls}
        self.app = web.Application()
        self.app.router.add_get("/api3/users", self.users)
        self.app.router.add_get("/api3/esls/{esl_id}", self.detail)
        self.app.router.add_get("/api3/{store}/esls/page/{n}", self.page)

    async def users(self, request: web.Request) -> web.Response:
        return web.json_response(envelope(1, [{"user": code} for code in self.stores]))

    async def page(self, request: web.Request) -> web.Response:
        store, number = request.match_info["store"], int(request.match_info["n"])
        if (store, number) in self.fail_pages:
            return web.Response(status=500, text="upstream exploded")
        esls = self.stores[store]
        chunk = esls[(number - 1) * PAGE : number * PAGE]
        data = {"total_page": -(-len(esls) // PAGE), "esls": [{"esl_id": e["esl_id"]} for e in chunk]}
        return web.json_response(envelope(1, data))

    async def detail(self, request: web.Request) -> web.Response:
        esl = self.by_id[request.match_info["esl_id"]]
        return web.json_response(envelope(1, self.rewrite(esl) if self.rewrite else esl))


def fetch_tiny(server: TinyServer, sink: ListSink) -> ServerResult:
    """fetch_server in this thread's own loop, next to the server it talks to."""

    async def main() -> ServerResult:
        async with serve(server.app) as url:
            target = ServerTarget(name="tiny", base_url=url)
            return await asyncio.wait_for(
                fetch_server(target, fetch_settings(max_concurrency=2), sink), timeout=30
            )

    return asyncio.run(main())


def ids(stores: dict[str, list[dict[str, Any]]], store: str, *, last: int | None = None) -> list[str]:
    return eligible(stores[store][:last])


def test_http_500_on_page_two_fails_that_store_only() -> None:
    stores = tiny_stores()
    sink = ListSink()
    result = fetch_tiny(TinyServer(stores, fail_pages=frozenset({("beta", 2)})), sink)

    error = "tiny: store 'beta' page 2: HTTP 500: 'upstream exploded' (gave up after 3 attempts)"
    assert result.error is None
    assert result.errors() == [{"server": "tiny", "store": "beta", "error": error}]
    assert store_counts(result) == {
        "alpha": (5, 7, 2, 0, False, None),
        "beta": (2, 3, 1, 0, False, error),  # page 1 was done before page 2 failed
        "gamma": (1, 2, 1, 0, False, None),
    }
    assert sink.ids("tiny", "alpha") == ids(stores, "alpha") == ["A-00", "A-02", "A-03", "A-04", "A-06"]
    assert sink.ids("tiny", "gamma") == ["G-01"]
    # Rows of the failed store's first page are in the part (the task then fails on the error).
    assert sink.ids("tiny", "beta") == ids(stores, "beta", last=PAGE) == ["B-00", "B-02"]
    assert len(sink.rows) == result.rows == 8


BAD_DETAILS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("hb-soon", lambda e: {**e, "last_hb_time": "soon"}, "last_hb_time: 'soon' is not an integer"),
    ("hb-missing", lambda e: {k: v for k, v in e.items() if k != "last_hb_time"}, "last_hb_time is missing"),
    ("not-an-object", lambda e: [e], "detail 'data' is a list, not an object"),
    ("other-id", lambda e: {**e, "esl_id": "Z-99"}, "detail answered for esl_id 'Z-99'"),
    ("hb-negative", lambda e: {**e, "last_hb_time": -1}, "last_hb_time -1 is negative or in the far future"),
]


@pytest.mark.parametrize(("case", "bad", "reason"), BAD_DETAILS, ids=[c[0] for c in BAD_DETAILS])
def test_one_unusable_detail_is_counted_invalid_and_nothing_else_is_lost(
    case: str, bad: Callable[[dict[str, Any]], Any], reason: str
) -> None:
    stores = tiny_stores()
    victim = "A-03"  # fresh, on alpha's page 2

    def rewrite(esl: dict[str, Any]) -> Any:
        return bad(esl) if esl["esl_id"] == victim else esl

    sink = ListSink()
    result = fetch_tiny(TinyServer(stores, rewrite=rewrite), sink)

    assert result.errors() == []
    assert store_counts(result) == {
        "alpha": (4, 7, 2, 1, False, None),
        "beta": (4, 5, 1, 0, False, None),
        "gamma": (1, 2, 1, 0, False, None),
    }
    alpha = {s.store: s for s in result.stores}["alpha"]
    assert alpha.invalid_samples == [{"esl_id": victim, "reason": reason}]
    assert result.to_manifest()["invalid_records"] == [{"store": "alpha", "esl_id": victim, "reason": reason}]
    assert sink.ids("tiny", "alpha") == ["A-00", "A-02", "A-04", "A-06"]
    assert sink.ids("tiny", "beta") == ["B-00", "B-02", "B-03", "B-04"]
    assert sink.ids("tiny", "gamma") == ["G-01"]
    assert len(sink.rows) == result.rows == 9
