"""Overload mode of the simulator (requests beyond ``capacity`` refused with 503/429) and ``/_stats``.

Real HTTP on 127.0.0.1. Counts are exact; nothing asserts on elapsed time. The only timing
assumption is generous: a request answered at once returns well within the 1.5 s that the
requests holding the slots spend in their simulated latency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from esl_operators.batch import run_batch
from esl_operators.client import ServerTarget, TransportSettings
from esl_operators.engine import FetchSettings
from esl_operators.retry import RetryPolicy
from esl_operators.simulator import (
    STATS_PATH,
    FaultProfile,
    Fleet,
    SimulatorThread,
    Stats,
    build_fleet,
    make_app,
)
from tests.support import DAY_MS, REFERENCE_MS, REPO, get_json, simulator_cli

pytestmark = pytest.mark.timeout(60)

HOLD_MS = 1500
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return build_fleet(servers=1, stores=3, esls=40, page_size=10, seed=5, reference_ms=REFERENCE_MS)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def _wait_in_flight(stats: Stats, count: int, timeout: float = 10.0) -> None:
    """Bounded wait until the simulator works on ``count`` requests (its counters are live)."""
    deadline = time.monotonic() + timeout
    while stats.in_flight < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"simulator reached only {stats.in_flight} requests in flight")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("status", "code"), [(503, 5), (429, 6)])
def test_requests_beyond_capacity_are_refused_at_once(fleet: Fleet, status: int, code: int) -> None:
    with SimulatorThread(fleet, latency_ms=HOLD_MS, capacity=2, overload_status=status) as sim:
        base, stats = sim.urls[0], sim.stats[0]

        async def scenario() -> None:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                holding = [asyncio.create_task(_get(session, f"{base}/api3/users")) for _ in range(2)]
                await _wait_in_flight(stats, 2)
                refused = [await _get(session, f"{base}/api3/users") for _ in range(3)]
                # /_stats is never throttled: it answers while the server is full, and is not counted.
                code_, live, _ = await _get(session, base + STATS_PATH)
                assert code_ == 200 and (live["in_flight"], live["overloaded"], live["total"]) == (2, 3, 5)
                held = await asyncio.gather(*holding)
                again = await _get(session, f"{base}/api3/users")
            for got, body, headers in refused:
                assert (got, headers["Retry-After"], body["error_code"], body["data"]) == (
                    status,
                    "0",
                    code,
                    None,
                )
            assert [r[0] for r in held] == [200, 200] and again[0] == 200

        asyncio.run(scenario())
        assert (stats.total, stats.overloaded, stats.users, stats.errors) == (6, 3, 3, 0)
        assert (stats.in_flight, stats.max_in_flight) == (0, 2)


def test_default_still_queues(fleet: Fleet) -> None:
    with SimulatorThread(fleet, latency_ms=100, capacity=2) as sim:

        async def burst() -> list[int]:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                results = await asyncio.gather(
                    *(_get(session, f"{sim.urls[0]}/api3/users") for _ in range(6))
                )
            return [r[0] for r in results]

        assert asyncio.run(burst()) == [200] * 6
        stats = sim.stats[0]
        assert (stats.total, stats.overloaded, stats.max_in_flight) == (6, 0, 2)


def test_stats_route_reports_counters_and_bypasses_faults(fleet: Fleet) -> None:
    with SimulatorThread(fleet, faults=FaultProfile(unauthorized=True)) as sim:
        base = sim.urls[0]
        assert get_json(f"{base}/api3/users")[0] == 401
        status, body, content_type = get_json(base + STATS_PATH)
        assert (status, content_type) == (200, "application/json; charset=utf-8")
        assert body == dataclasses.asdict(sim.stats[0])
        assert (body["total"], body["injected"]["unauthorized"], body["overloaded"]) == (1, 1, 0)


def test_overload_needs_capacity_and_an_error_status(fleet: Fleet) -> None:
    server = fleet.servers[0]
    with pytest.raises(ValueError, match="capacity"):
        make_app(server, page_size=10, overload_status=503)
    with pytest.raises(ValueError, match=r"400\.\.599"):
        make_app(server, page_size=10, capacity=2, overload_status=200)
    result = subprocess.run(
        [sys.executable, "-m", "esl_operators.simulator", "--overload-status", "503", "--base-port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0 and "capacity" in result.stderr


def test_cli_overload_flag() -> None:
    args = ["--servers", "1", "--base-port", "0", "--stores", "2", "--esls", "10", "--capacity", "1"]
    args += ["--overload-status", "503", "--latency-ms", str(HOLD_MS)]
    with simulator_cli(args, 1) as (_, lines):
        url = lines[0].split(" listening on ")[1]

        async def scenario() -> tuple[int, int, dict[str, Any]]:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                holding = asyncio.create_task(_get(session, f"{url}/api3/users"))
                deadline = time.monotonic() + 10
                while (await _get(session, url + STATS_PATH))[1]["in_flight"] < 1:
                    assert time.monotonic() < deadline, "the first request never reached the server"
                    await asyncio.sleep(0.01)
                refused = (await _get(session, f"{url}/api3/users"))[0]
                held = (await holding)[0]
                return refused, held, (await _get(session, url + STATS_PATH))[1]

        refused, held, stats = asyncio.run(scenario())
        assert (refused, held) == (503, 200)
        assert (stats["total"], stats["overloaded"], stats["users"]) == (2, 1, 1)


def test_export_recovers_from_every_overload(fleet: Fleet, tmp_path: Path) -> None:
    """Our client at 6 in flight against capacity 2: every refusal is retried, nothing is lost."""
    transport = TransportSettings(
        timeout_s=10.0,
        connect_timeout_s=5.0,
        retry=RetryPolicy(attempts=50, base_delay_s=0.001, max_delay_s=0.01, max_retry_after_s=0.01),
    )
    anchor = dt.datetime(2025, 6, 15, tzinfo=dt.UTC)
    cutoff_ms = REFERENCE_MS - 7 * DAY_MS
    expected = sum(
        1
        for esls in fleet.servers[0].real_stores.values()
        for esl in esls
        if esl["last_hb_time"] >= cutoff_ms
    )
    settings = FetchSettings(
        cutoff_ms=cutoff_ms, max_concurrency=6, transport=transport, progress_interval_s=60
    )
    with SimulatorThread(fleet, latency_ms=5, capacity=2, overload_status=503) as sim:
        target = ServerTarget(name="esl_0", base_url=sim.urls[0])
        manifest = run_batch(
            [target], settings, output_root=tmp_path, ds="2025-06-15", batch=0, anchor=anchor, max_threads=1
        )
        stats = sim.stats[0]
    assert (manifest["rows"], manifest["errors"]) == (expected, [])
    assert manifest["servers"]["esl_0"]["retries"] == stats.overloaded
    assert stats.max_in_flight <= 2
