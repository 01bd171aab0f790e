"""What the listing says about each run date: status, label count, changes, report, partitions, files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esl_operators.storage import (
    MANIFEST_NAME,
    PARTITION_GLOB,
    REPORT_NAME,
    SUCCESS_NAME,
    is_run_date,
    partition_number,
)
from esl_operators.web.files import HISTORY_FILES, inside, resolved

LISTED_DATES = 120


@dataclass(frozen=True)
class Run:
    """One date folder as the listing shows it (numbers already written out)."""

    date: str
    status: str
    ok: bool
    labels: str  # "1,234", or "–" when the manifest does not say
    parts: list[tuple[str, str]]  # (file name, "1,234" or "" when the manifest does not say)
    report: bool
    manifest: bool
    #: (new, gone) since the previous published date, from the manifest's history block ("–" unknown);
    #: None when the manifest has none (written before issue 14, or no history kept).
    changes: tuple[str, str] | None = None
    history_files: tuple[str, ...] = ()  # the history files present, in HISTORY_FILES order


def list_runs(root: Path) -> list[Run]:
    """The newest :data:`LISTED_DATES` run dates under ``root``, newest first."""
    base = resolved(root)
    if base is None or not base.is_dir():
        return []
    runs = []
    dates = sorted((p.name for p in base.iterdir() if is_run_date(p.name)), reverse=True)
    for ds in dates[:LISTED_DATES]:
        folder = inside(base, base / ds)
        if folder is not None and folder.is_dir():
            runs.append(_run(base, ds, folder))
    return runs


def _run(base: Path, ds: str, folder: Path) -> Run:
    manifest: dict[str, Any] = {}
    problem = ""
    manifest_path = inside(base, folder / MANIFEST_NAME)
    if manifest_path is not None:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # half-written by hand, or not JSON: say so, list the rest
            problem = f"unreadable manifest: {exc}"
    numbered = (
        (number, p.name)
        for p in folder.glob(PARTITION_GLOB)
        if (number := partition_number(p.name)) is not None and inside(base, p)
    )
    parts = [name for _, name in sorted(numbered)]
    rows_by_file = {
        p.get("file"): p.get("rows") for p in manifest.get("partitions", []) if isinstance(p, dict)
    }
    errors = manifest.get("errors") or []
    if problem:
        status = problem
    elif not manifest:
        status = "incomplete: no manifest yet"
    elif errors:
        status = f"published with {len(errors)} error(s)"
    elif inside(base, folder / SUCCESS_NAME) is not None:
        status = "complete"
    else:
        status = "published"
    return Run(
        date=ds,
        status=status,
        ok=not problem and bool(manifest) and not errors,
        labels=_count(manifest.get("rows")) or "–",
        parts=[(name, _count(rows_by_file.get(name))) for name in parts],
        report=inside(base, folder / REPORT_NAME) is not None,
        manifest=manifest_path is not None,
        changes=_changes(manifest.get("history")),
        history_files=tuple(name for name in HISTORY_FILES if inside(base, folder / name) is not None),
    )


def _changes(history: Any) -> tuple[str, str] | None:
    if not isinstance(history, dict):
        return None
    return (_count(history.get("new")) or "–", _count(history.get("gone")) or "–")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ""
