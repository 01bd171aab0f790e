"""Published CSV layouts and sort order, on frames of part rows."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from esl_operators.csvformat import LEGACY_COLUMNS, STANDARD_COLUMNS, check_style, sort_part, to_output
from esl_operators.exceptions import ConfigError
from esl_operators.records import PART_COLUMNS

# 2024-05-09T16:30:05Z and 2024-01-02T00:00:00Z
HB, CREATED = "1715272205123", "1704153600000"


def _part(rows: list[dict[str, str]]) -> pd.DataFrame:
    base = dict.fromkeys(PART_COLUMNS, "")
    return pd.DataFrame([{**base, **r} for r in rows], columns=list(PART_COLUMNS), dtype=object)


def test_sort_is_numeric_by_frequency_then_esl_id() -> None:
    frame = _part(
        [
            {"esl_id": "B", "frequency": "10.0"},
            {"esl_id": "C", "frequency": "9.5"},
            {"esl_id": "A", "frequency": "10.0"},
            {"esl_id": "D", "frequency": "0.0"},
        ]
    )
    assert list(sort_part(frame)["esl_id"]) == ["D", "C", "A", "B"]


def test_standard_layout_is_utc_iso() -> None:
    frame = _part(
        [
            {
                "esl_id": "X",
                "create_time": CREATED,
                "last_hb_time": HB,
                "product_id": "419",
                "chip_family": "TI-CC2640",
            }
        ]
    )
    out = to_output(frame, "standard", ZoneInfo("Asia/Shanghai"))
    assert tuple(out.columns) == STANDARD_COLUMNS
    row = out.iloc[0]
    assert (row["created_at"], row["last_heartbeat_at"]) == ("2024-01-02T00:00:00Z", "2024-05-09T16:30:05Z")
    assert (row["product_id"], row["chip_family"]) == ("419", "TI-CC2640")


def test_legacy_layout_uses_zone_and_chip_names() -> None:
    frame = _part(
        [
            {"esl_id": "X", "store": "S", "create_time": CREATED, "last_hb_time": HB, "battery": "50",
             "product_id": "419", "chip_family": "TI-CC2640", "frequency": "1.5"},
            {"esl_id": "Y", "last_hb_time": HB, "product_id": "0"},
            {"esl_id": "Z", "last_hb_time": HB, "product_id": ""},
        ]
    )  # fmt: skip
    out = to_output(frame, "legacy", ZoneInfo("Asia/Shanghai"))
    assert tuple(out.columns) == LEGACY_COLUMNS
    assert out.iloc[0].tolist() == [
        "X", "S", "2024-01-02 08:00:00", "50", "2024-05-10 00:30:05", "", "", "", "", "", "", "",
        "TI-CC2640", "", "1.5",
    ]  # fmt: skip
    assert out["product_id"].tolist() == ["TI-CC2640", "0", ""]
    assert out["创建时间"].tolist()[1:] == ["", ""]


def test_style_validation_names_the_bad_value() -> None:
    with pytest.raises(ConfigError, match="'fancy'"):
        check_style("fancy", "UTC")
    with pytest.raises(ConfigError, match="Mars/Base"):
        check_style("legacy", "Mars/Base")
    assert check_style("legacy", "Europe/Berlin")[1] == ZoneInfo("Europe/Berlin")
