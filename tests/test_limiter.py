"""The adaptive concurrency limiter's control law, on synthetic latency and loss sequences."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from esl_operators.limiter import LAG_GRAIN_S, AdaptiveLimiter, LoopLag, Outcome

OK = Outcome(answered=True)
BUSY = Outcome(answered=True, overloaded=True, reason="HTTP 503")
TIMEOUT = Outcome(overloaded=True, reason="timeout")
NO_ANSWER = Outcome()


def feed(limiter: AdaptiveLimiter, outcome: Outcome, latency_s: float, times: int) -> list[int]:
    """Record ``times`` completions; return the limit after each."""
    seen = []
    for _ in range(times):
        limiter.record(outcome, latency_s)
        seen.append(limiter.limit)
    return seen


def test_fixed_mode_never_moves() -> None:
    limiter = AdaptiveLimiter(6, adaptive=False)
    assert limiter.limit == 6
    feed(limiter, BUSY, 0.5, 10)
    feed(limiter, OK, 0.01, 50)
    assert (limiter.limit, limiter.changes) == (6, 0)


def test_additive_increase_one_step_per_full_window_up_to_the_max() -> None:
    limiter = AdaptiveLimiter(4)
    assert limiter.limit == 1
    # windows of 1, 2 and 3 completions at limits 1, 2, 3; then it stays at the max
    assert feed(limiter, OK, 0.010, 10) == [2, 2, 3, 3, 3, 4, 4, 4, 4, 4]
    assert limiter.changes == 3


def test_overload_halves_once_per_window() -> None:
    limiter = AdaptiveLimiter(16)
    feed(limiter, OK, 0.010, 200)
    assert limiter.limit == 16
    assert feed(limiter, BUSY, 0.010, 1) == [8]
    # the other requests that were in flight when the server choked report it too: counted once
    assert feed(limiter, BUSY, 0.010, 7) == [8] * 7
    assert feed(limiter, TIMEOUT, 5.0, 1) == [4]
    assert feed(limiter, BUSY, 0.010, 20)[-1] == 1  # never below the minimum


def queueing_server(capacity: int, service_s: float) -> Callable[[int], float]:
    """Latency of a server that serves ``capacity`` requests at once and queues the rest."""
    return lambda in_flight: service_s * max(1.0, in_flight / capacity)


def feed_model(
    limiter: AdaptiveLimiter, latency: Callable[[int], float], times: int, lag: Callable[[int], float]
) -> list[int]:
    """Record ``times`` answers whose latency (and the loop's lag) depend on the limit they ran at."""
    seen = []
    for _ in range(times):
        limiter.record(OK, latency(limiter.limit) + lag(limiter.limit), lag(limiter.limit))
        seen.append(limiter.limit)
    return seen


def no_lag(in_flight: int) -> float:
    return 0.0


def test_latency_that_grows_with_concurrency_is_cut_after_a_probe_and_steady_latency_regrows() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    assert limiter.limit == 8
    # the server now serves 2 at once and queues the rest: 80 ms at 8 in flight, 40 ms at 4, 20 at 2
    limits = feed_model(limiter, queueing_server(2, 0.020), 60, no_lag)
    # 3 answers lift the smoothed latency over 2 x 20 ms + 5 ms; a window of 8 measures 80 ms at 8;
    # the probe sends 4 at once and gets 40 ms (half: the server queues), so 4 is kept, then 5...
    assert limits[:11] == [8] * 10 + [4]
    assert limits[11:22] == [4] * 11
    # ...and at 5 (50 ms) the same again: measured, halved to 2, kept; it climbs back from there
    assert limits[22:] == [5] * 13 + [2] * 10 + [3] * 3 + [4] * 4 + [5] * 5 + [6] * 3
    assert (limiter.latency_cuts, limiter.restored, limiter.overload_cuts) == (2, 0, 0)
    low = limiter.limit
    feed(limiter, OK, 0.020, 200)  # back to normal: the EWMA settles, the limit climbs again
    assert limiter.limit == 8 > low


def test_a_loaded_client_never_lowers_the_limit() -> None:
    # The server answers in 20 ms at any concurrency; the client's loop is late by 15 ms per request
    # in flight (CPU contention that grows with its own work): latency seen rises to 140 ms at 8.
    limiter = AdaptiveLimiter(8)
    limits = feed_model(limiter, lambda n: 0.020, 400, lambda n: 0.015 * n)
    assert limits == sorted(limits) and limits[-1] == 8
    assert (limiter.changes, limiter.latency_cuts, limiter.restored, limiter._probe) == (7, 0, 0, None)


def test_the_same_load_without_the_lag_discount_is_a_probe_and_a_restore() -> None:
    # What the lag meter does not see (the server's machine is loaded too: 20 ms becomes 120 ms at
    # any concurrency) is caught by the probe: latency does not fall at half the limit.
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    # 2 answers to cross the threshold, a window of 8 at 8 (120 ms), then the probe at 4 ...
    assert feed(limiter, OK, 0.120, 10) == [8] * 9 + [4]
    # ... whose 8 answers take as long: not the server, 8 is restored
    assert feed(limiter, OK, 0.120, 8) == [4] * 7 + [8]
    assert (limiter.restored, limiter.latency_cuts, limiter.changes) == (1, 0, 7 + 2)
    # the baseline took the slower latency: the same slowness sets off no second probe
    assert feed(limiter, OK, 0.120, 200) == [8] * 200
    assert limiter.restored == 1
    # a server that then queues for real is still cut: 300 ms at 8, 150 ms at 4
    limits = feed_model(limiter, lambda n: 0.0375 * n, 30, no_lag)
    assert (limits, limiter.latency_cuts, limiter.restored) == ([8] * 10 + [4] * 20, 1, 1)


def test_a_latency_blip_that_is_over_before_the_probe_changes_nothing() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    assert feed(limiter, OK, 0.200, 2) == [8, 8]  # the smoothed latency crosses the threshold
    assert feed(limiter, OK, 0.020, 100) == [8] * 100  # the window at 8 says 20 ms: no probe
    assert (limiter.changes, limiter.restored, limiter.latency_cuts) == (7, 0, 0)


def test_a_probe_counts_only_requests_sent_at_the_lower_limit() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    feed(limiter, OK, 0.120, 10)
    assert limiter.limit == 4
    old = limiter._epoch - 1  # requests already in flight at 8 when the probe began: 120 ms
    for _ in range(20):
        limiter.record(OK, 0.120, epoch=old)
    assert limiter.limit == 4  # they say nothing about 4 in flight
    feed(limiter, OK, 0.040, 8)  # a third of the latency at half the limit: the server queues
    assert (limiter.limit, limiter.latency_cuts, limiter.restored) == (4, 1, 0)


def test_an_overload_answer_during_a_probe_ends_it_as_the_cut() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    feed(limiter, OK, 0.120, 10)
    assert limiter.limit == 4
    assert feed(limiter, BUSY, 0.010, 1) == [4]  # the probe's halving stands as the overload's
    assert (limiter.overload_cuts, limiter.restored, limiter._probe) == (1, 0, None)
    assert feed(limiter, BUSY, 0.010, 3) == [4] * 3  # once per window, as always
    assert feed(limiter, BUSY, 0.010, 1) == [2]


def test_an_overload_answer_while_the_probe_measures_halves_at_once() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    feed(limiter, OK, 0.120, 4)  # the probe is measuring at 8
    assert limiter._probe is not None and limiter.limit == 8
    assert feed(limiter, TIMEOUT, 5.0, 1) == [4]
    assert (limiter.overload_cuts, limiter._probe) == (1, None)


def test_jitter_on_a_fast_local_server_is_not_congestion() -> None:
    limiter = AdaptiveLimiter(8)
    for i in range(400):
        limiter.record(OK, 0.0004 if i % 2 else 0.003)  # 0.4 ms .. 3 ms: within the 5 ms slack
    assert (limiter.limit, limiter.changes) == (8, 7)  # only the seven increases


def test_connection_errors_say_nothing_about_load() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, NO_ANSWER, 0.0, 50)
    assert (limiter.limit, limiter.changes) == (1, 0)


def test_changes_are_logged_at_debug_and_one_summary_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="esl_operators.limiter")
    limiter = AdaptiveLimiter(3, name="esl_sh_001")
    feed(limiter, OK, 0.01, 3)
    feed(limiter, BUSY, 0.01, 1)
    limiter.close()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "esl_sh_001: concurrency 1 -> 2 (latency steady)"),
        ("DEBUG", "esl_sh_001: concurrency 2 -> 3 (latency steady)"),
        ("DEBUG", "esl_sh_001: concurrency 3 -> 1 (HTTP 503)"),
        (
            "INFO",
            "esl_sh_001: concurrency 1 at the end (peak 3 of 3; 3 changes; cuts: 1 on overload, 0 on "
            "latency; 0 latency probes restored; loop lag 0.0 ms per 10 ms)",
        ),
    ]


def test_a_fixed_limit_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="esl_operators.limiter")
    limiter = AdaptiveLimiter(3, name="esl_sh_001", adaptive=False)
    feed(limiter, BUSY, 0.01, 5)
    limiter.close()
    assert (caplog.records, limiter.lag) == ([], None)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="1 <= min_limit <= max_limit"):
        AdaptiveLimiter(0)


def test_slots_enforce_the_limit_and_a_grown_limit_releases_waiters() -> None:
    async def main() -> tuple[int, int, int]:
        limiter = AdaptiveLimiter(3)
        peak = 0

        async def request() -> None:
            nonlocal peak
            async with limiter.slot() as outcome:
                peak = max(peak, limiter.in_flight)
                assert limiter.in_flight <= limiter.limit
                await asyncio.sleep(0.001)
                outcome.answered = True

        await asyncio.wait_for(asyncio.gather(*(request() for _ in range(30))), timeout=10)
        return peak, limiter.limit, limiter.in_flight

    peak, limit, in_flight = asyncio.run(main())
    assert (peak, limit, in_flight) == (3, 3, 0)


def test_waiters_are_served_first_come_first_served_and_cancellation_frees_nothing_twice() -> None:
    async def main() -> tuple[list[int], int, int]:
        limiter = AdaptiveLimiter(1, adaptive=False)
        order: list[int] = []
        gate = asyncio.Event()

        async def request(number: int) -> None:
            async with limiter.slot() as outcome:
                order.append(number)
                await gate.wait()
                outcome.answered = True

        first = asyncio.create_task(request(0))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(request(n)) for n in range(1, 6)]
        await asyncio.sleep(0)
        waiting[1].cancel()  # request 2 gives up while queued: its place must not leak a slot
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting, return_exceptions=True), timeout=10)
        return order, limiter.in_flight, len(limiter._waiters)

    order, in_flight, queued = asyncio.run(main())
    assert (order, in_flight, queued) == ([0, 1, 3, 4, 5], 0, 0)


def test_the_loop_lag_meter_counts_how_late_its_timer_fires() -> None:
    clock, active = [0.0], [True]
    loop = asyncio.new_event_loop()
    try:
        lag = LoopLag(lambda: active[0], interval_s=0.010, clock=lambda: clock[0])
        lag.start(loop)  # due at 10 ms
        clock[0] = 0.0105
        lag._fire()  # 0.5 ms late: within the selector's 1 ms grain, not load; next due at 20.5 ms
        clock[0] = 0.0555
        lag._fire()  # 35 ms late: the loop was busy or the process waited for a CPU; 34 ms counted
        active[0] = False
        clock[0] = 0.0655
        lag._fire()  # on time; no request in flight any more: the timer stops itself
        assert (round(lag.total_s, 9), lag.ticks, lag.running) == (0.034, 3, False)
    finally:
        loop.close()


class Observed(AdaptiveLimiter):
    """The real limiter, remembering what each finished request fed into the control law."""

    def __init__(self, max_limit: int) -> None:
        super().__init__(max_limit)
        self.fed: list[tuple[float, float]] = []

    def record(
        self, outcome: Outcome, latency_s: float, lag_s: float = 0.0, epoch: int | None = None
    ) -> None:
        self.fed.append((latency_s, lag_s))
        super().record(outcome, latency_s, lag_s, epoch)


def test_a_request_is_charged_the_loop_lag_it_waited_through() -> None:
    async def main() -> tuple[Observed, bool]:
        limiter = Observed(4)
        async with limiter.slot() as outcome:
            time.sleep(0.060)  # the loop cannot run its timer (due 10 ms after the slot was taken)
            await asyncio.sleep(0.001)  # the late timer fires now, while the request is in flight
            outcome.answered = True
        assert limiter.lag is not None and limiter.lag.running
        await asyncio.sleep(0.050)  # idle: the next tick sees nothing in flight and stops the timer
        return limiter, limiter.lag.running

    limiter, running = asyncio.run(main())
    [(latency_s, lag_s)] = limiter.fed
    assert latency_s >= 0.060 and 0.060 - 0.010 - LAG_GRAIN_S <= lag_s <= latency_s
    assert limiter._recent_s == pytest.approx(latency_s - lag_s)  # only the server's share counts
    assert running is False
