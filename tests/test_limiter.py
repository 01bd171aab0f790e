"""The adaptive concurrency limiter's control law, on synthetic latency and loss sequences."""

from __future__ import annotations

import asyncio
import logging

import pytest

from esl_operators.limiter import AdaptiveLimiter, Outcome

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


def test_rising_latency_shrinks_by_a_quarter_and_steady_latency_regrows() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, OK, 0.020, 100)
    assert limiter.limit == 8
    limits = feed(limiter, OK, 0.200, 40)  # the server queues: ten times the baseline
    assert limits[-1] < 8 and limits == sorted(limits, reverse=True)
    assert 6 in limits  # 8 * 3 // 4: a gentle first step
    low = limiter.limit
    feed(limiter, OK, 0.020, 200)  # back to normal: the EWMA settles, the limit climbs again
    assert limiter.limit == 8 > low


def test_jitter_on_a_fast_local_server_is_not_congestion() -> None:
    limiter = AdaptiveLimiter(8)
    for i in range(400):
        limiter.record(OK, 0.0004 if i % 2 else 0.003)  # 0.4 ms .. 3 ms: within the 5 ms slack
    assert (limiter.limit, limiter.changes) == (8, 7)  # only the seven increases


def test_connection_errors_say_nothing_about_load() -> None:
    limiter = AdaptiveLimiter(8)
    feed(limiter, NO_ANSWER, 0.0, 50)
    assert (limiter.limit, limiter.changes) == (1, 0)


def test_changes_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="esl_operators.limiter")
    limiter = AdaptiveLimiter(3, name="esl_sh_001")
    feed(limiter, OK, 0.01, 3)
    feed(limiter, BUSY, 0.01, 1)
    assert [r.getMessage() for r in caplog.records] == [
        "esl_sh_001: concurrency 1 -> 2 (latency steady)",
        "esl_sh_001: concurrency 2 -> 3 (latency steady)",
        "esl_sh_001: concurrency 3 -> 1 (HTTP 503)",
    ]


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
