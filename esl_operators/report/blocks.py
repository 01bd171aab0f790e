"""What the templates draw: tables, figures and key figures, as plain data (cells are raw values)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup


@dataclass(frozen=True)
class Table:
    """A table; every cell is escaped by the template, so rows hold raw values."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    numeric: frozenset[int] = field(default_factory=frozenset)
    compact: bool = False
    more: str = ""  # "N" when N more entries stayed in the manifest


def table(
    headers: Sequence[str], rows: Any, *, numeric: set[int] | None = None, compact: bool = False
) -> Table:
    return Table(list(headers), [list(row) for row in rows], frozenset(numeric or ()), compact)


@dataclass(frozen=True)
class Figure:
    svg: Markup  # trusted: drawn by matplotlib, which escapes every text it writes (report.charts)
    caption: str


@dataclass(frozen=True)
class Kpi:
    label: str
    value: str
    note: str = ""
    kind: str = ""  # "", "warn", "bad" or "good"
