"""An independent oracle: the rows the export must publish, computed straight from the dataset.

Deliberately written without the package's record code, so a bug there cannot hide in both places.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esl_operators.simulator import Fleet

FAMILIES = ["stellarPro", "TI-CC2640", "Telink-8258", "nebular"]


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def expected_row(d: dict[str, Any], store: str, server: str) -> list[str]:
    days = (d["last_hb_time"] - d["create_time"]) // 86_400_000
    freq = d["refresh_times"] / days if days > 0 else 0.0
    pid = d["product_id"]
    family = FAMILIES[(int(hex(pid)[2:4], 16) >> 1) & 3] if pid else ""
    return [
        d["esl_id"],
        store,
        server,
        _iso(d["create_time"]),
        _iso(d["last_hb_time"]),
        str(int(d["battery"])),
        d["screen_size"],
        d["description"] or "",
        str(d["refresh_times"]),
        str(d["led_times"]),
        d["firmware"],
        d["rom"],
        d["extesl_id"],
        "" if pid is None else str(pid),
        family,
        str(d["set_wor"]),
        str(d["temperature"]) if "temperature" in d else "",
        repr(freq),
    ]


def expected_partition(fleet: Fleet, servers: dict[int, str], cutoff_ms: int) -> list[list[str]]:
    """Rows of one partition: the given server indexes (-> connection ids), sorted as published."""
    rows = [
        expected_row(d, store, name)
        for index, name in servers.items()
        for store, details in fleet.servers[index].stores.items()
        if store != "default"
        for d in details
        if d["last_hb_time"] >= cutoff_ms
    ]
    return sorted(rows, key=lambda r: (float(r[17]), r[0], r[2], r[1]))


# --- a store that changes while it is paged ------------------------------------------------------


def pages_of(labels: list[Any], page_size: int) -> int:
    return -(-len(labels) // page_size)


def labels_read(
    before: list[Any], after: list[Any], page_size: int, changed_after: int
) -> tuple[list[Any], int]:
    """What a correct client reads of a store that changes from ``before`` to ``after`` right after
    its page ``changed_after`` is served, and how many pages it requests.

    The contract: every page's ``total_page`` is believed. Pages up to ``changed_after`` show
    ``before``, later ones ``after``; the walk requests the next page while the page in hand says there
    is one. So a label inserted at the front (onto a page already read) is not read in this run, a
    label pushed from page k onto page k+1 is read twice (once on each), and a label appended onto a
    new last page is read.
    """
    read: list[Any] = []
    number = 1
    while True:
        labels = before if number <= changed_after else after
        read += labels[(number - 1) * page_size : number * page_size]
        if number >= pages_of(labels, page_size):
            return read, number
        number += 1
