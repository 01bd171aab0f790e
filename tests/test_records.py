"""Pure transforms: heartbeat window, frequency, chip family, part rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from esl_operators.exceptions import RecordError
from esl_operators.records import (
    DAY_MS,
    PART_COLUMNS,
    cell,
    chip_family,
    epoch_ms,
    frequency,
    heartbeat_cutoff_ms,
    to_part_row,
)

ANCHOR = datetime(2024, 5, 10, tzinfo=UTC)
ANCHOR_MS = 1_715_299_200_000


def test_epoch_ms_is_exact_and_needs_a_zone() -> None:
    assert epoch_ms(ANCHOR) == ANCHOR_MS
    assert epoch_ms(datetime(2024, 5, 10, 8, tzinfo=timezone(timedelta(hours=8)))) == ANCHOR_MS
    with pytest.raises(ValueError, match="no timezone"):
        epoch_ms(datetime(2024, 5, 10))


def test_cutoff_is_anchor_minus_lookback() -> None:
    assert heartbeat_cutoff_ms(ANCHOR, 7) == ANCHOR_MS - 7 * DAY_MS
    assert heartbeat_cutoff_ms(ANCHOR, 0) == ANCHOR_MS
    with pytest.raises(ValueError, match="lookback_days"):
        heartbeat_cutoff_ms(ANCHOR, -1)


@pytest.mark.parametrize(
    ("refresh", "age_ms", "expected"),
    [
        (10, 5 * DAY_MS, 2.0),
        (10, 5 * DAY_MS + DAY_MS - 1, 2.0),  # whole days only
        (7, 3 * DAY_MS, 7 / 3),
        (10, DAY_MS - 1, 0.0),  # same day
        (10, -DAY_MS, 0.0),  # created after the last heartbeat
        (0, 10 * DAY_MS, 0.0),
        (None, 10 * DAY_MS, 0.0),
    ],
)
def test_frequency(refresh: int | None, age_ms: int, expected: float) -> None:
    last_hb = ANCHOR_MS
    assert frequency(refresh, last_hb - age_ms, last_hb) == expected


@pytest.mark.parametrize(
    ("product_id", "family"),
    [
        (0x1A3, "TI-CC2640"),  # "1a3" -> 0x1a -> (26 >> 1) & 3 = 1
        (0x20FF, "stellarPro"),  # "20ff" -> 0x20 -> 16 & 3 = 0
        (5, "Telink-8258"),  # one digit: 5 -> 2
        (0xF, "nebular"),  # one digit: 15 -> 7 & 3 = 3
        (0x6, "nebular"),
        (0x2, "TI-CC2640"),
        (0, ""),
        (None, ""),
    ],
)
def test_chip_family(product_id: int | None, family: str) -> None:
    assert chip_family(product_id) == family


def test_cell_rendering() -> None:
    assert [cell(None), cell(3), cell("a"), cell(0.1), cell(True), cell({"b": 1, "a": "上"})] == [
        "",
        "3",
        "a",
        "0.1",
        "true",
        '{"a":"上","b":1}',
    ]


def _detail(**overrides: object) -> dict[str, object]:
    detail: dict[str, object] = {
        "esl_id": "01-00-00-2A",
        "user": "上海.001",
        "last_hb_time": ANCHOR_MS - 1000,
        "create_time": ANCHOR_MS - 1000 - 4 * DAY_MS,
        "battery": "87",
        "screen_size": "2.13",
        "description": None,
        "refresh_times": 6,
        "led_times": 3,
        "firmware": "5.3.12",
        "rom": "A1",
        "extesl_id": "",
        "product_id": 0x1A3,
        "set_wor": 1,
    }
    detail.update(overrides)
    return detail


def test_part_row_exact() -> None:
    row = to_part_row(_detail(), store="上海.001", server="esl_a")
    assert dict(zip(PART_COLUMNS, row, strict=True)) == {
        "esl_id": "01-00-00-2A",
        "store": "上海.001",
        "server": "esl_a",
        "create_time": str(ANCHOR_MS - 1000 - 4 * DAY_MS),
        "last_hb_time": str(ANCHOR_MS - 1000),
        "battery": "87",
        "screen_size": "2.13",
        "description": "",
        "refresh_times": "6",
        "led_times": "3",
        "firmware": "5.3.12",
        "rom": "A1",
        "extesl_id": "",
        "product_id": "419",
        "chip_family": "TI-CC2640",
        "set_wor": "1",
        "temperature": "",
        "frequency": "1.5",
    }


def test_part_row_tolerates_numeric_strings_and_nulls() -> None:
    row = dict(
        zip(
            PART_COLUMNS,
            to_part_row(
                _detail(battery=None, product_id=None, temperature=21, refresh_times="8", create_time=None),
                store="s",
                server="x",
            ),
            strict=True,
        )
    )
    assert (row["battery"], row["product_id"], row["chip_family"], row["temperature"]) == ("", "", "", "21")
    assert (row["refresh_times"], row["create_time"], row["frequency"]) == ("8", "", "0.0")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"last_hb_time": None}, "last_hb_time is missing"),
        ({"last_hb_time": "yesterday"}, "last_hb_time is not an integer"),
        ({"create_time": -5}, "create_time is out of range"),
        ({"battery": "full"}, "battery is not an integer"),
        ({"battery": True}, "battery is a boolean"),
        ({"product_id": -3}, "product_id must not be negative"),
        ({"esl_id": ""}, "esl_id is missing"),
    ],
)
def test_part_row_rejects_with_named_id(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        to_part_row(_detail(**overrides), store="s", server="x")
    if overrides.get("esl_id") != "":
        assert "01-00-00-2A" in str(caught.value)
