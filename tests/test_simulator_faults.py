"""Tests of the simulator's deterministic fault injection (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from esl_operators.simulator import (
    TRANSIENT_KINDS,
    FaultProfile,
    Fleet,
    ServerData,
    SimulatorThread,
    build_fleet,
    grown_store,
)
from esl_operators.simulator.__main__ import main as cli_main
from esl_operators.simulator.faults import INJECTED_KINDS, retry_after_text
from tests.support import REFERENCE_DATE, REFERENCE_MS, REPO, TIMEOUT_S, ok_data, simulator_cli

PAGE_SIZE = 50
NON_ASCII_STORE = "上海.001"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return build_fleet(servers=3, stores=6, esls=120, page_size=PAGE_SIZE, seed=5, reference_ms=REFERENCE_MS)


def raw_get(url: str, timeout: float = TIMEOUT_S) -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, raw body) on a fresh connection: no client-side retries or parsing."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def get_json(url: str) -> tuple[int, Any]:
    status, _, body = raw_get(url)
    return status, json.loads(body)


def detail_path(esl_id: str) -> str:
    return f"/api3/esls/{quote(esl_id, safe='')}"


def page_path(store: str, n: int) -> str:
    return f"/api3/{quote(store, safe='')}/esls/page/{n}"


def all_ids(server: ServerData) -> list[str]:
    return [esl["esl_id"] for esls in server.stores.values() for esl in esls]


def injected(sim: SimulatorThread, index: int) -> dict[str, int]:
    """The non-zero injected-fault counters of one server."""
    return {kind: n for kind, n in sim.stats[index].injected.items() if n}


def error_of(server: ServerData, body: dict[str, Any]) -> tuple[int, str]:
    """(code, message) of an envelope, checking the server's envelope style."""
    assert body["data"] is None
    if server.index % 2 == 0:
        return body["error_code"], body["error_msg"]
    return body["status_no"], body["message"]


# --- selection (pure) -------------------------------------------------------------------------


KEYS = [f"/api3/esls/{i:08X}" for i in range(1000)]


def selections(profile: FaultProfile) -> dict[str, set[str]]:
    return {
        "transient": {k for k in KEYS if profile.transient_kind(k)},
        "slow": {k for k in KEYS if profile.is_slow(k)},
        "removed": {k for k in KEYS if profile.is_removed(k)},
        "wrong_types": {k for k in KEYS if profile.is_wrong_typed(k)},
    }


def rated(rate: float, seed: int = 0) -> FaultProfile:
    return FaultProfile(
        seed=seed,
        transient_rate=rate,
        slow_rate=rate,
        slow_ms=10,
        removed_rate=rate,
        wrong_types_rate=rate,
    )


def test_selection_rates_and_determinism() -> None:
    assert all(chosen == set() for chosen in selections(rated(0.0)).values())
    assert all(chosen == set(KEYS) for chosen in selections(rated(1.0)).values())
    chosen = selections(rated(0.3, seed=4))
    for keys in chosen.values():
        assert 250 <= len(keys) <= 350
    # Same seed, same choice; other seed, other choice; the classes are independent.
    assert selections(rated(0.3, seed=4)) == chosen
    assert selections(rated(0.3, seed=5))["removed"] != chosen["removed"]
    assert len({frozenset(keys) for keys in chosen.values()}) == 4
    # Slow needs a delay to mean anything.
    assert not FaultProfile(slow_rate=1.0).is_slow(KEYS[0])


def test_transient_kinds_are_spread_and_restricted() -> None:
    every = FaultProfile(seed=2, transient_rate=1.0)
    kinds = [every.transient_kind(k) for k in KEYS]
    assert all(kinds.count(kind) > 120 for kind in TRANSIENT_KINDS)
    assert kinds == [every.transient_kind(k) for k in KEYS]
    two = FaultProfile(seed=2, transient_rate=1.0, transient_kinds=("429", "reset"))
    assert {two.transient_kind(k) for k in KEYS} == {"429", "reset"}
    assert FaultProfile(transient_rate=1.0, transient_kinds=()).transient_kind(KEYS[0]) is None


def test_selection_independent_of_hash_seed() -> None:
    code = (
        "from esl_operators.simulator import FaultProfile; "
        "p = FaultProfile(seed=9, transient_rate=0.3, removed_rate=0.3); "
        "print([(p.transient_kind(f'/k{i}'), p.is_removed(f'k{i}')) for i in range(200)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    p = FaultProfile(seed=9, transient_rate=0.3, removed_rate=0.3)
    here = [(p.transient_kind(f"/k{i}"), p.is_removed(f"k{i}")) for i in range(200)]
    assert out.stdout.strip() == str(here)


def test_profile_validation_and_retry_after_text() -> None:
    for bad in [{"transient_rate": 1.5}, {"removed_rate": -0.1}, {"slow_ms": -1}, {"retry_after_s": -1}]:
        with pytest.raises(ValueError):
            FaultProfile(**bad)
    with pytest.raises(ValueError, match="unknown transient fault kinds"):
        FaultProfile(transient_kinds=("503", "boom"))
    with pytest.raises(ValueError, match="grow_at must be one of"):
        FaultProfile(grow_while_paged=1, grow_at="middle")
    with pytest.raises(ValueError, match="grow_after_page must be >= 1"):
        FaultProfile(grow_while_paged=1, grow_after_page=0)
    assert FaultProfile(transient_kinds=["503"]).transient_kinds == ("503",)  # type: ignore[arg-type]
    assert [retry_after_text(s) for s in (0, 2.0, 0.5, 1.25)] == ["0", "2", "0.5", "1.25"]


def test_mangle_returns_a_wrong_typed_copy(fleet: Fleet) -> None:
    detail = fleet.servers[0].stores[NON_ASCII_STORE][0]
    original = dict(detail)
    mangled = FaultProfile().mangle(detail)
    assert detail == original
    assert mangled == {
        **detail,
        "battery": "n/a",
        "refresh_times": "12x",
        "create_time": -5,
        "product_id": "zz",
        "temperature": {"c": 21},
    }
    assert (mangled["esl_id"], mangled["last_hb_time"]) == (detail["esl_id"], detail["last_hb_time"])


# --- transient faults over HTTP ---------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSIENT_KINDS)
def test_transient_fault_fails_first_attempt_only(fleet: Fleet, kind: str) -> None:
    retry_after = {"503": 2.0, "429": 0.5}.get(kind, 0.0)
    profile = FaultProfile(seed=1, transient_rate=1.0, transient_kinds=(kind,), retry_after_s=retry_after)
    with SimulatorThread(fleet, faults=profile) as sim:
        for server, base in zip(fleet.servers[:2], sim.urls[:2], strict=True):  # both envelope styles
            esls = server.stores[NON_ASCII_STORE]
            expected = {
                "/api3/users": server.users,
                page_path(NON_ASCII_STORE, 1): {
                    "total_page": -(-len(esls) // PAGE_SIZE),
                    "esls": [{"esl_id": e["esl_id"]} for e in esls[:PAGE_SIZE]],
                },
                detail_path(esls[0]["esl_id"]): esls[0],
            }
            for path, data in expected.items():
                first = _first_attempt(kind, base + path)
                status, _, body = raw_get(base + path)
                assert status == 200 and ok_data(server, json.loads(body)) == data
                _check_first_attempt(kind, server, first, body, retry_after)
            assert injected(sim, server.index) == {kind: 3}
            # Only a truncated answer needs the route's real answer; the other faults skip it.
            routed = 2 if kind == "truncated" else 1
            stats = sim.stats[server.index]
            assert (stats.users, stats.pages, stats.details, stats.errors) == (routed, routed, routed, 0)
        assert sim.stats[2].total == 0


def _first_attempt(kind: str, url: str) -> tuple[int, http.client.HTTPMessage, bytes] | None:
    if kind == "reset":
        # http.client never retries: the dropped connection surfaces (RemoteDisconnected or
        # ConnectionResetError, both ConnectionError).
        with pytest.raises(ConnectionError):
            raw_get(url)
        return None
    return raw_get(url)


def _check_first_attempt(
    kind: str,
    server: ServerData,
    first: tuple[int, http.client.HTTPMessage, bytes] | None,
    real_body: bytes,
    retry_after: float,
) -> None:
    if first is None:
        return
    status, headers, body = first
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    if kind == "truncated":
        assert status == 200
        assert 0 < len(body) < len(real_body) and real_body.startswith(body)
        body.decode("utf-8")  # cut on a character boundary: only JSON parsing fails
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        return
    expected_status = {"503": 503, "429": 429, "envelope": 200}[kind]
    assert status == expected_status
    code, message = error_of(server, json.loads(body))
    assert code != 0
    if kind == "envelope":
        assert message == "temporarily busy" and "Retry-After" not in headers
    else:
        assert headers["Retry-After"] == retry_after_text(retry_after)


def test_reset_is_retried_once_by_aiohttp_itself(fleet: Fleet) -> None:
    """aiohttp resends an idempotent request once on a dropped connection, so a client built on
    it gets the real data without noticing; the server still counts the injected reset."""
    profile = FaultProfile(transient_rate=1.0, transient_kinds=("reset",))

    async def fetch(url: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
            async with session.get(url) as resp:
                return resp.status, await resp.json()

    with SimulatorThread(fleet, faults=profile) as sim:
        status, body = asyncio.run(fetch(f"{sim.urls[0]}/api3/users"))
        assert status == 200 and ok_data(fleet.servers[0], body) == fleet.servers[0].users
        assert injected(sim, 0) == {"reset": 1} and sim.stats[0].total == 2


def test_selected_paths_only(fleet: Fleet) -> None:
    """At a partial rate exactly the paths the profile selects fail, each once."""
    profile = FaultProfile(seed=7, transient_rate=0.5, transient_kinds=("503",))
    server = fleet.servers[0]
    paths = [detail_path(esl_id) for esl_id in all_ids(server)[:40]]
    selected = [p for p in paths if profile.transient_kind(p)]
    assert 0 < len(selected) < len(paths)
    with SimulatorThread(fleet, faults={0: profile}) as sim:
        statuses = {p: [raw_get(sim.urls[0] + p)[0] for _ in range(2)] for p in paths}
        assert statuses == {p: [503, 200] if p in selected else [200, 200] for p in paths}
        assert injected(sim, 0) == {"503": len(selected)}


def test_slow_first_attempt(fleet: Fleet) -> None:
    # A minute: the test only passes if the abandoned attempt stops when its client leaves.
    profile = FaultProfile(slow_rate=1.0, slow_ms=60_000)
    url_path = "/api3/users"

    async def attempts(base: str) -> Any:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(base + url_path, timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                    await r.read()
            async with session.get(base + url_path, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as r:
                assert r.status == 200
                return await r.json()

    with SimulatorThread(fleet, faults=profile, stop_timeout=5) as sim:
        body = asyncio.run(attempts(sim.urls[1]))
        assert ok_data(fleet.servers[1], body) == fleet.servers[1].users
        assert injected(sim, 1) == {"slow": 1}
        _wait_until(lambda: sim.stats[1].in_flight == 0)


def _wait_until(condition: Any, attempts: int = 100) -> None:
    """Poll ``condition`` a bounded number of times (no wall-clock assertion)."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


# --- per-id faults ----------------------------------------------------------------------------


async def _details_twice(base: str, ids: list[str]) -> dict[str, list[tuple[int, Any]]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:

        async def one(esl_id: str) -> tuple[int, Any]:
            async with session.get(base + detail_path(esl_id)) as resp:
                return resp.status, await resp.json()

        async def twice(esl_id: str) -> list[tuple[int, Any]]:
            return [await one(esl_id), await one(esl_id)]

        results = await asyncio.gather(*(twice(esl_id) for esl_id in ids))
    return dict(zip(ids, results, strict=True))


def _listed_ids(base: str, server: ServerData) -> list[str]:
    listed: list[str] = []
    for code, esls in server.stores.items():
        for n in range(1, -(-len(esls) // PAGE_SIZE) + 1):
            status, body = get_json(base + page_path(code, n))
            assert status == 200
            listed += [e["esl_id"] for e in ok_data(server, body)["esls"]]
    return listed


def test_removed_ids_stay_listed_and_always_404(fleet: Fleet) -> None:
    profile = FaultProfile(seed=3, removed_rate=0.3)
    server = fleet.servers[1]
    ids = all_ids(server)
    removed = {esl_id for esl_id in ids if profile.is_removed(esl_id)}
    assert 0 < len(removed) < len(ids)
    with SimulatorThread(fleet, faults=profile) as sim:
        base = sim.urls[1]
        assert _listed_ids(base, server) == ids
        results = asyncio.run(asyncio.wait_for(_details_twice(base, ids), timeout=20))
        for esl_id, answers in results.items():
            for status, body in answers:
                if esl_id in removed:
                    assert status == 404 and error_of(server, body) == (3, "esl not found")
                else:
                    assert status == 200 and ok_data(server, body) == server.detail(esl_id)
        assert injected(sim, 1) == {"removed": 2 * len(removed)}


def test_wrong_types_are_exact_and_permanent(fleet: Fleet) -> None:
    profile = FaultProfile(seed=3, wrong_types_rate=0.3)
    server = fleet.servers[0]
    ids = all_ids(server)
    mangled = {esl_id for esl_id in ids if profile.is_wrong_typed(esl_id)}
    assert 0 < len(mangled) < len(ids)
    with SimulatorThread(fleet, faults=profile) as sim:
        results = asyncio.run(asyncio.wait_for(_details_twice(sim.urls[0], ids), timeout=20))
        for esl_id, answers in results.items():
            detail = server.detail(esl_id)
            assert detail is not None
            expected = profile.mangle(detail) if esl_id in mangled else detail
            assert answers == [(200, envelope_ok(server, expected))] * 2
        assert injected(sim, 0) == {"wrong_types": 2 * len(mangled)}
    # The served values, spelled out once.
    served = results[min(mangled)][0][1]["data"]
    assert (served["battery"], served["refresh_times"], served["create_time"]) == ("n/a", "12x", -5)
    assert (served["product_id"], served["temperature"]) == ("zz", {"c": 21})


def envelope_ok(server: ServerData, data: Any) -> dict[str, Any]:
    if server.index % 2 == 0:
        return {"error_code": 0, "error_msg": "success", "data": data}
    return {"status_no": 0, "message": "success", "data": data}


def test_removed_wins_over_wrong_types(fleet: Fleet) -> None:
    profile = FaultProfile(removed_rate=1.0, wrong_types_rate=1.0)
    esl_id = fleet.servers[0].stores[NON_ASCII_STORE][0]["esl_id"]
    with SimulatorThread(fleet, faults=profile) as sim:
        assert get_json(sim.urls[0] + detail_path(esl_id))[0] == 404
        assert injected(sim, 0) == {"removed": 1}


# --- whole-server faults ----------------------------------------------------------------------


def test_unauthorized_server(fleet: Fleet) -> None:
    server = fleet.servers[1]
    esl_id = server.stores[NON_ASCII_STORE][0]["esl_id"]
    paths = ["/api3/users", page_path(NON_ASCII_STORE, 1), detail_path(esl_id)]
    with SimulatorThread(fleet, faults={1: FaultProfile(unauthorized=True)}) as sim:
        for _ in range(2):  # always, not only on the first attempt
            for path in paths:
                status, body = get_json(sim.urls[1] + path)
                assert status == 401 and error_of(server, body) == (7, "unauthorized")
        assert get_json(sim.urls[0] + "/api3/users")[0] == 200
        assert injected(sim, 1) == {"unauthorized": 6}
        assert injected(sim, 0) == {} and sim.stats[0].injected == dict.fromkeys(INJECTED_KINDS, 0)


def test_down_server_refuses_connections_and_holds_its_port(fleet: Fleet) -> None:
    with SimulatorThread(fleet, faults={1: FaultProfile(down=True)}) as sim:
        assert len(set(sim.ports)) == 3 and sim.urls[1] == f"http://127.0.0.1:{sim.ports[1]}"
        assert [s.down for s in sim.servers] == [False, True, False]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", sim.ports[1]), timeout=TIMEOUT_S).close()
        for index in (0, 2):
            status, body = get_json(sim.urls[index] + "/api3/users")
            assert status == 200 and ok_data(fleet.servers[index], body) == fleet.servers[index].users
        # Not even a server using SO_REUSEADDR (as aiohttp does) can take the port meanwhile.
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as taken:
                intruder.bind(("127.0.0.1", sim.ports[1]))
            assert taken.value.errno == errno.EADDRINUSE
        port = sim.ports[1]
    with socket.socket() as after:  # released on stop
        after.bind(("127.0.0.1", port))


def test_no_faults_profile_injects_nothing(fleet: Fleet) -> None:
    with SimulatorThread(fleet, faults=FaultProfile(seed=99)) as sim:
        for index, server in enumerate(fleet.servers):
            for _ in range(2):
                status, body = get_json(sim.urls[index] + "/api3/users")
                assert status == 200 and ok_data(server, body) == server.users
            assert injected(sim, index) == {}


# --- CLI --------------------------------------------------------------------------------------


def test_cli_fault_flags() -> None:
    args = ["--servers", "3", "--base-port", "0", "--stores", "2", "--esls", "10", "--seed", "3"]
    args += ["--reference-date", REFERENCE_DATE.isoformat(), "--fault-rate", "1", "--fault-kinds", "503"]
    args += ["--retry-after", "1", "--down-servers", "2", "--unauthorized-servers", "1"]
    with simulator_cli(args, 3) as (proc, lines):
        assert [line.rsplit(":", 1)[0] for line in lines] == [
            "server 0 listening on http://127.0.0.1",
            "server 1 listening on http://127.0.0.1",
            "server 2 down (refusing connections) on http://127.0.0.1",
        ]
        urls = [line.split(" on ")[1] for line in lines]
        expected = build_fleet(servers=3, stores=2, esls=10, seed=3, reference_ms=REFERENCE_MS).servers[0]
        first = raw_get(f"{urls[0]}/api3/users")
        assert (first[0], first[1]["Retry-After"]) == (503, "1")
        status, body = get_json(f"{urls[0]}/api3/users")
        assert status == 200 and ok_data(expected, body) == expected.users
        assert get_json(f"{urls[1]}/api3/users")[0] == 401
        with pytest.raises(ConnectionRefusedError):
            raw_get(f"{urls[2]}/api3/users")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr.decode()


def _page(url: str, store: str, n: int) -> tuple[int, list[str]]:
    status, body = get_json(url + page_path(store, n))
    assert status == 200, body
    return body["data"]["total_page"], [e["esl_id"] for e in body["data"]["esls"]]


@pytest.mark.parametrize("where", ["front", "end"])
def test_cli_grows_a_store_while_it_is_paged(where: str) -> None:
    """``--grow-while-paged 1``: right after page 1 of a store is first served, one label joins it at
    the front (every later label moves on by one) or the end; its detail is served, deterministically."""
    args = ["--servers", "1", "--base-port", "0", "--stores", "3", "--esls", "130", "--page-size", "50"]
    args += ["--seed", "3", "--reference-date", REFERENCE_DATE.isoformat()]
    args += ["--grow-while-paged", "1", "--grow-at", where]
    server = build_fleet(servers=1, stores=3, esls=130, seed=3, reference_ms=REFERENCE_MS).servers[0]
    store = next(code for code, labels in server.real_stores.items() if len(labels) == 100)
    old = [d["esl_id"] for d in server.stores[store]]
    added = grown_store(FaultProfile(grow_while_paged=1, grow_at=where), server, store)
    new = (added[0] if where == "front" else added[-1])["esl_id"]
    assert new not in old and len(added) == 101
    with simulator_cli(args, 1) as (proc, lines):
        url = lines[0].split(" on ")[1]
        assert _page(url, store, 1) == (2, old[:50])  # served before the change
        if where == "front":
            assert _page(url, store, 2) == (3, old[49:99])  # old[49] again: pushed from page 1
            assert _page(url, store, 3) == (3, old[99:])  # old[99] pushed from page 2 onto page 3
            assert _page(url, store, 1) == (3, [new, *old[:49]])
        else:
            assert _page(url, store, 2) == (3, old[50:])
            assert _page(url, store, 3) == (3, [new])
        status, body = get_json(url + detail_path(new))
        assert status == 200 and body["data"] == next(d for d in added if d["esl_id"] == new)
        assert body["data"]["user"] == store
        assert _page(url, store, 1)[0] == 3  # the store changes once, not on every page 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr.decode()


def test_a_store_shrunk_while_paged_forgets_its_removed_labels(fleet: Fleet) -> None:
    profile = FaultProfile(grow_while_paged=-60, grow_at="front")
    server = fleet.servers[0]
    store, labels = next((c, ls) for c, ls in server.real_stores.items() if len(ls) == 100)
    with SimulatorThread(fleet, faults=profile) as sim:
        url = sim.urls[0]
        assert _page(url, store, 1) == (2, [d["esl_id"] for d in labels[:50]])
        assert _page(url, store, 1) == (1, [d["esl_id"] for d in labels[60:]])
        assert get_json(url + detail_path(labels[0]["esl_id"]))[0] == 404
        assert get_json(url + detail_path(labels[60]["esl_id"]))[0] == 200
        assert injected(sim, 0) == {"grown": 1}


@pytest.mark.parametrize(
    "bad",
    [
        ["--grow-at", "middle"],
        ["--grow-after-page", "0"],
        ["--fault-kinds", "503,boom"],
        ["--down-servers", "3"],
        ["--fault-rate", "2"],
        ["--down-servers", "x"],
    ],
)
def test_cli_rejects_bad_fault_flags(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["--servers", "3", "--stores", "1", "--esls", "1", *bad])
    assert exited.value.code not in (0, None)
