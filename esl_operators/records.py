"""Pure transforms from ESL-Working detail objects to rows: no I/O here, so all of it is unit-tested.

Two shapes of row exist:

* the *part* row (``PART_COLUMNS``) that fetch tasks stream to their part files: every cell already a
  string, timestamps kept as epoch milliseconds so the aggregate task can render them in any style;
* the *output* row written to ``esl_id_part_N.csv``, in ``STANDARD_COLUMNS`` or ``LEGACY_COLUMNS``
  (see :mod:`esl_operators.csvformat`).
"""

from __future__ import annotations

import calendar
import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from esl_operators.exceptions import RecordError

DAY_MS = 86_400_000
# Anything past 9999-12-31 cannot be rendered as a timestamp; refuse it at the door.
MAX_EPOCH_MS = 253_402_300_799_999

CHIP_FAMILIES = ("stellarPro", "TI-CC2640", "Telink-8258", "nebular")

PART_COLUMNS = (
    "esl_id",
    "store",
    "server",
    "create_time",
    "last_hb_time",
    "battery",
    "screen_size",
    "description",
    "refresh_times",
    "led_times",
    "firmware",
    "rom",
    "extesl_id",
    "product_id",
    "chip_family",
    "set_wor",
    "temperature",
    "frequency",
)


def epoch_ms(moment: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (integer maths, no float rounding).

    Works for pendulum's DateTime too (Airflow hands those out), whose subtraction is not stdlib's.
    """
    if moment.tzinfo is None:
        raise ValueError(f"anchor {moment!r} has no timezone")
    return calendar.timegm(moment.utctimetuple()) * 1000 + moment.microsecond // 1000


def heartbeat_cutoff_ms(anchor: datetime, lookback_days: int) -> int:
    """Oldest ``last_hb_time`` still kept: the anchor minus the lookback window.

    The anchor is the run's logical date (:func:`esl_operators.config.anchor_of`), never the wall
    clock, so a backfill for a past date keeps the labels seen in the window before that date.
    """
    if lookback_days < 0:
        raise ValueError(f"lookback_days must be >= 0, got {lookback_days}")
    return epoch_ms(anchor) - lookback_days * DAY_MS


def frequency(refresh_times: int | None, create_ms: int | None, last_hb_ms: int) -> float:
    """Screen refreshes per whole day of the label's life; 0.0 for labels younger than a day."""
    if refresh_times is None or create_ms is None:
        return 0.0
    whole_days = (last_hb_ms - create_ms) // DAY_MS
    if whole_days <= 0:
        return 0.0
    return refresh_times / whole_days


def chip_family(product_id: int | None) -> str:
    """Chip family encoded in the first byte of ``product_id`` written in hex (no leading zeros)."""
    if not product_id:
        return ""
    if product_id < 0:
        raise ValueError(f"product_id must not be negative, got {product_id}")
    first_byte = int(f"{product_id:x}"[:2], 16)
    return CHIP_FAMILIES[(first_byte >> 1) & 3]


def cell(value: Any) -> str:
    """Render one value for CSV: missing -> empty, floats round-trip exactly, nested -> JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return str(value)


def parse_int(value: Any) -> int | None:
    """An integer field as servers send it: int, integral float or numeric string; None if absent.

    Raises ``ValueError`` with a short reason for anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())  # exact, even beyond 2**53 where a float would round
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not number.is_integer():
        raise ValueError(f"{value!r:.40} is not an integer")
    return int(number)


def last_heartbeat_ms(detail: Mapping[str, Any], max_valid_ms: int = MAX_EPOCH_MS) -> int:
    """The detail's ``last_hb_time``; without a trustworthy one a label cannot be placed in the window."""
    try:
        value = parse_int(detail.get("last_hb_time"))
    except ValueError as exc:
        raise RecordError(detail.get("esl_id"), f"last_hb_time: {exc}") from None
    if value is None:
        raise RecordError(detail.get("esl_id"), "last_hb_time is missing")
    if not 0 <= value <= max_valid_ms:
        raise RecordError(detail.get("esl_id"), f"last_hb_time {value} is negative or in the far future")
    return value


def esl_id_of(entry: Any) -> str:
    """The ESL id of a page entry or detail; ids are strings on the wire but may arrive as numbers."""
    value = entry.get("esl_id") if isinstance(entry, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise RecordError(value, f"esl_id is missing or not a string ({entry!r:.120})")
    return str(value)


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


class _Fields:
    """Reads the optional fields of one detail; a wrong one is blanked and noted, never fatal."""

    def __init__(self, detail: Mapping[str, Any]) -> None:
        self.detail = detail
        self.issues: list[tuple[str, str]] = []

    def integer(self, key: str, low: int, high: int | None) -> int | None:
        try:
            value = parse_int(self.detail.get(key))
        except ValueError as exc:
            self.issues.append((key, str(exc)))
            return None
        if value is not None and (value < low or (high is not None and value > high)):
            self.issues.append((key, f"{value} is outside {low}..{'' if high is None else high}"))
            return None
        return value

    def number(self, key: str) -> str:
        value = self.detail.get(key)
        if value is None or value == "":
            return ""
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return cell(value)
        if isinstance(value, str) and _is_finite_number(value):
            return value.strip()
        self.issues.append((key, f"{value!r:.40} is not a number"))
        return ""


def to_part_row(
    detail: Mapping[str, Any], *, store: str, server: str, max_valid_ms: int = MAX_EPOCH_MS
) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """Turn one ESL detail into a part row (cells in ``PART_COLUMNS`` order) and its field issues.

    Rules (RELIABILITY.md): a missing, malformed, negative or far-future ``last_hb_time`` rejects the
    label (:class:`RecordError`); any other malformed or impossible value (battery outside 0..100,
    negative counts, a bad ``create_time``, a non-numeric temperature) is written empty and reported
    as ``(field, reason)``; the rest of the row is kept.
    """
    esl_id = esl_id_of(detail)
    last_hb = last_heartbeat_ms(detail, max_valid_ms)
    fields = _Fields(detail)
    created = fields.integer("create_time", 0, max_valid_ms)
    battery = fields.integer("battery", 0, 100)
    refresh_times = fields.integer("refresh_times", 0, None)
    led_times = fields.integer("led_times", 0, None)
    product_id = fields.integer("product_id", 0, None)
    temperature = fields.number("temperature")
    row = (
        esl_id,
        store,
        server,
        cell(created),
        cell(last_hb),
        cell(battery),
        cell(detail.get("screen_size")),
        cell(detail.get("description")),
        cell(refresh_times),
        cell(led_times),
        cell(detail.get("firmware")),
        cell(detail.get("rom")),
        cell(detail.get("extesl_id")),
        cell(product_id),
        chip_family(product_id),
        cell(detail.get("set_wor")),
        temperature,
        repr(frequency(refresh_times, created, last_hb)),
    )
    return row, fields.issues
