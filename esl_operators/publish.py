"""Publishing a date as one step: every new file is staged first, then the set replaces the old one.

The aggregate step writes everything it publishes (partitions, report, manifest, history files) into a
staging folder inside the date's folder, ``{ds}/.staging-{id}/``, under the names they will be
published as. Only when the whole set exists does :meth:`Publication.commit` move it into place:
``_SUCCESS`` is withdrawn, each staged file is renamed over its published name, what the new set no
longer holds is removed, and ``_SUCCESS`` is written last. A run that fails before the commit leaves
the previous publication as it was, ``_SUCCESS`` included; its staging folder is removed.

Readers never see a partial new set without noticing: while files move, ``_SUCCESS`` is absent.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from esl_operators.storage import (
    CHANGES_NAME,
    FORECAST_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    SUCCESS_NAME,
    PathLike,
    remove_stale_outputs,
    stale_outputs,
    write_text_atomic,
)

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
#: Published files that exist only when a run produced them: removed when the new set lacks them
#: (the history files exist only when there is a previous published date, esl_operators.history).
OPTIONAL_NAMES = (REPORT_NAME, CHANGES_NAME, FORECAST_NAME)


class Publication:
    """The new set of files of one date, staged until :meth:`commit`.

    Use as a context manager: leaving it with an exception (or without committing) discards the staged
    files and leaves the published ones untouched.
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = folder
        self.staging: Any = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.names: list[str] = []
        self.committed = False

    def path(self, name: str) -> Any:
        """Where to write the file that will be published as ``{ds}/{name}``."""
        if "/" in name or name.startswith(".") or name == SUCCESS_NAME:
            raise ValueError(f"not a publishable name: {name!r}")
        self.staging.mkdir(parents=True, exist_ok=True)
        if name not in self.names:
            self.names.append(name)
        return self.staging / name

    def commit(self, *, batches: int) -> list[str]:
        """Move the staged set into place; return the names of earlier files it removed.

        ``batches`` is the new set's partition count: partitions and parts beyond it are stale.
        """
        staged = [name for name in self.names if (self.staging / name).exists()]
        missing = sorted(set(self.names) - set(staged))
        if missing:
            raise FileNotFoundError(f"{self.staging}: staged files missing before publishing: {missing}")
        (self.folder / SUCCESS_NAME).unlink(missing_ok=True)
        # The manifest last but one (before _SUCCESS): it is what marks the date as published.
        for name in sorted(staged, key=lambda n: n == MANIFEST_NAME):
            (self.staging / name).rename(self.folder / name)
        removed = remove_stale_outputs(self.folder, batches) + self._unwritten_optional()
        for name in self._unwritten_optional():
            (self.folder / name).unlink(missing_ok=True)
        write_text_atomic(self.folder / SUCCESS_NAME, "")
        self._remove_staging()
        self.committed = True
        return sorted(removed)

    def stale_files(self, *, batches: int) -> list[str]:
        """What :meth:`commit` will remove, as known now (for the manifest, written before the commit)."""
        return sorted(stale_outputs(self.folder, batches) + self._unwritten_optional())

    def _unwritten_optional(self) -> list[str]:
        return [n for n in OPTIONAL_NAMES if n not in self.names and (self.folder / n).exists()]

    def discard(self) -> None:
        """Remove the staged files; the published ones stay as they are."""
        self._remove_staging()

    def _remove_staging(self) -> None:
        remove_folder(self.staging)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.discard()


def remove_folder(folder: PathLike) -> None:
    """Remove a flat folder of our own and its files (object stores have no folders to remove)."""
    if not folder.exists():
        return
    for item in folder.iterdir():
        item.unlink()
    if isinstance(folder, Path):
        folder.rmdir()


def remove_stale_stagings(folder: PathLike) -> None:
    """Remove the staging folders that killed attempts left in a date's folder."""
    if folder.exists():
        stagings: list[Any] = list(folder.glob(f"{STAGING_PREFIX}*"))
        for staging in stagings:
            log.info("removing %s, left by an attempt that did not finish", staging)
            remove_folder(staging)
