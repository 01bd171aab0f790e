"""aiohttp application imitating the ESL-Working HTTP API v3 of one server, and fleet startup.

Longer than most modules (about 490 lines): it imitates one whole HTTP API (every route, both
envelope styles, fault injection hooks and fleet start-up, its open-files limit included); it serves
tests, benchmarks and the demo, not exports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import resource
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .dataset import Fleet, ServerData, envelope
from .faults import INJECTED_KINDS, FaultProfile, grown_store, retry_after_text

# Error codes of the simulated API (the values clients see in error_code / status_no).
CODE_BAD_REQUEST = 1
CODE_STORE_NOT_FOUND = 2
CODE_ESL_NOT_FOUND = 3
# Codes of injected faults (see faults.py).
CODE_BUSY = 4
CODE_UNAVAILABLE = 5
CODE_RATE_LIMITED = 6
CODE_UNAUTHORIZED = 7

# Counters of every simulated server as JSON, for benchmarks run in another process. Outside
# /api3, so it never collides with the API; never throttled, faulted or counted.
STATS_PATH = "/_stats"

# Descriptors a fleet may hold: per server its listening socket and a few clients' connections, plus
# the interpreter's own. A 1,000-server fleet needs more than the usual soft limit of 1024.
FILES_PER_SERVER = 4
SPARE_FILES = 256

# Graceful shutdown waits this long for in-flight handlers; bounded so tests stop quickly.
SHUTDOWN_TIMEOUT_S = 2.0

_POSITIVE_INT = re.compile(r"[0-9]+")


def _no_injections() -> dict[str, int]:
    return dict.fromkeys(INJECTED_KINDS, 0)


@dataclass
class Stats:
    """Request counters of one simulated server (mutated only on its event loop).

    ``total`` counts every request. ``users``/``pages``/``details``/``errors`` count requests
    that reached their route, so a request answered by an injected transient fault or 401 is
    counted only in ``total`` and ``injected`` (removed and wrong-typed details do reach the
    route). ``injected`` has one counter per ``INJECTED_KINDS`` value: responses served with
    that fault ("reset": connections dropped; "slow": first attempts delayed; "grown": stores
    changed while paged). ``overloaded``
    counts requests refused at once in overload mode (``overload_status``); they are in
    ``total`` too, but never in ``in_flight``.
    """

    users: int = 0
    pages: int = 0
    details: int = 0
    errors: int = 0
    total: int = 0
    in_flight: int = 0
    # Highest number of requests worked on at once: lets tests check ``capacity`` without
    # fragile wall-clock assertions.
    max_in_flight: int = 0
    overloaded: int = 0
    injected: dict[str, int] = field(default_factory=_no_injections)


STATS_KEY = web.AppKey("stats", Stats)
SERVER_KEY = web.AppKey("server", ServerData)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _json_body(body, status)


def _json_body(body: bytes, status: int) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


class _SimulatedServer:
    """Route handlers plus the throttling and fault-injection state of one app."""

    def __init__(
        self,
        server: ServerData,
        page_size: int,
        latency_ms: float,
        capacity: int,
        faults: FaultProfile,
        overload_status: int | None = None,
    ) -> None:
        self.server = server
        self.page_size = page_size
        self.latency_s = max(0.0, latency_ms) / 1000
        self.capacity = capacity
        self.faults = faults
        self.overload_status = overload_status
        self.stats = Stats()
        # Created lazily on first use so it belongs to the loop that actually serves.
        self._slots: asyncio.Semaphore | None = None
        # Paths whose first attempt already got its transient fault or delay; only selected
        # paths are stored, so memory stays bounded by the fault rate.
        self._faulted: set[str] = set()
        # Stores changed while paged (grow_while_paged): their labels now, and the ids they gained
        # or lost. The fleet's own data is never mutated: other servers and tests share it.
        self._grown: dict[str, list[dict[str, Any]]] = {}
        self._added: dict[str, dict[str, Any]] = {}
        self._gone: set[str] = set()

    @web.middleware
    async def throttle(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return await handler(request)
        if self.capacity <= 0:
            return await self._work(request, handler)
        if self.overload_status is not None:
            # Overload mode: a full server refuses at once instead of queueing, like a real box
            # behind a proxy with a small worker pool. No await before _work's increment, so
            # the check and the slot taken are atomic on this event loop.
            if self.stats.in_flight >= self.capacity:
                return self._overloaded()
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

    def _overloaded(self) -> web.Response:
        assert self.overload_status is not None
        self.stats.total += 1
        self.stats.overloaded += 1
        if self.overload_status == 429:
            response = self._envelope_error(429, CODE_RATE_LIMITED, "too many requests")
        else:
            response = self._envelope_error(self.overload_status, CODE_UNAVAILABLE, "server overloaded")
        # "Retry now": the client's own backoff decides how patient it is.
        response.headers["Retry-After"] = "0"
        return response

    def _error(self, status: int, code: int, message: str) -> web.Response:
        self.stats.errors += 1
        return self._envelope_error(status, code, message)

    def _envelope_error(self, status: int, code: int, message: str) -> web.Response:
        return _json(envelope(self.server.index, None, code=code, message=message), status)

    def _inject(self, kind: str) -> None:
        self.stats.injected[kind] += 1

    @web.middleware
    async def inject_faults(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Answer with the profile's faults; installed only when the profile injects any."""
        faults = self.faults
        if request.path == STATS_PATH:
            return await handler(request)
        if faults.refuses(request.headers.get("Authorization")):
            self._inject("unauthorized")
            return self._envelope_error(401, CODE_UNAUTHORIZED, "unauthorized")
        path = request.path
        kind = faults.transient_kind(path)
        slow = faults.is_slow(path)
        if not (kind or slow) or path in self._faulted:
            return await handler(request)
        # Marked on arrival: a retry sent while this attempt is still delayed is the second one.
        self._faulted.add(path)
        if slow:
            self._inject("slow")
            await _sleep_unless_disconnected(request, faults.slow_ms / 1000)
        if kind is None:
            return await handler(request)
        return await self._transient(kind, request, handler)

    async def _transient(self, kind: str, request: web.Request, handler: _Handler) -> web.StreamResponse:
        retry_after = {"Retry-After": retry_after_text(self.faults.retry_after_s)}
        if kind == "503":
            response = self._envelope_error(503, CODE_UNAVAILABLE, "service unavailable")
            response.headers.update(retry_after)
        elif kind == "429":
            response = self._envelope_error(429, CODE_RATE_LIMITED, "too many requests")
            response.headers.update(retry_after)
        elif kind == "envelope":
            response = self._envelope_error(200, CODE_BUSY, "temporarily busy")
        elif kind == "reset":
            _reset_connection(request)
            # aiohttp fails to write this to the aborted transport and drops it quietly.
            response = web.Response(status=500)
        elif kind == "truncated":
            real = await handler(request)
            if not isinstance(real, web.Response) or not isinstance(real.body, bytes):
                return real  # only our own JSON responses can be cut; never reached by the API
            # The status line survives, as when a link drops mid-body; the API's are 200.
            response = _json_body(_cut_json(real.body), real.status)
        else:
            raise AssertionError(f"unhandled transient fault kind {kind!r}")
        self._inject(kind)
        return response

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
        esls = self._grown.get(store, self.server.stores.get(store))
        if esls is None:
            # Real servers answer an unknown store with HTTP 200 and an error envelope.
            return self._error(200, CODE_STORE_NOT_FOUND, "store not found")
        start = (int(raw_n) - 1) * self.page_size
        data = {
            "total_page": -(-len(esls) // self.page_size),
            "esls": [{"esl_id": esl["esl_id"]} for esl in esls[start : start + self.page_size]],
        }
        if int(raw_n) == self.faults.grow_after_page:
            self._grow(store)  # after this page's answer is built: the next page sees the change
        return _json(envelope(self.server.index, data))

    def _grow(self, store: str) -> None:
        if not self.faults.grow_while_paged or store in self._grown:
            return
        before = self.server.stores[store]
        after = grown_store(self.faults, self.server, store)
        self._grown[store] = after
        now = {esl["esl_id"] for esl in after}
        self._gone.update(esl["esl_id"] for esl in before if esl["esl_id"] not in now)
        self._added.update((esl["esl_id"], esl) for esl in after if self.server.detail(esl["esl_id"]) is None)
        self._inject("grown")

    async def detail(self, request: web.Request) -> web.Response:
        self.stats.details += 1
        esl_id = request.match_info["esl_id"]
        esl = None if esl_id in self._gone else self._added.get(esl_id) or self.server.detail(esl_id)
        if esl is None:
            return self._error(404, CODE_ESL_NOT_FOUND, "esl not found")
        if self.faults.is_removed(esl_id):
            self._inject("removed")
            # Same answer as a truly unknown id: the label vanished between listing and detail.
            return self._envelope_error(404, CODE_ESL_NOT_FOUND, "esl not found")
        if self.faults.is_wrong_typed(esl_id):
            self._inject("wrong_types")
            esl = self.faults.mangle(esl)
        return _json(envelope(self.server.index, esl))

    async def stats_json(self, request: web.Request) -> web.Response:
        return _json(dataclasses.asdict(self.stats))


async def _sleep_unless_disconnected(request: web.Request, seconds: float) -> None:
    """Sleep, but stop early once the client has gone (it timed out, as slow faults intend).

    aiohttp does not cancel handlers when clients disconnect, so without this abandoned slow
    requests would hold capacity slots and delay shutdown by up to ``slow_ms``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(remaining, 0.05))


def _reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST, the way a crashing server or proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN, so the client sees "connection reset".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _cut_json(body: bytes) -> bytes:
    """A non-empty strict prefix of ``body`` (a JSON object, so the prefix never parses).

    The cut never splits a UTF-8 sequence: the prefix decodes, only JSON parsing fails.
    """
    cut = max(1, len(body) // 2)
    while cut > 1 and body[cut] & 0xC0 == 0x80:  # continuation byte: back off to a boundary
        cut -= 1
    return body[:cut]


def make_app(
    server: ServerData,
    *,
    page_size: int,
    latency_ms: float = 0,
    capacity: int = 0,
    faults: FaultProfile | None = None,
    overload_status: int | None = None,
) -> web.Application:
    """The API of one server. ``capacity`` > 0 limits concurrently worked-on requests.

    Requests beyond ``capacity`` queue, unless ``overload_status`` is set (e.g. 503): then
    they are answered at once with that status, ``Retry-After: 0`` and an error envelope.
    ``faults`` injects deterministic faults (see faults.py); ``down`` is handled by
    :func:`start_fleet`, since an app cannot refuse connections. ``GET /_stats`` returns
    :class:`Stats` as JSON.
    """
    check_overload(overload_status, capacity)
    profile = faults or FaultProfile()
    sim = _SimulatedServer(server, page_size, latency_ms, capacity, profile, overload_status)
    middlewares = [sim.throttle]
    if not profile.injects_nothing:
        # Inside throttle: faulted requests cost latency and hold a slot like real ones.
        middlewares.append(sim.inject_faults)
    app = web.Application(middlewares=middlewares)
    app[STATS_KEY] = sim.stats
    app[SERVER_KEY] = server
    app.router.add_get(STATS_PATH, sim.stats_json)
    app.router.add_get("/api3/users", sim.users)
    app.router.add_get("/api3/esls/{esl_id}", sim.detail)
    app.router.add_get("/api3/{store}/esls/page/{n}", sim.page)
    return app


def check_overload(overload_status: int | None, capacity: int) -> None:
    """Overload mode needs a capacity to exceed and an error status to answer with."""
    if overload_status is None:
        return
    if not 400 <= overload_status <= 599:
        raise ValueError(f"overload status must be an HTTP error status (400..599), got {overload_status}")
    if capacity <= 0:
        raise ValueError("overload status needs a capacity > 0")


@dataclass
class RunningServer:
    """One listening simulated server."""

    index: int
    runner: web.AppRunner
    host: str
    port: int
    # Set for a "down" server: bound to the port but never listening, so connects are refused.
    blocker: socket.socket | None = None

    @property
    def down(self) -> bool:
        return self.blocker is not None

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
        try:
            await self.runner.cleanup()
        finally:
            if self.blocker is not None:
                self.blocker.close()


async def start_fleet(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    base_port: int,
    latency_ms: float = 0,
    capacity: int = 0,
    faults: FaultProfile | Mapping[int, FaultProfile] | None = None,
    overload_status: int | None = None,
) -> list[RunningServer]:
    """Start server i on ``base_port + i`` (``base_port=0``: any free port, see ``.port``).

    ``faults``: one profile for every server, or profiles by server index (servers missing
    from the mapping inject nothing). A ``down`` server occupies its port but refuses
    connections. ``overload_status``: see :func:`make_app`.
    """
    check_overload(overload_status, capacity)  # before any socket is opened
    raise_open_files_limit(len(fleet.servers))
    started: list[RunningServer] = []
    try:
        for data in fleet.servers:
            profile = faults.get(data.index) if isinstance(faults, Mapping) else faults
            app = make_app(
                data,
                page_size=fleet.page_size,
                latency_ms=latency_ms,
                capacity=capacity,
                faults=profile,
                overload_status=overload_status,
            )
            # No access log: benchmarks issue hundreds of thousands of requests.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            port = base_port + data.index if base_port else 0
            blocker = None
            try:
                if profile is not None and profile.down:
                    blocker = _bind_without_listening(host, port)
                    actual_port = blocker.getsockname()[1]
                else:
                    await web.TCPSite(runner, host, port).start()
                    actual_port = runner.addresses[0][1]
            except BaseException:
                await runner.cleanup()
                raise
            started.append(
                RunningServer(index=data.index, runner=runner, host=host, port=actual_port, blocker=blocker)
            )
    except BaseException:
        await stop_fleet(started)
        raise
    return started


def raise_open_files_limit(servers: int) -> int:
    """Raise this process's soft open-files limit (never past the hard one) if ``servers`` servers may
    need more descriptors than it allows; say so on stderr. Returns the soft limit now in force."""
    needed = servers * FILES_PER_SERVER + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        message = f"simulator: open-files limit raised from {soft} to {raised} for {servers} servers"
        print(message, file=sys.stderr, flush=True)
    if raised < needed:
        print(
            f"simulator: the hard open-files limit {hard} is below the {needed} that {servers} servers may "
            "need; servers or connections beyond it fail with 'Too many open files'",
            file=sys.stderr,
        )
    return raised


def _bind_without_listening(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that never listens: connects to it are refused.

    No SO_REUSEADDR, so no other socket (another server, or a test) can bind the port while
    the simulated server is down.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def stop_fleet(servers: list[RunningServer]) -> None:
    for running in servers:
        await running.close()
