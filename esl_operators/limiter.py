"""Per-server concurrency limit that adapts to how the server copes, and tells a busy client from a
busy server (issue 11, target 5). About 350 lines, a third of them this design note and the lag
meter: the control law, the meter and the slot share one request's lifetime.

Weak in-store servers differ a lot: some take 16 requests at once, some choke at 3. A fixed limit is
either too timid for the first or too rough for the second. This limiter starts at 1 and:

* grows by one after a full window of successful requests at the current limit (additive
  increase) while latency stays near its baseline, up to ``max_limit``;
* halves at once on an overload answer (HTTP 429/503/504, a timeout), at most once per window so one
  burst of failures counts once (multiplicative decrease): the server said so, nothing to guess;
* lowers the limit on rising latency only when the server is the cause, found out in two steps.

**The client's own delay is discounted.** A request's latency is what the server took plus what the
client took to send it and to notice the answer. On a loaded machine (other processes, the GIL held
by other servers' threads, a long callback) the second part grows and the server looks slower than
it is: that is what used to cut a healthy server to 1 in flight. :class:`LoopLag` measures it: a
timer due every ``LAG_TICK_S`` on the server's event loop adds how late it fired to a running total;
a loop that is late for its own timer is late for every answer as well. Each request is charged the
lag that accrued while it was in flight, and only ``latency - lag`` (the server's share) is compared
with the baseline. Counting every stall of the request's lifetime errs on the side of "the client was
slow"; the baseline is taken from latency *as measured* (lag included, so never below what the
server really takes), so both errors make the limiter less eager to cut, never more. The timer runs
only while requests are in flight (an idle loop costs nothing); at work, one callback per 10 ms.

**A latency cut needs latency that grows with concurrency.** When the server's share stays well above
the baseline (``LATENCY_TOLERANCE`` times plus ``LATENCY_SLACK_S``) after a full window at the current
limit, the limiter *probes*: it measures a window at this limit (the mean of ``max(8, limit)``
answers; a blip already over ends the probe here), then as many answers of requests sent at half the
limit. A queueing server answers about twice as fast with half the requests in flight; a server (or a
machine) that is merely slower answers as slowly. At most ``PROBE_RATIO`` of the first mean: the
halved limit is kept (the cut). Otherwise the limit is restored, and that latency level counts as
cleared: no new probe until latency exceeds it by 1 / ``PROBE_RATIO``. An overload answer during the
probe ends it as a cut (the halving it would have caused anyway).

**Cheap per request**: two clock reads, two reads of the lag total and a few float operations per
request; waiting requests are handed free slots first come, first served (FIFO). With
``adaptive=False`` it is a plain fixed limit of ``max_limit``, with no timer and no bookkeeping. One
limiter per server, used by one event loop (the server's thread); it holds no lock across threads.

**Logging**: every change is a DEBUG line; :meth:`AdaptiveLimiter.close` logs one INFO summary per
server (final and peak limit, cuts, restored probes, the loop's mean lag), instead of the ten or so
INFO lines per server the limiter used to write while it climbed: a run of 50 servers said little
else. A summary, not rate-limited lines, because what a reader wants per server is where it ended and
why, and DEBUG still has every step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Latency counts as "rising" above this multiple of the baseline plus this absolute slack; the slack
# keeps sub-millisecond jitter on a fast local server from looking like congestion.
LATENCY_TOLERANCE = 2.0
LATENCY_SLACK_S = 0.005
# The baseline is the lowest smoothed latency seen (as measured), allowed to drift up slowly so a
# server that is simply slower today is not read as congested forever.
BASELINE_DRIFT = 1.02
EWMA_WEIGHT = 0.2
# A probe at half the limit keeps the cut when latency falls to this share of what it was or below;
# a queueing server answers in about half the time (0.5), a merely slow one in the same time (1.0).
PROBE_RATIO = 0.6
PROBE_MIN_SAMPLES = 8
# The lag timer's period, and the lateness every timer has by design (the selector's timeout is in
# whole milliseconds): not load, so not counted.
LAG_TICK_S = 0.010
LAG_GRAIN_S = 0.001


@dataclass
class Outcome:
    """What one request told us; the client fills it in while holding its slot."""

    answered: bool = False
    overloaded: bool = False
    reason: str = ""


class LoopLag:
    """Running total of how late the event loop runs its own timer, while ``active()`` holds."""

    def __init__(
        self,
        active: Callable[[], bool],
        *,
        interval_s: float = LAG_TICK_S,
        clock: Callable[[], float] = time.monotonic,  # the loop's own clock (loop.time())
    ) -> None:
        self.total_s = 0.0
        self.ticks = 0
        self.running = False
        self._active = active
        self.interval_s = interval_s
        self._clock = clock
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self.running = loop, True
        self._schedule(self._clock())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self.running = None, False

    def tick(self, now: float) -> float:
        """Count the lateness of a timer due at the last scheduled time and firing at ``now``."""
        lag = max(0.0, now - self._due - LAG_GRAIN_S)
        self.total_s += lag
        self.ticks += 1
        return lag

    def _schedule(self, now: float) -> None:
        # From the actual firing time, not the missed one: a long stall counts once, not as a burst.
        self._due = now + self.interval_s
        assert self._loop is not None
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self._clock()
        self.tick(now)
        if self._active():
            self._schedule(now)
        else:
            self._handle, self.running = None, False


@dataclass
class _Probe:
    """Latency at ``from_limit`` (first ``samples`` answers), then at half of it (as many again)."""

    from_limit: int
    epoch: int  # the limiter's epoch the answers counted must have started under
    samples: int
    before_s: float | None = None  # the mean at ``from_limit``, once measured
    total_s: float = 0.0
    count: int = 0


class AdaptiveLimiter:
    def __init__(
        self,
        max_limit: int,
        *,
        name: str = "",
        adaptive: bool = True,
        min_limit: int = 1,
        lag: LoopLag | None = None,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        self.name = name
        self.adaptive = adaptive
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.limit = min_limit if adaptive else max_limit
        self.peak = self.limit
        self.in_flight = 0
        self.changes = 0
        self.overload_cuts = 0
        self.latency_cuts = 0
        self.restored = 0
        self.lag = (lag or LoopLag(self._busy)) if adaptive else None
        # FIFO of waiting requests: a freed slot wakes exactly one of them, never all (with hundreds
        # of details queued per server, waking everyone on every release costs more than the HTTP).
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._baseline_s: float | None = None  # lowest smoothed latency as measured, lag included
        self._raw_s: float | None = None  # smoothed latency as measured
        self._recent_s: float | None = None  # smoothed server's share (latency less the loop's lag)
        self._cleared_s = 0.0  # a latency a probe found not to be the server's doing (0: none)
        self._window_done = 0  # completions since the limit last changed
        self._since_decrease = max_limit  # completions since the last decrease (first one: allowed)
        self._epoch = 0  # bumped on every change: which limit a request started under
        self._probe: _Probe | None = None

    def _busy(self) -> bool:
        return self.in_flight > 0 or bool(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Outcome]:
        """Hold one unit of the limit for a request; report its outcome by filling the yielded object."""
        await self._acquire()
        outcome = Outcome()
        lag = self.lag
        if lag is None:  # fixed limit: nothing to measure
            try:
                yield outcome
            finally:
                self.in_flight -= 1
                self._wake()
            return
        if not lag.running:
            lag.start(asyncio.get_running_loop())
        epoch, lag_before, started = self._epoch, lag.total_s, time.monotonic()
        try:
            yield outcome
        finally:
            self.in_flight -= 1
            self.record(outcome, time.monotonic() - started, lag.total_s - lag_before, epoch)
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

    def record(
        self, outcome: Outcome, latency_s: float, lag_s: float = 0.0, epoch: int | None = None
    ) -> None:
        """Feed one finished request into the control law (pure bookkeeping, unit-testable).

        ``lag_s``: the event loop's lag while it was in flight; ``epoch``: the limiter's epoch when it
        started (None: under the current limit).
        """
        if not self.adaptive:
            return
        self._window_done += 1
        self._since_decrease += 1
        probe = self._probe
        if outcome.overloaded:
            if probe is not None and probe.before_s is not None:
                self._end_probe(probe, cut=True, reason=outcome.reason or "overload")
                return
            self._probe = None
            self._decrease(self.limit // 2, outcome.reason or "overload")
            return
        if not outcome.answered:
            return  # a connection error or cancellation says nothing about load
        own_s = max(0.0, latency_s - lag_s)  # the server's share
        if probe is not None:
            if epoch is None or epoch == probe.epoch:  # only requests sent at the limit measured
                probe.total_s += own_s
                probe.count += 1
                if probe.count >= probe.samples:
                    self._probe_step(probe)
            return
        if self._recent_s is None or self._raw_s is None:
            self._recent_s, self._raw_s, self._baseline_s = own_s, latency_s, latency_s
        recent = self._recent_s = EWMA_WEIGHT * own_s + (1 - EWMA_WEIGHT) * self._recent_s
        raw = self._raw_s = EWMA_WEIGHT * latency_s + (1 - EWMA_WEIGHT) * self._raw_s
        if self._baseline_s is None or raw < self._baseline_s:
            self._baseline_s = raw
        if self._rising(recent):
            # Not before a full window at this limit and since the last decrease; no increase meanwhile.
            if self._window_done >= self.limit and self._since_decrease >= self.limit:
                if max(self.min_limit, self.limit // 2) < self.limit:  # else nothing to learn or cut
                    samples = max(PROBE_MIN_SAMPLES, self.limit)
                    self._probe = _Probe(self.limit, self._epoch, samples)
        elif self._window_done >= self.limit and self.limit < self.max_limit:
            self._set(self.limit + 1, "latency steady")
            self._baseline_s *= BASELINE_DRIFT

    def _rising(self, latency_s: float) -> bool:
        assert self._baseline_s is not None
        threshold = self._baseline_s * LATENCY_TOLERANCE + LATENCY_SLACK_S
        return latency_s > max(threshold, self._cleared_s / PROBE_RATIO)

    def _probe_step(self, probe: _Probe) -> None:
        mean_s = probe.total_s / probe.count
        if probe.before_s is not None:
            self._end_probe(probe, cut=mean_s <= PROBE_RATIO * probe.before_s)
            return
        # The smoothed latency lags behind the answers: the mean of a window at this limit is what the
        # half limit is compared with (and a blip that is already over ends the probe here).
        if not self._rising(mean_s):
            self._probe, self._recent_s = None, mean_s
            return
        probe.before_s, probe.total_s, probe.count = mean_s, 0.0, 0
        self._set(max(self.min_limit, self.limit // 2), f"probe: latency {mean_s * 1000:.0f} ms")
        probe.epoch = self._epoch

    def _end_probe(self, probe: _Probe, *, cut: bool, reason: str = "") -> None:
        self._probe = None
        before_s = probe.before_s or 0.0
        at_half_s = probe.total_s / probe.count if probe.count else before_s
        said = f"latency {before_s * 1000:.0f} ms at {probe.from_limit}, "
        said += f"{at_half_s * 1000:.0f} ms at {self.limit}"
        if cut:
            # Kept at the probe's limit, half the one before: the multiplicative decrease.
            self._recent_s, self._cleared_s = at_half_s, 0.0
            self._since_decrease, self._window_done = 0, 0
            if reason:
                self.overload_cuts += 1
            else:
                self.latency_cuts += 1
            log.debug(
                "%s: concurrency stays %d (%s)", self.name, self.limit, reason or f"{said}: server queues"
            )
            return
        # Latency did not fall with concurrency: the client or the machine was slow, not the server.
        self.restored += 1
        self._recent_s = before_s
        self._cleared_s = max(before_s, at_half_s)
        self._set(probe.from_limit, f"{said}: not the server, restored")

    def _decrease(self, target: int, reason: str) -> None:
        # Once per window: the requests already in flight when the server choked all report it.
        if self._since_decrease < self.limit:
            return
        self._since_decrease = 0
        before = self.limit
        self._set(max(self.min_limit, min(target, self.limit - 1)), reason)
        if self.limit < before:
            self.overload_cuts += 1
            self._cleared_s = 0.0

    def _set(self, limit: int, reason: str) -> None:
        if limit == self.limit:
            return
        log.debug("%s: concurrency %d -> %d (%s)", self.name, self.limit, limit, reason)
        self.limit = limit
        self.peak = max(self.peak, limit)
        self.changes += 1
        self._epoch += 1
        self._window_done = 0
        self._wake()  # a grown limit lets waiting requests go at once (resize in place)

    def close(self) -> None:
        """The server is done: stop the lag timer and log the one INFO line about this server."""
        if self.lag is None:
            return
        self.lag.stop()
        lag_ms = self.lag.total_s / self.lag.ticks * 1000 if self.lag.ticks else 0.0
        log.info(
            "%s: concurrency %d at the end (peak %d of %d; %d changes; cuts: %d on overload, %d on "
            "latency; %d latency probes restored; loop lag %.1f ms per %.0f ms)",
            self.name, self.limit, self.peak, self.max_limit, self.changes, self.overload_cuts,
            self.latency_cuts, self.restored, lag_ms, self.lag.interval_s * 1000,
        )  # fmt: skip
