"""Per-server concurrency limit that adapts to how the server copes (AIMD with a latency signal).

Weak in-store servers differ a lot: some take 16 requests at once, some choke at 3. A fixed limit is
either too timid for the first or too rough for the second. This limiter starts at 1 and:

* grows by one after a full window of fast, successful requests at the current limit (additive
  increase) while latency stays near its baseline, up to ``max_limit``;
* halves on an overload signal (HTTP 429/503/504, a timeout), at most once per window so one burst
  of failures counts once (multiplicative decrease);
* shrinks by a quarter when latency climbs well above its baseline (the server is queueing).

It resizes in place: waiting requests are released as soon as the limit grows. With
``adaptive=False`` it is a plain fixed limit of ``max_limit``. One limiter per server, used by one
event loop (the server's thread); it holds no lock across threads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Latency counts as "rising" above this multiple of the baseline plus this absolute slack; the slack
# keeps sub-millisecond jitter on a fast local server from looking like congestion.
LATENCY_TOLERANCE = 2.0
LATENCY_SLACK_S = 0.005
# The baseline is the lowest latency seen, allowed to drift up slowly so a server that is simply
# slower today is not read as congested forever.
BASELINE_DRIFT = 1.02
EWMA_WEIGHT = 0.2


@dataclass
class Outcome:
    """What one request told us; the client fills it in while holding its slot."""

    answered: bool = False
    overloaded: bool = False
    reason: str = ""


class AdaptiveLimiter:
    def __init__(self, max_limit: int, *, name: str = "", adaptive: bool = True, min_limit: int = 1) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        self.name = name
        self.adaptive = adaptive
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.limit = min_limit if adaptive else max_limit
        self.in_flight = 0
        self.changes = 0
        # FIFO of waiting requests: a freed slot wakes exactly one of them, never all (with hundreds
        # of details queued per server, waking everyone on every release costs more than the HTTP).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._baseline_s: float | None = None
        self._recent_s: float | None = None
        self._window_done = 0  # completions since the limit last changed
        self._since_decrease = max_limit  # completions since the last decrease (first one: allowed)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Outcome]:
        """Hold one unit of the limit for a request; report its outcome by filling the yielded object."""
        await self._acquire()
        outcome = Outcome()
        started = time.monotonic()
        try:
            yield outcome
        finally:
            self.in_flight -= 1
            self.record(outcome, time.monotonic() - started)
            self._wake()

    async def _acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.in_flight -= 1  # the slot arrived just as we were cancelled: pass it on
                self._wake()
            elif granted in self._waiters:
                self._waiters.remove(granted)
            raise

    def _wake(self) -> None:
        """Hand free slots to the longest-waiting requests (the slot is counted for them here)."""
        while self._waiters and self.in_flight < self.limit:
            granted = self._waiters.popleft()
            if not granted.done():
                self.in_flight += 1
                granted.set_result(None)

    def record(self, outcome: Outcome, latency_s: float) -> None:
        """Feed one finished request into the control law (pure bookkeeping, unit-testable)."""
        if not self.adaptive:
            return
        self._window_done += 1
        self._since_decrease += 1
        if outcome.overloaded:
            self._decrease(self.limit // 2, outcome.reason or "overload")
            return
        if not outcome.answered:
            return  # a connection error or cancellation says nothing about load
        self._recent_s = (
            latency_s
            if self._recent_s is None
            else (EWMA_WEIGHT * latency_s + (1 - EWMA_WEIGHT) * self._recent_s)
        )
        if self._baseline_s is None or latency_s < self._baseline_s:
            self._baseline_s = latency_s
        if self._recent_s > self._baseline_s * LATENCY_TOLERANCE + LATENCY_SLACK_S:
            self._decrease(self.limit * 3 // 4, f"latency {self._recent_s * 1000:.0f} ms")
        elif self._window_done >= self.limit and self.limit < self.max_limit:
            self._set(self.limit + 1, "latency steady")
            self._baseline_s *= BASELINE_DRIFT

    def _decrease(self, target: int, reason: str) -> None:
        # Once per window: the requests already in flight when the server choked all report it.
        if self._since_decrease < self.limit:
            return
        self._since_decrease = 0
        self._set(max(self.min_limit, min(target, self.limit - 1)), reason)

    def _set(self, limit: int, reason: str) -> None:
        if limit == self.limit:
            return
        log.info("%s: concurrency %d -> %d (%s)", self.name, self.limit, limit, reason)
        self.limit = limit
        self.changes += 1
        self._window_done = 0
        self._wake()  # a grown limit lets waiting requests go at once (resize in place)
