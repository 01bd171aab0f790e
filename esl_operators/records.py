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

    The anchor is the run's ``data_interval_end``, never the wall clock, so a backfill for a past date
    keeps the labels seen in the window before that date.
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


def _as_int(detail: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    """Read an integer field that some server builds send as a numeric string."""
    value = detail.get(key)
    if value is None or value == "":
        if required:
            raise RecordError(detail.get("esl_id"), f"{key} is missing")
        return None
    if isinstance(value, bool):
        raise RecordError(detail.get("esl_id"), f"{key} is a boolean ({value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
        else:
            if number.is_integer():
                return int(number)
    raise RecordError(detail.get("esl_id"), f"{key} is not an integer ({value!r})")


def _as_epoch_ms(detail: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    value = _as_int(detail, key, required=required)
    if value is not None and not 0 <= value <= MAX_EPOCH_MS:
        raise RecordError(detail.get("esl_id"), f"{key} is out of range ({value!r})")
    return value


def esl_id_of(entry: Any) -> str:
    """The ESL id of a page entry or detail; ids are strings on the wire but may arrive as numbers."""
    value = entry.get("esl_id") if isinstance(entry, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise RecordError(value, f"esl_id is missing or not a string ({entry!r:.120})")
    return str(value)


def last_heartbeat_ms(detail: Mapping[str, Any]) -> int:
    """The detail's ``last_hb_time``, the field the recency filter needs; RecordError if unusable."""
    value = _as_epoch_ms(detail, "last_hb_time", required=True)
    assert value is not None  # required=True guarantees it
    return value


def to_part_row(detail: Mapping[str, Any], *, store: str, server: str) -> tuple[str, ...]:
    """Turn one ESL detail into a part row (cells in ``PART_COLUMNS`` order).

    Raises :class:`RecordError` naming the ESL and the field when the detail cannot be trusted.
    """
    esl_id = esl_id_of(detail)
    last_hb = last_heartbeat_ms(detail)
    created = _as_epoch_ms(detail, "create_time", required=False)
    battery = _as_int(detail, "battery")
    refresh_times = _as_int(detail, "refresh_times")
    product_id = _as_int(detail, "product_id")
    try:
        family = chip_family(product_id)
    except ValueError as exc:
        raise RecordError(esl_id, str(exc)) from exc
    return (
        esl_id,
        store,
        server,
        cell(created),
        cell(last_hb),
        cell(battery),
        cell(detail.get("screen_size")),
        cell(detail.get("description")),
        cell(refresh_times),
        cell(detail.get("led_times")),
        cell(detail.get("firmware")),
        cell(detail.get("rom")),
        cell(detail.get("extesl_id")),
        cell(product_id),
        family,
        cell(detail.get("set_wor")),
        cell(detail.get("temperature")),
        repr(frequency(refresh_times, created, last_hb)),
    )
