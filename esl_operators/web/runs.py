"""What the listing says about each run date: status, label count, changes, report, partitions, files.

Reading is per store (:func:`local_folder`, :func:`object_folder`: which of our files a date folder
holds, and its manifest's text); what the listing makes of that is one pure function (:func:`run_of`),
so a local folder and an ``s3://`` root list the same. Date folders are read a few at a time: on
object storage each is a listing and a GET.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esl_operators.storage import MANIFEST_NAME, REPORT_NAME, SUCCESS_NAME, is_run_date, partition_number
from esl_operators.web.files import (
    HISTORY_FILES,
    StoreError,
    ViewRoot,
    fresh,
    inside,
    is_published_name,
    resolved,
    shown,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

LISTED_DATES = 120
#: Date folders read at once (threads; an object store answers each listing and GET in milliseconds).
READERS = 8


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


@dataclass(frozen=True)
class Folder:
    """What one date folder holds: our files in it (regular files only), and the manifest's text."""

    names: frozenset[str]
    manifest_text: str | None = None  # None: no manifest, or unreadable (then ``problem``)
    problem: str = ""


def list_runs(root: ViewRoot) -> list[Run]:
    """The newest :data:`LISTED_DATES` run dates under ``root``, newest first."""
    if isinstance(root, Path):
        base = resolved(root)
        if base is None or not base.is_dir():
            return []
        names = [p.name for p in base.iterdir()]
        read: Callable[[str], Folder | None] = lambda ds: local_folder(base, ds)  # noqa: E731
    else:
        fs = fresh(root)  # listings cached earlier would hide what the tasks wrote since
        names = object_children(fs, root, directories=True)
        read = lambda ds: object_folder(fs, root, ds)  # noqa: E731
    dates = sorted((name for name in names if is_run_date(name)), reverse=True)[:LISTED_DATES]
    with ThreadPoolExecutor(READERS) as pool:
        folders = list(pool.map(read, dates))
    return [run_of(ds, folder) for ds, folder in zip(dates, folders, strict=True) if folder is not None]


def is_listed_name(name: str) -> bool:
    return is_published_name(name) or name == SUCCESS_NAME


def local_folder(base: Path, ds: str) -> Folder | None:
    """Date folder ``ds`` of the resolved local root ``base``; None when it is no folder inside it."""
    folder = inside(base, base / ds)
    if folder is None or not folder.is_dir():
        return None
    names = frozenset(
        item.name
        for item in folder.iterdir()
        if is_listed_name(item.name) and (found := inside(base, item)) is not None and found.is_file()
    )
    if MANIFEST_NAME not in names:
        return Folder(names)
    try:
        return Folder(names, (folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8: say so, list the rest
        return Folder(names, problem=f"unreadable manifest: {exc}")


def object_children(fs: Any, location: ObjectStoragePath, *, directories: bool) -> list[str]:
    """Names of the sub-folders (or files) directly under ``location``; [] when there is nothing."""
    try:
        entries = fs.ls(location.path, detail=True)
    except FileNotFoundError:  # no such bucket or prefix yet: nothing published, as for a local root
        return []
    except Exception as exc:  # each store's client raises its own errors (botocore, ...): name them
        raise StoreError(shown(location), exc) from exc
    wanted = "directory" if directories else "file"
    return [str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == wanted]


def object_folder(fs: Any, root: ObjectStoragePath, ds: str) -> Folder | None:
    """Date folder ``ds`` under an object-storage root: one listing, and one GET for the manifest."""
    folder = root / ds
    listed = object_children(fs, folder, directories=False)
    names = frozenset(name for name in listed if is_listed_name(name))
    if MANIFEST_NAME not in names:
        return Folder(names)
    try:
        return Folder(names, fs.cat_file((folder / MANIFEST_NAME).path).decode("utf-8"))
    except FileNotFoundError:  # removed since the listing (a rerun replacing the date): not there
        return Folder(names - {MANIFEST_NAME})
    except ValueError as exc:  # not UTF-8
        return Folder(names, problem=f"unreadable manifest: {exc}")
    except Exception as exc:  # the store's own client errors, named
        raise StoreError(shown(folder / MANIFEST_NAME), exc) from exc


def run_of(ds: str, folder: Folder) -> Run:
    """The listing's line for date ``ds``, from what its folder holds (pure)."""
    manifest: dict[str, Any] = {}
    problem = folder.problem
    if folder.manifest_text is not None:
        try:
            loaded = json.loads(folder.manifest_text)
        except ValueError as exc:  # half-written by hand, or not JSON: say so, list the rest
            problem = f"unreadable manifest: {exc}"
        else:
            if isinstance(loaded, dict):
                manifest = loaded
            else:
                problem = "unreadable manifest: not a JSON object"
    numbered = ((number, n) for n in folder.names if (number := partition_number(n)) is not None)
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
    elif SUCCESS_NAME in folder.names:
        status = "complete"
    else:
        status = "published"
    return Run(
        date=ds,
        status=status,
        ok=not problem and bool(manifest) and not errors,
        labels=_count(manifest.get("rows")) or "–",
        parts=[(name, _count(rows_by_file.get(name))) for name in parts],
        report=REPORT_NAME in folder.names,
        manifest=MANIFEST_NAME in folder.names,
        changes=_changes(manifest.get("history")),
        history_files=tuple(name for name in HISTORY_FILES if name in folder.names),
    )


def _changes(history: Any) -> tuple[str, str] | None:
    if not isinstance(history, dict):
        return None
    return (_count(history.get("new")) or "–", _count(history.get("gone")) or "–")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ""
