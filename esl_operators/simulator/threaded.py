"""Run a simulated fleet on a private event loop in a background thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import TracebackType

from .dataset import Fleet
from .faults import FaultProfile
from .server import RunningServer, Stats, start_fleet, stop_fleet


class SimulatorThread:
    """Context manager serving ``fleet`` from its own thread and event loop.

    The caller's thread stays free for synchronous clients or its own event loop. Ports are
    free ones by default (``base_port=0``) so parallel test runs never collide. ``faults`` and
    ``overload_status`` are passed to :func:`start_fleet` (faults: one profile for all servers,
    or profiles by index).
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        host: str = "127.0.0.1",
        base_port: int = 0,
        latency_ms: float = 0,
        capacity: int = 0,
        faults: FaultProfile | Mapping[int, FaultProfile] | None = None,
        overload_status: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.fleet = fleet
        self._host = host
        self._base_port = base_port
        self._latency_ms = latency_ms
        self._capacity = capacity
        self._faults = faults
        self._overload_status = overload_status
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self.servers: list[RunningServer] = []

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def stats(self) -> list[Stats]:
        """Live counters per server (read from another thread; only ints, so this is safe)."""
        return [s.stats for s in self.servers]

    def start(self) -> SimulatorThread:
        if self._thread is not None:
            raise RuntimeError("SimulatorThread can only be started once")
        # The loop is created here so stop() can always reach it, even during startup.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="esl-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.stop()
            raise TimeoutError(f"simulator did not start within {self._start_timeout} s")
        if self._error is not None:
            self.stop()
            raise RuntimeError("simulator failed to start") from self._error
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            try:
                loop.call_soon_threadsafe(self._request_stop)
            except RuntimeError:
                pass  # loop already closed: the thread is finishing on its own
        thread.join(self._stop_timeout)
        if thread.is_alive():
            raise TimeoutError(f"simulator did not stop within {self._stop_timeout} s")

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- everything below runs in the simulator thread -------------------------------------

    def _request_stop(self) -> None:
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    def _run(self) -> None:
        assert self._loop is not None
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = self._error or exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._ready.set()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        try:
            servers = await start_fleet(
                self.fleet,
                host=self._host,
                base_port=self._base_port,
                latency_ms=self._latency_ms,
                capacity=self._capacity,
                faults=self._faults,
                overload_status=self._overload_status,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            return
        self.servers = servers
        self._ready.set()
        try:
            if not self._stop_requested:
                await self._stop_event.wait()
        finally:
            await stop_fleet(servers)
