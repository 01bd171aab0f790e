"""Tests of the ESL-Working simulator: dataset properties and real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from esl_operators.simulator import DEFAULT_STORE, Fleet, ServerData, SimulatorThread, build_fleet
from esl_operators.simulator.dataset import AWKWARD_STORE_CODES
from tests.support import (
    DAY_MS,
    REFERENCE_DATE,
    REFERENCE_MS,
    REPO,
    TIMEOUT_S,
    get_json,
    ok_data,
    simulator_cli,
)

PAGE_SIZE = 50
DETAIL_KEYS = {
    "esl_id", "user", "last_hb_time", "create_time", "battery", "screen_size", "description",
    "refresh_times", "led_times", "firmware", "rom", "extesl_id", "product_id", "set_wor",
}  # fmt: skip


def small_fleet(seed: int = 7) -> Fleet:
    return build_fleet(
        servers=2, stores=6, esls=230, page_size=PAGE_SIZE, seed=seed, reference_ms=REFERENCE_MS
    )


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return small_fleet()


@pytest.fixture(scope="module")
def sim(fleet: Fleet) -> Iterator[SimulatorThread]:
    with SimulatorThread(fleet) as running:
        yield running


def page_url(base: str, store: str, n: int | str) -> str:
    return f"{base}/api3/{quote(store, safe='')}/esls/page/{n}"


def fleet_digest(f: Fleet) -> str:
    payload = [(s.index, s.users, list(s.stores.items())) for s in f.servers]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


# --- dataset ----------------------------------------------------------------------------------


def test_build_is_deterministic(fleet: Fleet) -> None:
    assert small_fleet() == fleet
    assert small_fleet(seed=8) != fleet
    # Independent of string hashing: another interpreter with another hash seed agrees.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tests.test_simulator as t; "
        "print(t.fleet_digest(t.small_fleet()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO)],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == fleet_digest(fleet)


def test_store_layout(fleet: Fleet) -> None:
    all_ids: list[str] = []
    for server in fleet.servers:
        codes = [u["user"] for u in server.users]
        assert codes == list(server.stores)
        assert len(set(codes)) == len(codes) == 6 + 1
        assert DEFAULT_STORE in codes and len(server.stores[DEFAULT_STORE]) == 3
        assert set(AWKWARD_STORE_CODES) <= set(codes)
        assert not any(ch in code for code in codes for ch in "/?#")
        counts = {code: len(esls) for code, esls in server.real_stores.items()}
        assert sum(counts.values()) == 230
        assert list(counts.values()).count(0) == 1
        assert 2 * PAGE_SIZE in counts.values()
        for code, esls in server.stores.items():
            assert all(esl["user"] == code for esl in esls)
        all_ids += [esl["esl_id"] for esls in server.stores.values() for esl in esls]
    assert len(all_ids) == len(set(all_ids)) == 2 * 233
    # Page order is not id order, so clients have to sort.
    assert all_ids != sorted(all_ids)


def test_detail_fields_and_awkward_values() -> None:
    big = build_fleet(servers=2, stores=8, esls=3000, page_size=PAGE_SIZE, seed=3, reference_ms=REFERENCE_MS)
    esls = [esl for s in big.servers for store in s.stores.values() for esl in store]
    n = len(esls)
    for esl in esls:
        assert set(esl) - {"temperature"} == DETAIL_KEYS
        assert isinstance(esl["battery"], int) or esl["battery"].isdigit()
        assert 0 <= int(esl["battery"]) <= 100
        assert esl["product_id"] is None or isinstance(esl["product_id"], int)
        assert esl["description"] is None or isinstance(esl["description"], str)
        assert esl["refresh_times"] >= 0 and esl["led_times"] >= 0
        assert esl["create_time"] <= esl["last_hb_time"] <= REFERENCE_MS + DAY_MS

    def share(pred: Any) -> float:
        return sum(1 for esl in esls if pred(esl)) / n

    # The seed is fixed, so these are exact facts about this dataset, not flaky statistics.
    assert 0.03 < share(lambda e: isinstance(e["battery"], str)) < 0.08
    assert 0.07 < share(lambda e: e["description"] is None) < 0.13
    assert 0.07 < share(lambda e: "temperature" not in e) < 0.13
    assert 0.03 < share(lambda e: e["product_id"] == 0) < 0.08
    assert 0.03 < share(lambda e: e["product_id"] is None) < 0.08
    assert 0.25 < share(lambda e: e["last_hb_time"] >= REFERENCE_MS - 7 * DAY_MS) < 0.45
    assert share(lambda e: e["last_hb_time"] > REFERENCE_MS) > 0
    assert 0.03 < share(lambda e: e["create_time"] // DAY_MS == e["last_hb_time"] // DAY_MS) < 0.1
    assert share(lambda e: e["extesl_id"] == "") > 0.5
    hex_widths = {len(f"{e['product_id']:X}") for e in esls if e["product_id"]}
    assert hex_widths == {1, 2, 3, 4}
    assert any(esl["description"] and "," in esl["description"] for esl in esls)
    for server in big.servers:
        hbs = [esl["last_hb_time"] for store in server.stores.values() for esl in store]
        assert hbs.count(REFERENCE_MS - 7 * DAY_MS) >= 1
        assert hbs.count(REFERENCE_MS - 7 * DAY_MS - 1) >= 1


def test_few_stores_degrade_gracefully() -> None:
    for stores, esls in [(0, 0), (1, 10), (2, 5), (3, 0), (5, 4)]:
        f = build_fleet(servers=1, stores=stores, esls=esls, page_size=2, reference_ms=REFERENCE_MS)
        server = f.servers[0]
        assert len(server.real_stores) == stores
        assert sum(len(v) for v in server.real_stores.values()) == esls
        assert len(server.stores[DEFAULT_STORE]) == 3
    with pytest.raises(ValueError):
        build_fleet(servers=1, stores=0, esls=1, reference_ms=REFERENCE_MS)


# --- HTTP -------------------------------------------------------------------------------------


def test_users_and_envelope_styles(fleet: Fleet, sim: SimulatorThread) -> None:
    assert len(sim.urls) == 2 and len(set(sim.ports)) == 2
    for server, base in zip(fleet.servers, sim.urls, strict=True):
        status, body, content_type = get_json(f"{base}/api3/users")
        assert status == 200
        assert content_type == "application/json; charset=utf-8"
        assert ("error_code" in body) == (server.index % 2 == 0)
        assert ("status_no" in body) == (server.index % 2 == 1)
        data = ok_data(server, body)
        assert data == server.users
        assert DEFAULT_STORE in [u["user"] for u in data]


def test_awkward_store_codes_round_trip(fleet: Fleet, sim: SimulatorThread) -> None:
    server, base = fleet.servers[0], sim.urls[0]
    for code in AWKWARD_STORE_CODES:
        status, body, _ = get_json(page_url(base, code, 1))
        assert status == 200
        data = ok_data(server, body)
        expected = [esl["esl_id"] for esl in server.stores[code][:PAGE_SIZE]]
        assert [e["esl_id"] for e in data["esls"]] == expected
        assert expected
    # Forgetting to encode "A%20B" asks for the store "A B", which does not exist.
    status, body, _ = get_json(f"{base}/api3/A%20B/esls/page/1")
    assert (status, body["error_code"], body["error_msg"], body["data"]) == (200, 2, "store not found", None)


def test_paging_returns_every_esl_once_in_order(fleet: Fleet, sim: SimulatorThread) -> None:
    for server, base in zip(fleet.servers, sim.urls, strict=True):
        for code, esls in server.stores.items():
            expected_pages = math.ceil(len(esls) / PAGE_SIZE)
            seen: list[str] = []
            for n in range(1, expected_pages + 2):  # bounded: one page past the end
                status, body, _ = get_json(page_url(base, code, n))
                assert status == 200
                data = ok_data(server, body)
                assert data["total_page"] == expected_pages
                if n > expected_pages:
                    assert data["esls"] == []
                seen += [e["esl_id"] for e in data["esls"]]
            assert seen == [esl["esl_id"] for esl in esls]


def test_empty_and_exact_multiple_stores(fleet: Fleet, sim: SimulatorThread) -> None:
    for server, base in zip(fleet.servers, sim.urls, strict=True):
        counts = {code: len(esls) for code, esls in server.real_stores.items()}
        (empty,) = [code for code, count in counts.items() if count == 0]
        assert ok_data(server, get_json(page_url(base, empty, 1))[1]) == {"total_page": 0, "esls": []}
        exact = next(code for code, count in counts.items() if count == 2 * PAGE_SIZE)
        last = ok_data(server, get_json(page_url(base, exact, 2))[1])
        assert last["total_page"] == 2 and len(last["esls"]) == PAGE_SIZE
        after = ok_data(server, get_json(page_url(base, exact, 3))[1])
        assert after == {"total_page": 2, "esls": []}


def test_details_match_dataset(fleet: Fleet, sim: SimulatorThread) -> None:
    async def fetch_all() -> list[tuple[ServerData, str, Any]]:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(server: ServerData, base: str, esl_id: str) -> tuple[ServerData, str, Any]:
                async with session.get(f"{base}/api3/esls/{quote(esl_id, safe='')}") as resp:
                    assert resp.status == 200
                    return server, esl_id, await resp.json()

            jobs = [
                one(server, base, esl["esl_id"])
                for server, base in zip(fleet.servers, sim.urls, strict=True)
                for esls in server.stores.values()
                for esl in esls
            ]
            return await asyncio.gather(*jobs)

    results = asyncio.run(asyncio.wait_for(fetch_all(), timeout=20))
    assert len(results) == 2 * 233
    for server, esl_id, body in results:
        assert ok_data(server, body) == server.detail(esl_id)


def test_error_responses(fleet: Fleet, sim: SimulatorThread) -> None:
    even, odd = sim.urls
    assert get_json(f"{even}/api3/esls/00-00-00-00")[:2] == (
        404, {"error_code": 3, "error_msg": "esl not found", "data": None},
    )  # fmt: skip
    assert get_json(f"{odd}/api3/esls/00-00-00-00")[:2] == (
        404, {"status_no": 3, "message": "esl not found", "data": None},
    )  # fmt: skip
    # An id of the other server is unknown here.
    other_id = fleet.servers[0].stores[DEFAULT_STORE][0]["esl_id"]
    assert get_json(f"{odd}/api3/esls/{other_id}")[0] == 404
    assert get_json(page_url(odd, "nope", 1))[:2] == (
        200, {"status_no": 2, "message": "store not found", "data": None},
    )  # fmt: skip
    for bad in ["0", "-1", "abc", "1.5"]:
        status, body, content_type = get_json(page_url(even, "Store 12", bad))
        assert (status, body["error_code"], content_type) == (400, 1, "application/json; charset=utf-8")


def test_stats_count_requests(fleet: Fleet) -> None:
    with SimulatorThread(fleet) as local:
        base = local.urls[1]
        get_json(f"{base}/api3/users")
        get_json(page_url(base, "Store 12", 1))
        get_json(page_url(base, "Store 12", 0))
        get_json(f"{base}/api3/esls/unknown")
        stats = local.stats[1]
        assert (stats.users, stats.pages, stats.details, stats.errors, stats.total) == (1, 2, 1, 2, 4)
        assert local.stats[0].total == 0


async def _concurrent_users(base: str, count: int) -> None:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> None:
            async with session.get(f"{base}/api3/users") as resp:
                assert resp.status == 200
                await resp.read()

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=TIMEOUT_S)


@pytest.mark.parametrize(("capacity", "expected_max"), [(2, 2), (0, 6)])
def test_capacity_limits_concurrency(capacity: int, expected_max: int) -> None:
    one = build_fleet(servers=1, stores=2, esls=5, reference_ms=REFERENCE_MS)
    with SimulatorThread(one, latency_ms=150, capacity=capacity) as local:
        started = time.monotonic()
        asyncio.run(_concurrent_users(local.urls[0], 6))
        elapsed = time.monotonic() - started
        stats = local.stats[0]
        assert stats.total == 6 and stats.in_flight == 0
        assert stats.max_in_flight == expected_max
        if capacity:
            # Three waves of 150 ms; sleeps never end early, so this lower bound is safe.
            assert elapsed >= 0.4


def _free_port_pair() -> int:
    """A base port p with p and p+1 free right now (best effort; callers retry)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


def test_fixed_base_port(fleet: Fleet) -> None:
    for attempt in range(5):  # bounded retries: a port can be taken between probe and bind
        base = _free_port_pair()
        try:
            with SimulatorThread(fleet, base_port=base) as local:
                assert local.ports == [base, base + 1]
                assert local.urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
                assert get_json(f"{local.urls[1]}/api3/users")[0] == 200
            return
        except RuntimeError:
            if attempt == 4:
                raise


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_on_signal(sig: signal.Signals) -> None:
    args = ["--servers", "2", "--base-port", "0", "--stores", "5", "--esls", "40", "--seed", "3"]
    args += ["--reference-date", REFERENCE_DATE.isoformat(), "--latency-ms", "1", "--capacity", "4"]
    with simulator_cli(args, 2) as (proc, lines):
        assert [line.rsplit(":", 1)[0] for line in lines] == [
            "server 0 listening on http://127.0.0.1",
            "server 1 listening on http://127.0.0.1",
        ]
        urls = [line.split(" listening on ")[1] for line in lines]
        expected = build_fleet(servers=2, stores=5, esls=40, seed=3, reference_ms=REFERENCE_MS)
        for server, url in zip(expected.servers, urls, strict=True):
            status, body, _ = get_json(f"{url}/api3/users")
            assert status == 200 and ok_data(server, body) == server.users
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr.decode()
