"""Retry policy: exponential backoff with full jitter, and ``Retry-After`` parsing.

Full jitter (a uniform draw between 0 and the exponential bound) spreads the retries of many
concurrent requests, so a weak server that just failed is not hit again by all of them at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from esl_operators.settings import default


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed request is tried again.

    :param attempts: total tries per request, the first included.
    :param base_delay_s: bound of the first backoff; it doubles per attempt.
    :param max_delay_s: cap of the exponential bound.
    :param max_retry_after_s: cap of a server's ``Retry-After``, so one header cannot stall a run.
    """

    attempts: int = default("retry_attempts")
    base_delay_s: float = 0.5
    max_delay_s: float = float(default("retry_max_delay_s"))
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("retry delays must not be negative")

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter delay after failed attempt number ``attempt`` (1-based)."""
        bound = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return rng.uniform(0, bound)

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """The wait before the next attempt.

        A server's ``Retry-After`` is honoured (capped) and the jittered backoff is added on top:
        with ``Retry-After: 0`` the backoff alone still grows, so the attempts are not burnt at once.
        """
        waited = self.backoff_s(attempt, rng)
        if retry_after_s is not None:
            waited += min(retry_after_s, self.max_retry_after_s)
        return waited


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # an HTTP date is GMT by definition
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite: unusable
        return None
    return max(seconds, 0.0)
