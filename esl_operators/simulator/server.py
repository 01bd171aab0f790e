"""aiohttp application imitating the ESL-Working HTTP API v3 of one server, and fleet startup."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .dataset import Fleet, ServerData, envelope

# Error codes of the simulated API (the values clients see in error_code / status_no).
CODE_BAD_REQUEST = 1
CODE_STORE_NOT_FOUND = 2
CODE_ESL_NOT_FOUND = 3

# Graceful shutdown waits this long for in-flight handlers; bounded so tests stop quickly.
SHUTDOWN_TIMEOUT_S = 2.0

_POSITIVE_INT = re.compile(r"[0-9]+")


@dataclass
class Stats:
    """Request counters of one simulated server (mutated only on its event loop)."""

    users: int = 0
    pages: int = 0
    details: int = 0
    errors: int = 0
    total: int = 0
    in_flight: int = 0
    # Highest number of requests worked on at once: lets tests check ``capacity`` without
    # fragile wall-clock assertions.
    max_in_flight: int = 0


STATS_KEY = web.AppKey("stats", Stats)
SERVER_KEY = web.AppKey("server", ServerData)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


class _SimulatedServer:
    """Route handlers plus the throttling state of one app."""

    def __init__(self, server: ServerData, page_size: int, latency_ms: float, capacity: int) -> None:
        self.server = server
        self.page_size = page_size
        self.latency_s = max(0.0, latency_ms) / 1000
        self.capacity = capacity
        self.stats = Stats()
        # Created lazily on first use so it belongs to the loop that actually serves.
        self._slots: asyncio.Semaphore | None = None

    @web.middleware
    async def throttle(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self.capacity <= 0:
            return await self._work(request, handler)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        # Latency is spent while holding the slot, so capacity really bounds throughput.
        async with self._slots:
            return await self._work(request, handler)

    async def _work(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        stats = self.stats
        stats.total += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            return await handler(request)
        finally:
            stats.in_flight -= 1

    def _error(self, status: int, code: int, message: str) -> web.Response:
        self.stats.errors += 1
        return _json(envelope(self.server.index, None, code=code, message=message), status)

    async def users(self, request: web.Request) -> web.Response:
        self.stats.users += 1
        return _json(envelope(self.server.index, self.server.users))

    async def page(self, request: web.Request) -> web.Response:
        self.stats.pages += 1
        # match_info is already percent-decoded exactly once by aiohttp ("%2520" -> "%20").
        store = request.match_info["store"]
        raw_n = request.match_info["n"]
        if not _POSITIVE_INT.fullmatch(raw_n) or int(raw_n) < 1:
            return self._error(400, CODE_BAD_REQUEST, "invalid page number")
        esls = self.server.stores.get(store)
        if esls is None:
            # Real servers answer an unknown store with HTTP 200 and an error envelope.
            return self._error(200, CODE_STORE_NOT_FOUND, "store not found")
        start = (int(raw_n) - 1) * self.page_size
        data = {
            "total_page": -(-len(esls) // self.page_size),
            "esls": [{"esl_id": esl["esl_id"]} for esl in esls[start : start + self.page_size]],
        }
        return _json(envelope(self.server.index, data))

    async def detail(self, request: web.Request) -> web.Response:
        self.stats.details += 1
        esl = self.server.detail(request.match_info["esl_id"])
        if esl is None:
            return self._error(404, CODE_ESL_NOT_FOUND, "esl not found")
        return _json(envelope(self.server.index, esl))


def make_app(
    server: ServerData, *, page_size: int, latency_ms: float = 0, capacity: int = 0
) -> web.Application:
    """The API of one server. ``capacity`` > 0 limits concurrently worked-on requests."""
    sim = _SimulatedServer(server, page_size, latency_ms, capacity)
    app = web.Application(middlewares=[sim.throttle])
    app[STATS_KEY] = sim.stats
    app[SERVER_KEY] = server
    app.router.add_get("/api3/users", sim.users)
    app.router.add_get("/api3/esls/{esl_id}", sim.detail)
    app.router.add_get("/api3/{store}/esls/page/{n}", sim.page)
    return app


@dataclass
class RunningServer:
    """One listening simulated server."""

    index: int
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def stats(self) -> Stats:
        return self.runner.app[STATS_KEY]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_fleet(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    base_port: int,
    latency_ms: float = 0,
    capacity: int = 0,
) -> list[RunningServer]:
    """Start server i on ``base_port + i`` (``base_port=0``: any free port, see ``.port``)."""
    started: list[RunningServer] = []
    try:
        for data in fleet.servers:
            app = make_app(data, page_size=fleet.page_size, latency_ms=latency_ms, capacity=capacity)
            # No access log: benchmarks issue hundreds of thousands of requests.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            port = base_port + data.index if base_port else 0
            try:
                await web.TCPSite(runner, host, port).start()
            except BaseException:
                await runner.cleanup()
                raise
            actual_port = runner.addresses[0][1]
            started.append(RunningServer(index=data.index, runner=runner, host=host, port=actual_port))
    except BaseException:
        await stop_fleet(started)
        raise
    return started


async def stop_fleet(servers: list[RunningServer]) -> None:
    for running in servers:
        await running.close()
