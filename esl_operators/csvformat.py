"""The published CSV layouts: column names, order, timestamp rendering, sort order.

Works on whole partitions (Arrow tables of strings, as read from part files) so that sorting and
formatting a million rows stays vectorised in Arrow's C++ kernels. Pure: tables in, tables out.

Just over 300 lines: the layouts, their sort order and the CSV quoting rules are one contract (the
published bytes), kept in one module so that a change to any of them is reviewed against the others.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esl_operators.records import PART_COLUMNS
from esl_operators.settings import HeaderStyle, setting

if TYPE_CHECKING:
    import pandas as pd  # only for callers holding pandas frames; the hot path is Arrow

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

# (separator between date and time, suffix): YYYY-MM-DDTHH:MM:SSZ and YYYY-MM-DD HH:MM:SS
STANDARD_TIME_FORMAT = ("T", "Z")
LEGACY_TIME_FORMAT = (" ", "")

# frequency ascending, ties by esl_id (the contract); server and store only make duplicates deterministic.
SORT_KEYS = ("frequency", "esl_id", "server", "store")
_UTC = ZoneInfo("UTC")


def check_style(header_style: str, timezone: str) -> tuple[HeaderStyle, ZoneInfo]:
    """Validate the two formatting settings early (the table's rules), with a message naming the value."""
    style: HeaderStyle = "legacy" if setting("header_style").parse(header_style) == "legacy" else "standard"
    return style, ZoneInfo(setting("timezone").parse(timezone))


def columns_for(header_style: HeaderStyle) -> tuple[str, ...]:
    return STANDARD_COLUMNS if header_style == "standard" else LEGACY_COLUMNS


Table = pa.Table


def as_table(rows: pa.Table | pd.DataFrame) -> pa.Table:
    """Arrow table of string columns; a pandas frame of part rows is converted once."""
    if isinstance(rows, pa.Table):
        return rows
    table = pa.Table.from_pandas(rows.astype(str), preserve_index=False)  # rows is a pandas frame
    # pandas hands out large_string; the kernels here mix columns, so all must be plain string.
    return table.cast(pa.schema([(name, pa.string()) for name in table.column_names]))


# sort_indices' keys over order_keys' columns; nulls (and NaN) last, Arrow's default.
ORDER = [("_freq", "ascending")] + [(name, "ascending") for name in SORT_KEYS[1:]]


def order_keys(rows: pa.Table) -> pa.Table:
    """The columns a partition is sorted by (:data:`ORDER`): ``frequency`` as a number, the texts.

    The external sort keeps them beside each rendered line, to merge its runs in the same order.
    """
    number = pc.cast(rows["frequency"], pa.float64())
    return pa.table([number, *(rows[name] for name in SORT_KEYS[1:])], names=[c for c, _ in ORDER])


def sort_order(rows: pa.Table) -> pa.Array:
    """Row order of a partition: ``frequency`` ascending (numerically), ties by ``esl_id``.

    ``server`` and ``store`` only make the order total (duplicates across servers). Arrow compares
    strings bytewise in UTF-8, which is code-point order: the same as Python's.
    """
    return pc.sort_indices(order_keys(rows), sort_keys=ORDER)


def sort_part(rows: pa.Table | pd.DataFrame) -> pa.Table:
    table = as_table(rows)
    return table.take(sort_order(table))


_DAYS_AT_ONCE = 40_000  # a century: a span of days this long is counted in an array, not sorted


@functools.cache
def _clock(suffix: str) -> pa.Array:
    """``HH:MM:SS`` + suffix for every second of a day: formatting becomes a table look-up.

    Built by Arrow from 60 two-digit strings: 86,400 Python f-strings took 0.1-0.5 s of the first
    partition (more when the render threads all built it at once).
    """
    two_digits = pa.array([f"{n:02d}" for n in range(60)])  # not at import: pa.array loads pandas
    second = np.arange(86_400)
    hh, mm, ss = (two_digits.take(pa.array(p)) for p in (second // 3600, second // 60 % 60, second % 60))
    return pc.binary_join_element_wise(pc.binary_join_element_wise(hh, mm, ss, ":"), suffix, "")


def _local_seconds(utc_seconds: np.ndarray, zone: ZoneInfo) -> np.ndarray:
    """Wall-clock seconds in ``zone`` (DST and historical offsets included, via pandas' tz database)."""
    import pandas as pd  # loaded only for the legacy layout in a non-UTC zone

    moments = pd.DatetimeIndex(utc_seconds.astype("datetime64[s]")).tz_localize("UTC").tz_convert(zone.key)
    return np.asarray(moments.tz_localize(None).as_unit("s").asi8, dtype=np.int64)


def format_times(epoch_ms: pa.ChunkedArray, layout: tuple[str, str], zone: ZoneInfo) -> pa.Array:
    """Render epoch-millisecond strings as ``date + sep + time + suffix`` in ``zone``; empty stays empty.

    strftime over a million values is slow in every library; a day has only 86,400 seconds and a run
    only a few hundred distinct dates, so both halves are looked up instead.
    """
    sep, suffix = layout
    empty = pc.equal(epoch_ms, "").combine_chunks() if epoch_ms.num_chunks else pa.array([], pa.bool_())
    millis = pc.cast(pc.if_else(empty, "0", epoch_ms), pa.int64()).to_numpy()
    seconds = millis // 1000
    if zone.key != "UTC":
        seconds = _local_seconds(seconds, zone)
    days, clock = np.divmod(seconds, 86_400)
    first = int(days.min()) if len(days) else 0
    span = int(days.max()) - first + 1 if len(days) else 0
    if span <= max(_DAYS_AT_ONCE, len(days)):  # the usual case: days found by counting, not sorting
        offset = days - first
        present = np.flatnonzero(np.bincount(offset, minlength=span))
        position = np.zeros(span, dtype=np.int64)
        position[present] = np.arange(len(present))
        unique_days, which = present + first, position[offset]
    else:
        unique_days, which = np.unique(days, return_inverse=True)
    dates = pa.array(np.datetime_as_string(unique_days.astype("datetime64[D]"))).take(pa.array(which))
    text = pc.binary_join_element_wise(dates, _clock(suffix).take(pa.array(clock)), sep)
    return pc.if_else(empty, "", text)


def to_output(part: pa.Table | pd.DataFrame, header_style: HeaderStyle, zone: ZoneInfo) -> pa.Table:
    """Turn a sorted table of part rows into the published columns.

    ``standard`` is always UTC (the ``Z`` says so); ``zone`` applies to the legacy layout only.
    """
    table = as_table(part)
    missing = [c for c in PART_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"part rows lack columns {missing}")
    if header_style == "standard":
        columns = {name: table[name] for name in PART_COLUMNS}
        columns["create_time"] = format_times(table["create_time"], STANDARD_TIME_FORMAT, _UTC)
        columns["last_hb_time"] = format_times(table["last_hb_time"], STANDARD_TIME_FORMAT, _UTC)
        return pa.table(list(columns.values()), names=list(STANDARD_COLUMNS))
    # The legacy files showed the chip family instead of a non-zero product id.
    family = table["chip_family"]
    staged = {
        **{name: table[name] for name in PART_COLUMNS},
        "create_time": format_times(table["create_time"], LEGACY_TIME_FORMAT, zone),
        "last_hb_time": format_times(table["last_hb_time"], LEGACY_TIME_FORMAT, zone),
        "legacy_product": pc.if_else(pc.not_equal(family, ""), family, table["product_id"]),
    }
    return pa.table([staged[name] for name in _LEGACY_SOURCES], names=list(LEGACY_COLUMNS))


_NEEDS_QUOTES = r'[",\r\n]'
_SPECIAL_BYTES = (b'"', b",", b"\r", b"\n")
# Arrow kernels release the GIL: slices of a partition are formatted on all cores at once.
WORKERS = max(1, min(4, os.cpu_count() or 1))


def string_bytes(array: pa.Array) -> memoryview:
    """The concatenated bytes of a string array's values, without copying them."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    data = array.buffers()[2]
    if data is None or len(array) == 0:
        return memoryview(b"")
    return memoryview(data)[int(offsets[0]) : int(offsets[-1])]


def _may_need_quotes(column: pa.ChunkedArray | pa.Array) -> bool:
    """A quick scan of the raw bytes: most columns hold no quote, comma or line break at all."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    # bytes' own search (memchr) is ~30x faster than a numpy scan; the copy it needs is a memcpy.
    return any(
        special in raw for raw in (bytes(string_bytes(c)) for c in chunks) for special in _SPECIAL_BYTES
    )


def csv_cells(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Quote a string column the way Python's csv module does (QUOTE_MINIMAL): only where needed."""
    if not _may_need_quotes(column):
        return column
    needed = pc.match_substring_regex(column, _NEEDS_QUOTES)
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(column, '"', '""'), '"', "")
    return pc.if_else(needed, quoted, column)


def csv_lines(table: pa.Table) -> pa.ChunkedArray | pa.Array:
    """One CSV line per row (without the line end), all vectorised in Arrow."""
    cells = [csv_cells(pc.fill_null(table[name], "")) for name in table.column_names]
    return pc.binary_join_element_wise(*cells, ",")


# Spreadsheet safety (OWASP "CSV injection"): a cell starting with one of these is run as a formula by
# Excel, LibreOffice and Google Sheets. Only the columns holding text as the servers sent it are
# guarded (part column names; both layouts derive from them): the numeric columns are validated by
# records.py (a temperature of -5.0 stays a number), the others are ours.
FORMULA_START = r"^[=+\-@\t\r]"
SPREADSHEET_TEXT_COLUMNS = (
    "esl_id",
    "store",
    "screen_size",
    "description",
    "firmware",
    "rom",
    "extesl_id",
    "set_wor",  # 0/1/2 on real servers, but passed on as sent: text
)


def spreadsheet_safe_for(header_style: HeaderStyle, spreadsheet_safe: bool | None) -> bool:
    """The setting ``spreadsheet_safe`` resolved: unset means on for ``legacy`` (the layout opened in
    spreadsheets), off for ``standard`` (read by programs, kept byte-exact)."""
    return header_style == "legacy" if spreadsheet_safe is None else spreadsheet_safe


def guard_formulas(part: pa.Table) -> pa.Table:
    """Prefix ``'`` to every server text cell that a spreadsheet would run as a formula."""
    columns = []
    for name in part.column_names:
        column = part[name]
        if name in SPREADSHEET_TEXT_COLUMNS:
            risky = pc.match_substring_regex(column, FORMULA_START)
            column = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    return pa.table(columns, names=part.column_names)


def render_lines(
    part: pa.Table, header_style: HeaderStyle, zone: ZoneInfo, spreadsheet_safe: bool | None = None
) -> pa.ChunkedArray:
    """The published CSV lines of a partition (unsorted, each ending in ``\\n``), on several cores.

    ``spreadsheet_safe``: guard formula-like text cells (:func:`guard_formulas`); ``None`` decides by
    the layout (:func:`spreadsheet_safe_for`).
    """
    if part.num_rows == 0:
        return pa.chunked_array([], pa.string())
    step = -(-part.num_rows // WORKERS)
    slices = [part.slice(start, step) for start in range(0, part.num_rows, step)]
    guarded = spreadsheet_safe_for(header_style, spreadsheet_safe)

    def render(rows: pa.Table) -> pa.ChunkedArray | pa.Array:
        if guarded:
            rows = guard_formulas(rows)
        # "line" + "\n" + "": each line carries its line end, so writing is a plain byte copy
        return pc.binary_join_element_wise(csv_lines(to_output(rows, header_style, zone)), "", "\n")

    with ThreadPoolExecutor(max_workers=len(slices)) as pool:
        lines = list(pool.map(render, slices))
    return pa.chunked_array([c for piece in lines for c in _chunks(piece)], pa.string())


def _chunks(values: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return values.chunks if isinstance(values, pa.ChunkedArray) else [values]
