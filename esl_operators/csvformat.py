"""The published CSV layouts: column names, order, timestamp rendering, sort order.

Works on whole partitions (pandas frames of strings, as read from part files) so that formatting a
million rows stays vectorised. Pure: frames in, frames out.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from esl_operators.exceptions import ConfigError
from esl_operators.records import PART_COLUMNS

HeaderStyle = Literal["standard", "legacy"]
HEADER_STYLES: tuple[HeaderStyle, ...] = ("standard", "legacy")

STANDARD_COLUMNS = (
    "esl_id",
    "store",
    "server",
    "created_at",
    "last_heartbeat_at",
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

# The legacy script's headers and order; spreadsheets built on its files look columns up by these names.
LEGACY_COLUMNS = (
    "价签ID",
    "门店",
    "创建时间",
    "电量",
    "最后心跳时间",
    "尺寸",
    "描述",
    "刷屏次数",
    "闪灯时长",
    "firmware",
    "rom",
    "extesl_id",
    "product_id",
    "set_wor",
    "frequency",
)

_LEGACY_SOURCES = (
    "esl_id",
    "store",
    "create_time",
    "battery",
    "last_hb_time",
    "screen_size",
    "description",
    "refresh_times",
    "led_times",
    "firmware",
    "rom",
    "extesl_id",
    "legacy_product",
    "set_wor",
    "frequency",
)

STANDARD_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LEGACY_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# frequency ascending, ties by esl_id (the contract); server and store only make duplicates deterministic.
SORT_KEYS = ("frequency", "esl_id", "server", "store")
_UTC = ZoneInfo("UTC")


def check_style(header_style: str, timezone: str) -> tuple[HeaderStyle, ZoneInfo]:
    """Validate the two formatting params early, with a message naming the bad value."""
    if header_style not in HEADER_STYLES:
        raise ConfigError(f"header_style must be one of {HEADER_STYLES}, got {header_style!r}")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"timezone {timezone!r} is not a known IANA time zone") from exc
    return header_style, zone  # type: ignore[return-value]


def columns_for(header_style: HeaderStyle) -> tuple[str, ...]:
    return STANDARD_COLUMNS if header_style == "standard" else LEGACY_COLUMNS


def sort_part(frame: pd.DataFrame) -> pd.DataFrame:
    """Order a partition: ``frequency`` ascending (numerically), ties by ``esl_id``."""
    keyed = frame.assign(_freq=pd.to_numeric(frame["frequency"]))
    keyed = keyed.sort_values(["_freq", *SORT_KEYS[1:]], kind="stable")
    return keyed.drop(columns="_freq").reset_index(drop=True)


def format_times(epoch_ms: pd.Series, fmt: str, zone: ZoneInfo) -> pd.Series:
    """Render epoch-millisecond strings as text in ``zone``; empty stays empty."""
    present = epoch_ms != ""
    out = pd.Series("", index=epoch_ms.index, dtype=object)
    if present.any():
        moments = pd.to_datetime(epoch_ms[present].astype("int64"), unit="ms", utc=True)
        out[present] = moments.dt.tz_convert(zone).dt.strftime(fmt).astype(object)
    return out


def _legacy_product(part: pd.DataFrame) -> pd.Series:
    """The legacy files showed the chip family instead of a non-zero product id."""
    nonzero = part["chip_family"] != ""
    return part["product_id"].where(~nonzero, part["chip_family"])


def to_output(part: pd.DataFrame, header_style: HeaderStyle, zone: ZoneInfo) -> pd.DataFrame:
    """Turn a sorted frame of part rows into the published columns.

    ``standard`` is always UTC (the ``Z`` says so); ``zone`` applies to the legacy layout only.
    """
    missing = [c for c in PART_COLUMNS if c not in part.columns]
    if missing:
        raise ValueError(f"part rows lack columns {missing}")
    if header_style == "standard":
        out = part.loc[:, list(PART_COLUMNS)].copy()
        out["create_time"] = format_times(part["create_time"], STANDARD_TIME_FORMAT, _UTC)
        out["last_hb_time"] = format_times(part["last_hb_time"], STANDARD_TIME_FORMAT, _UTC)
        out.columns = list(STANDARD_COLUMNS)
        return out
    staged = part.assign(
        create_time=format_times(part["create_time"], LEGACY_TIME_FORMAT, zone),
        last_hb_time=format_times(part["last_hb_time"], LEGACY_TIME_FORMAT, zone),
        legacy_product=_legacy_product(part),
    )
    out = staged.loc[:, list(_LEGACY_SOURCES)]
    out.columns = list(LEGACY_COLUMNS)
    return out
