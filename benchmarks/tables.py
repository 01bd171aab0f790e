"""Medians of repeated runs and the Markdown tables of BENCHMARKS.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import Measurement

COLUMNS = (
    ("wall_s", "wall s"),
    ("requests", "requests"),
    ("req_per_s", "requests/s"),
    ("cpu_per_1000", "CPU s / 1000 req"),
    ("cpu_s", "CPU s"),
    ("peak_rss_mb", "peak RSS MB"),
    ("rows", "rows"),
    ("overloaded", "503s"),
    ("first_request_s", "first request s"),
)


def _median(values: Sequence[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Row:
    """One client in one scenario: its runs, or numbers computed instead of run (the floor)."""

    label: str
    runs: list[Measurement] = field(default_factory=list)
    computed: dict[str, float] | None = None
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """Medians over the successful runs; rates are ratios of those medians, so that
        requests/s x wall = requests holds exactly in the table."""
        if self.computed is not None:
            return {"label": self.label, "runs": 0, "failed": 0, "note": self.note, **self.computed}
        ok = [r for r in self.runs if r.ok]
        failed = [r for r in self.runs if not r.ok]
        out: dict[str, Any] = {"label": self.label, "runs": len(self.runs), "failed": len(failed)}
        for key in ("wall_s", "cpu_s", "peak_rss_mb", "rows", "requests", "overloaded"):
            out[key] = _median([getattr(r, key) for r in ok])
        requests, wall, cpu = out["requests"], out["wall_s"], out["cpu_s"]
        out["req_per_s"] = requests / wall if requests is not None and wall else None
        out["cpu_per_1000"] = cpu / requests * 1000 if requests and cpu is not None else None
        notes = [self.note] if self.note else []
        if failed:
            codes = sorted({r.exit_code for r in failed})
            notes.append(
                f"{len(failed)} of {len(self.runs)} runs failed (exit {codes}): {failed[-1].log_tail}"
            )
        if len({r.rows for r in ok}) > 1:
            notes.append(f"rows differ between runs: {sorted({r.rows for r in ok})}")
        out["note"] = "; ".join(notes)
        return out


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key in ("requests", "rows", "overloaded"):
        return f"{round(value):,}"
    if key in ("req_per_s", "peak_rss_mb"):
        return f"{value:,.0f}"
    if key in ("cpu_per_1000", "first_request_s"):
        return f"{value:.3f}"
    return f"{value:,.2f}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """One table: every row, the given columns (keys of ``COLUMNS``), then the notes."""
    names = dict(COLUMNS)
    header = ["client", *(names[c] for c in columns), "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["label"],
            *(_cell(c, row.get(c)) for c in columns),
            row.get("note", "").replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find(rows: Sequence[dict[str, Any]], label_start: str) -> dict[str, Any] | None:
    """The first row whose label starts with ``label_start``."""
    return next((r for r in rows if r["label"].startswith(label_start)), None)
