"""Publishing a date as one step: every new file is staged first, then the set replaces the old one.

The aggregate step writes everything it publishes (partitions, report, manifest, history files) into a
staging folder inside the date's folder, ``{ds}/.staging-{id}/``, under the names they will be
published as. Only when the whole set exists does :meth:`Publication.commit` move it into place:

1. the **commit journal** ``_commit.json`` is written into the staging folder (one atomic write): the
   names to move, in order, the new batch count and the optional files to remove;
2. ``_SUCCESS`` is withdrawn;
3. each staged file is renamed over its published name, the manifest last;
4. what the new set no longer holds is removed (partitions and parts beyond the batch count, a report
   the new run did not write, temporaries);
5. ``_SUCCESS`` is written, then the staging folder (the journal last) is removed.

A run that fails before step 1 leaves the previous publication as it was, ``_SUCCESS`` included; its
staging folder is removed. From step 1 on the new set is complete and the commit only goes forward: a
commit that fails or is killed (SIGKILL, a lost machine) midway leaves its journal, and the next
attempt (:func:`remove_stale_stagings`, at the start of every aggregate step of the date) rolls it
forward: files still staged are moved, files already moved are skipped, the rest of the steps are
repeated. Every step can be repeated, so an attempt killed while rolling forward is finished by the next.
Readers never see a partial new set without noticing: from step 2 until step 5, ``_SUCCESS`` is absent.

**What "atomic" means here.** On a local file system each rename is atomic (POSIX ``rename``): a reader
sees the old or the new file, never a mix, and a killed commit leaves every file whole. The set as a
whole is not replaced in one instant (no file system offers that across files); ``_SUCCESS`` marks it
complete. On object storage (S3 and the like) there is no rename: ``ObjectStoragePath.rename`` is a
copy followed by a delete. Each object is still written whole (a PUT or a completed multipart upload
is atomic per object), so a reader never sees half a file, but while a commit runs a moved file can
exist twice (published and still staged) and a listing can show the old and the new objects side by
side. A kill between the copy and the delete leaves both; rolling forward copies again (same bytes) and
deletes. Readers of an object-storage root must therefore wait for ``_SUCCESS``, as for a local one;
writers are serialised by the date's lease (:mod:`esl_operators.lease`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypedDict

from esl_operators import lease
from esl_operators.storage import (
    CHANGES_NAME,
    FORECAST_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    SUCCESS_NAME,
    PathLike,
    local_path,
    read_json,
    remove_stale_outputs,
    stale_outputs,
    storage_errors,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
JOURNAL_NAME = "_commit.json"
#: Published files that exist only when a run produced them: removed when the new set lacks them
#: (the history files exist only when there is a previous published date, esl_operators.history).
OPTIONAL_NAMES = (REPORT_NAME, CHANGES_NAME, FORECAST_NAME)


class Journal(TypedDict):
    """What a commit does, written before it starts, so that another attempt can finish it."""

    names: list[str]  # staged files, in the order they are moved (the manifest last)
    batches: int  # the new set's partition count: partitions and parts beyond it are stale
    remove: list[str]  # published optional files the new set does not have
    written_at: str  # ISO 8601, UTC: the oldest journal is rolled forward first


class Publication:
    """The new set of files of one date, staged until :meth:`commit`.

    Use as a context manager: leaving it with an exception before the commit started discards the
    staged files and leaves the published ones untouched; after the commit started (its journal is
    written) the staging folder stays, for the next attempt to roll forward.
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = folder
        self.staging: Any = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.names: list[str] = []
        self.committed = False
        self.journaled = False

    def path(self, name: str) -> Any:
        """Where to write the file that will be published as ``{ds}/{name}``."""
        if "/" in name or name.startswith(".") or name in (SUCCESS_NAME, JOURNAL_NAME):
            raise ValueError(f"not a publishable name: {name!r}")
        with storage_errors("create", self.staging):
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
        lease.check_held(self.folder)  # a writer whose lease was taken over must not publish
        journal: Journal = {
            # The manifest last but one (before _SUCCESS): it is what marks the date as published.
            "names": sorted(staged, key=lambda n: n == MANIFEST_NAME),
            "batches": batches,
            "remove": self._unwritten_optional(),
            "written_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        write_json_atomic(self.staging / JOURNAL_NAME, journal)
        self.journaled = True
        log.info("%s: commit journal written, publishing %d files", self.staging, len(staged))
        removed = roll_forward(self.folder, self.staging, journal)
        self.committed = True
        return removed

    def stale_files(self, *, batches: int) -> list[str]:
        """What :meth:`commit` will remove, as known now (for the manifest, written before the commit)."""
        return sorted(stale_outputs(self.folder, batches) + self._unwritten_optional())

    def _unwritten_optional(self) -> list[str]:
        return [n for n in OPTIONAL_NAMES if n not in self.names and (self.folder / n).exists()]

    def discard(self) -> None:
        """Remove the staged files; the published ones stay as they are."""
        remove_folder(self.staging)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.committed:
            return
        if self.journaled:
            log.error(
                "%s: publishing stopped midway (%s); the date has no _SUCCESS until the next attempt "
                "finishes moving the staged files (its journal is %s)",
                self.folder,
                exc,
                self.staging / JOURNAL_NAME,
            )
            return
        self.discard()


def roll_forward(folder: PathLike, staging: Any, journal: Journal) -> list[str]:
    """Steps 2 to 5 of a commit (module docstring); each may be repeated, so an interrupted roll-forward
    is finished by the next. Returns the names of earlier files removed."""
    with storage_errors("remove", folder / SUCCESS_NAME):
        (folder / SUCCESS_NAME).unlink(missing_ok=True)
    for name in journal["names"]:
        source = staging / name
        if not source.exists():  # moved by an earlier attempt (all were staged when the journal was)
            continue
        with storage_errors(f"publish {source} as", folder / name):
            source.rename(folder / name)
        log.debug("%s: %s moved into place", folder, name)
    with storage_errors("remove stale files from", folder):
        removed = remove_stale_outputs(folder, journal["batches"])
        for name in journal["remove"]:
            (folder / name).unlink(missing_ok=True)
    log.debug("%s: stale files removed: %s", folder, removed + journal["remove"])
    write_text_atomic(folder / SUCCESS_NAME, "")
    log.debug("%s: %s written", folder, SUCCESS_NAME)
    remove_folder(staging, last=JOURNAL_NAME)
    return sorted(removed + journal["remove"])


def remove_folder(folder: PathLike, *, last: str | None = None) -> None:
    """Remove a flat folder of our own and its files (object stores have no folders to remove); the
    file named ``last`` is removed after the others."""
    with storage_errors("remove", folder):
        if not folder.exists():
            return
        items: list[Any] = sorted(folder.iterdir(), key=lambda item: item.name == last)
        for item in items:
            item.unlink()
        local = local_path(folder)
        if local is not None:
            local.rmdir()


def remove_stale_stagings(folder: PathLike) -> list[str]:
    """Finish or remove the staging folders that earlier attempts left in a date's folder.

    A staging folder with a commit journal holds a complete set whose commit was interrupted: it is
    rolled forward (oldest journal first). One without a journal was never complete: it is removed.
    Returns the staging folders rolled forward. Called by the date's writer only (it holds the lease):
    another writer's staging folder is not stale.
    """
    if not folder.exists():
        return []
    stagings: list[Any] = list(folder.glob(f"{STAGING_PREFIX}*"))
    journaled: list[tuple[Journal, Any]] = []
    for staging in stagings:
        if (staging / JOURNAL_NAME).exists():
            journaled.append((read_json(staging / JOURNAL_NAME), staging))
        else:
            log.info("removing %s, left by an attempt that did not finish", staging)
            remove_folder(staging)
    for journal, staging in sorted(journaled, key=lambda pair: pair[0]["written_at"]):
        log.warning("%s: finishing the publication an interrupted attempt began (%s)", folder, staging)
        roll_forward(folder, staging, journal)
    return [str(staging) for _, staging in journaled]
