"""What the two baseline clients share: arguments, envelope checks, the row, the CSV.

Deliberately independent of ``esl_operators`` (a baseline must not borrow our engine's code); the
rows follow the same rules (heartbeat window on the run date, ``default`` store skipped, same
``frequency``), so every client publishes the same number of rows for the same fleet.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

DAY_MS = 86_400_000
DEFAULT_STORE = "default"
HEADER = (
    "esl_id", "store", "server", "created_at", "last_heartbeat_at", "battery", "screen_size",
    "description", "refresh_times", "led_times", "firmware", "rom", "extesl_id", "product_id",
    "set_wor", "temperature", "frequency",
)  # fmt: skip


class ApiError(RuntimeError):
    """An error envelope or an unexpected answer: the baselines do not retry these."""


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every client takes (a subset of ``esl-export fetch``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--server", action="append", required=True, help="server base URL (repeatable)")
    parser.add_argument("--date", required=True, type=lambda t: datetime.strptime(t, "%Y-%m-%d").date())
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--lookback-days", type=int, default=7)
    return parser


def cutoff_ms(args: argparse.Namespace) -> int:
    day = args.date
    anchor = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(anchor.timestamp()) * 1000 - args.lookback_days * DAY_MS


def users_path() -> str:
    return "/api3/users"


def page_path(store: str, number: int) -> str:
    return f"/api3/{quote(store, safe='')}/esls/page/{number}"


def detail_path(esl_id: str) -> str:
    return f"/api3/esls/{quote(esl_id, safe='')}"


def data_of(payload: Any) -> Any:
    """The ``data`` of a success envelope (both envelope styles), else :class:`ApiError`."""
    code = payload.get("error_code", payload.get("status_no"))
    if code != 0:
        raise ApiError(f"error envelope: {payload!r:.200}")
    return payload["data"]


def store_codes(users: list[dict[str, Any]]) -> list[str]:
    return [u["user"] for u in users if u["user"] != DEFAULT_STORE]


def _iso(ms: int | None) -> str:
    return "" if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def to_row(detail: dict[str, Any], store: str, server: str, cutoff: int) -> list[str] | None:
    """The CSV row of one label, or None when its last heartbeat is outside the window."""
    last_hb = detail.get("last_hb_time")
    if last_hb is None or last_hb < cutoff:
        return None
    created, refreshes = detail.get("create_time"), detail.get("refresh_times")
    days = (last_hb - created) // DAY_MS if created is not None else 0
    frequency = refreshes / days if refreshes is not None and days > 0 else 0.0
    battery = detail.get("battery")
    return [
        detail["esl_id"],
        store,
        server,
        _iso(created),
        _iso(last_hb),
        "" if battery is None else str(int(battery)),
        *(_text(detail.get(k)) for k in ("screen_size", "description", "refresh_times", "led_times")),
        *(_text(detail.get(k)) for k in ("firmware", "rom", "extesl_id", "product_id", "set_wor")),
        _text(detail.get("temperature")),
        repr(frequency),
    ]


def write_csv(args: argparse.Namespace, rows: Iterable[list[str]]) -> Path:
    """``OUT/DATE/esl_id_part_1.csv``, sorted by frequency then esl_id, like ours."""
    ordered = sorted(rows, key=lambda r: (float(r[-1]), r[0]))
    path = args.out / args.date.isoformat() / "esl_id_part_1.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(ordered)
    print(f"{path}\t{len(ordered)} rows")
    return path
