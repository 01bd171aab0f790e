"""Per-server progress: log lines every few seconds (Airflow task logs), a tqdm bar on a terminal.

tqdm only reaches Airflow's task log as one event at the end, so the log line is the primary channel.
It is imported only when a bar is shown (a terminal): about 50 ms of imports off every other run.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """Counts ESL details done for one server. Used from that server's thread only."""

    def __init__(self, server: str, *, interval_s: float = 5.0, bar: bool | None = None) -> None:
        self.server = server
        self.done = 0
        self.expected = 0
        self._interval = interval_s
        self._start = time.monotonic()
        self._last_log = self._start
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar: tqdm[None] | None = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(desc=server, unit="esl", leave=False)

    def expect(self, count: int) -> None:
        """Raise the estimate of details to fetch (a store announced its pages)."""
        self.expected += count
        if self._bar is not None:
            self._bar.total = self.expected
            self._bar.refresh()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        now = time.monotonic()
        if now - self._last_log >= self._interval:
            self._last_log = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = self.done / elapsed
        expected = max(self.expected, self.done)
        share = f" ({100 * self.done / expected:.0f}%)" if expected else ""
        eta = f", ETA {(expected - self.done) / rate:.0f}s" if rate > 0 else ""
        return f"{self.server}: {self.done:,}/~{expected:,} ESLs{share}, {rate:.1f}/s{eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        log.info("%s (finished)", self.line())
