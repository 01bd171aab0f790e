"""Pure transforms: heartbeat window, frequency, chip family, part rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from esl_operators.exceptions import RecordError
from esl_operators.records import (
    PART_COLUMNS,
    cell,
    chip_family,
    epoch_ms,
    frequency,
    heartbeat_cutoff_ms,
    to_part_row,
)
from tests.support import ANCHOR, ANCHOR_MS, DAY_MS


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
    row, issues = to_part_row(_detail(), store="上海.001", server="esl_a")
    assert issues == []
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


def _row(**overrides: object) -> tuple[dict[str, str], list[tuple[str, str]]]:
    row, issues = to_part_row(_detail(**overrides), store="s", server="x", max_valid_ms=ANCHOR_MS + DAY_MS)
    return dict(zip(PART_COLUMNS, row, strict=True)), issues


def test_part_row_tolerates_numeric_strings_and_nulls() -> None:
    row, issues = _row(battery=None, product_id=None, temperature=21, refresh_times="8", create_time=None)
    assert issues == []
    assert (row["battery"], row["product_id"], row["chip_family"], row["temperature"]) == ("", "", "", "21")
    assert (row["refresh_times"], row["create_time"], row["frequency"]) == ("8", "", "0.0")
    row, issues = _row(temperature="-3.5", battery=100.0, led_times="0")
    assert (row["temperature"], row["battery"], row["led_times"], issues) == ("-3.5", "100", "0", [])


@pytest.mark.parametrize(
    ("overrides", "column", "issue"),
    [
        ({"battery": "n/a"}, "battery", ("battery", "'n/a' is not an integer")),
        ({"battery": 101}, "battery", ("battery", "101 is outside 0..100")),
        ({"battery": -1}, "battery", ("battery", "-1 is outside 0..100")),
        ({"battery": True}, "battery", ("battery", "True is a boolean, not an integer")),
        ({"battery": 55.5}, "battery", ("battery", "55.5 is not an integer")),
        ({"refresh_times": "12x"}, "refresh_times", ("refresh_times", "'12x' is not an integer")),
        ({"led_times": -4}, "led_times", ("led_times", "-4 is outside 0..")),
        ({"create_time": -5}, "create_time", ("create_time", "-5 is outside 0..1715385600000")),
        ({"create_time": ANCHOR_MS + 2 * DAY_MS}, "create_time",
         ("create_time", "1715472000000 is outside 0..1715385600000")),
        ({"product_id": "zz"}, "product_id", ("product_id", "'zz' is not an integer")),
        ({"product_id": -3}, "product_id", ("product_id", "-3 is outside 0..")),
        ({"temperature": {"c": 21}}, "temperature", ("temperature", "{'c': 21} is not a number")),
        ({"temperature": "warm"}, "temperature", ("temperature", "'warm' is not a number")),
        ({"temperature": "nan"}, "temperature", ("temperature", "'nan' is not a number")),
    ],
)  # fmt: skip
def test_impossible_fields_are_blanked_and_reported(
    overrides: dict[str, object], column: str, issue: tuple[str, str]
) -> None:
    row, issues = _row(**overrides)
    assert row[column] == ""
    assert issues == [issue]
    assert row["esl_id"] == "01-00-00-2A"  # the label itself is kept
    if column in ("refresh_times", "create_time"):
        assert row["frequency"] == "0.0"
    if column == "product_id":
        assert row["chip_family"] == ""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"last_hb_time": None}, "last_hb_time is missing"),
        ({"last_hb_time": "yesterday"}, "last_hb_time: 'yesterday' is not an integer"),
        ({"last_hb_time": -1}, "last_hb_time -1 is negative or in the far future"),
        (
            {"last_hb_time": ANCHOR_MS + 2 * DAY_MS},
            "last_hb_time 1715472000000 is negative or in the far future",
        ),
        ({"esl_id": ""}, "esl_id is missing"),
        ({"esl_id": None}, "esl_id is missing"),
    ],
)
def test_labels_without_a_usable_heartbeat_or_id_are_rejected(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        _row(**overrides)
    if "esl_id" not in overrides:
        assert "01-00-00-2A" in str(caught.value)
