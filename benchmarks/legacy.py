"""Legacy-style baseline, written from the legacy tool's description (no code of it is used).

A ``ThreadPoolExecutor`` of 3; each thread drains one server in its own ``asyncio.run`` loop with an
aiohttp session and a semaphore of 4. A server's stores run concurrently, but within a store pages
are walked one after another, each page's details are fetched one by one, and the client sleeps
``--page-sleep`` seconds (1.0 like the legacy tool) after every page. All rows stay in memory until
the end, as in the legacy tool. No retries: any failure fails the run.

    python -m benchmarks.legacy --server URL [--server URL ...] --date YYYY-MM-DD --out DIR
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp

from benchmarks.common import (
    base_parser,
    cutoff_ms,
    data_of,
    detail_path,
    page_path,
    store_codes,
    to_row,
    users_path,
    write_csv,
)

THREADS = 3
PER_SERVER = 4
TIMEOUT = aiohttp.ClientTimeout(total=60)


class _Server:
    def __init__(self, url: str, session: aiohttp.ClientSession, cutoff: int, page_sleep: float) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.cutoff = cutoff
        self.page_sleep = page_sleep
        self.slots = asyncio.Semaphore(PER_SERVER)

    async def get(self, path: str) -> Any:
        async with self.slots:
            async with self.session.get(self.url + path) as response:
                response.raise_for_status()
                return data_of(await response.json())

    async def store_rows(self, store: str) -> list[list[str]]:
        rows: list[list[str]] = []
        number = 1
        while True:
            page = await self.get(page_path(store, number))
            for entry in page["esls"] or []:
                row = to_row(await self.get(detail_path(entry["esl_id"])), store, self.url, self.cutoff)
                if row is not None:
                    rows.append(row)
            await asyncio.sleep(self.page_sleep)
            if number >= page["total_page"]:
                return rows
            number += 1


async def _server_rows(url: str, cutoff: int, page_sleep: float) -> list[list[str]]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        server = _Server(url, session, cutoff, page_sleep)
        stores = store_codes(await server.get(users_path()))
        per_store = await asyncio.gather(*(server.store_rows(s) for s in stores))
    return [row for rows in per_store for row in rows]


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--page-sleep", type=float, default=1.0, help="seconds after every page")
    args = parser.parse_args(argv)
    cutoff = cutoff_ms(args)
    with ThreadPoolExecutor(THREADS) as pool:
        # One event loop per thread (asyncio.run), never one loop shared across threads.
        results = list(
            pool.map(lambda url: asyncio.run(_server_rows(url, cutoff, args.page_sleep)), args.server)
        )
    write_csv(args, (row for rows in results for row in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
