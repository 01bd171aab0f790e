"""Plain ``requests`` + ``ThreadPoolExecutor(16)`` baseline: the obvious synchronous client.

Three waves on one pool of 16 threads, each thread with its own keep-alive ``requests.Session``:
list every server's stores, walk every store's pages (stores in parallel, pages in order), then
fetch every detail. 429/5xx are retried by urllib3's ``Retry`` with a short backoff, honouring
``Retry-After``; anything else fails the run.

    python -m benchmarks.requests_threads --server URL [--server URL ...] --date YYYY-MM-DD --out DIR
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

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

THREADS = 16
TIMEOUT_S = 60
RETRY = Retry(total=10, backoff_factor=0.05, status_forcelist=(429, 500, 502, 503, 504))

_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=THREADS, max_retries=RETRY)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session = session
    return session


def _get(url: str) -> Any:
    response = _session().get(url, timeout=TIMEOUT_S)
    response.raise_for_status()
    return data_of(response.json())


def _store_ids(server: str, store: str) -> list[str]:
    ids: list[str] = []
    number = 1
    while True:
        page = _get(server + page_path(store, number))
        ids += [entry["esl_id"] for entry in page["esls"] or []]
        if number >= page["total_page"]:
            return ids
        number += 1


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    cutoff = cutoff_ms(args)
    servers = [url.rstrip("/") for url in args.server]
    with ThreadPoolExecutor(THREADS) as pool:
        users = list(pool.map(lambda s: _get(s + users_path()), servers))
        stores = [(s, code) for s, listed in zip(servers, users, strict=True) for code in store_codes(listed)]
        ids = list(pool.map(lambda pair: _store_ids(*pair), stores))
        labels = [(s, code, i) for (s, code), listed in zip(stores, ids, strict=True) for i in listed]

        def row(label: tuple[str, str, str]) -> list[str] | None:
            server, store, esl_id = label
            return to_row(_get(server + detail_path(esl_id)), store, server, cutoff)

        rows = [r for r in pool.map(row, labels) if r is not None]
    write_csv(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
