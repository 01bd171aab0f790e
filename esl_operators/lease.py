"""One writer per date: a lease file, ``{ds}/_lease.json``, created exclusively by the run writing the date.

The lease holds who writes (``holder``: the DAG run, or one ``esl-export fetch`` invocation), the host,
the process id, when it was taken and when it expires. A second writer finds it and fails at once with
a :class:`~esl_operators.exceptions.LeaseError` naming the holder; a DAG task's retry tries again later.

**Who takes it, where.** The aggregate step (it publishes) takes the lease before it touches the date
folder (finishing or removing an earlier attempt's staging folder, staging, committing) and releases it
in a ``finally``; ``esl-export fetch`` takes it for the whole command, before the first request, since
its fetch writes the same ``_parts/`` files as the DAG's. The DAG's fetch tasks do not take it (they run
in parallel on several workers, and a lease released by one would be gone for the others); each checks
instead that no other writer holds the date (:func:`check_free`). Whoever commits re-reads the lease
first (:func:`check_held`): a writer whose lease was taken over never publishes.

**Expiry.** A lease expires :data:`LEASE_TTL_S` (2 minutes) after it was last renewed; the holder renews
it every :data:`RENEW_EVERY_S` (30 s) from a background thread while it works, so only a writer that
died (SIGKILL, a lost machine) lets it expire. An expired lease is taken over by the next writer (a
warning names the old holder); so is, at once, a lease whose holder was a process on the same host (and
pid namespace) that no longer exists: a killed ``esl-export fetch`` rerun on the same machine does not
wait. Expiry compares the holder's clock (``expires_at``) with the reader's: hosts must keep their
clocks within a minute of each other (NTP).

**How exclusive.** Locally (``pathlib`` and ``file://`` roots) the lease is written to a temporary file
and hard-linked to its name (``link(2)`` fails if the name exists, like ``O_CREAT|O_EXCL``, and the lease
is never seen half-written); where hard links are not supported, ``O_CREAT|O_EXCL`` itself. On object
storage it is a conditional PUT (``If-None-Match: *``, s3fs's ``mode="create"``): S3 refuses it when the
object exists, atomically. Other fsspec stores without conditional writes get write-then-check (not
exclusive: two writers arriving at the same instant may both succeed; :func:`check_held` at commit
time still lets only the lease's last writer publish). Not guaranteed anywhere: taking over an *expired*
lease is a delete followed by a create, so two writers that find the same expired lease at the same
moment may both believe they took it; the commit-time check then lets only one of them publish.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from esl_operators.exceptions import LeaseError, StorageError
from esl_operators.storage import LEASE_NAME, PathLike, local_path, storage_errors, write_text_atomic

log = logging.getLogger(__name__)

#: Seconds after its last renewal that a lease expires (a dead writer blocks the date this long at most).
LEASE_TTL_S = 120.0
#: Seconds between two renewals by the holder.
RENEW_EVERY_S = 30.0

_EXPIRED = "1970-01-01T00:00:00+00:00"
_HELD: dict[str, Lease] = {}  # folder -> the lease this process holds on it
_HELD_LOCK = threading.Lock()


def dag_run_holder(context: Any) -> str:
    """The holder name of a DAG run: every task and retry of the run is the same writer."""
    return f"dag run {context['dag'].dag_id}/{context['run_id']}"


def command_holder() -> str:
    """The holder name of one ``esl-export fetch`` invocation (a new one each time)."""
    return f"esl-export fetch {uuid.uuid4().hex[:8]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _read(path: PathLike) -> dict[str, Any] | None:
    """The lease at ``path``, None if there is none; an unreadable one counts as expired."""
    remote: Any = path
    if local_path(path) is None:
        remote.fs.invalidate_cache(remote.path)  # another process may have written it since we listed
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError("read", path, exc) from exc
    try:
        record = json.loads(text)
        datetime.fromisoformat(record["expires_at"])
        return dict(record)
    except (ValueError, KeyError, TypeError):
        log.warning("%s is not a lease this package wrote (%r): taken as expired", path, text[:200])
        return {"holder": "unknown", "host": "?", "pid": 0, "taken_at": "?", "expires_at": _EXPIRED}


def _expired(record: dict[str, Any]) -> bool:
    """Past its expiry, or its holder is a process of this host that no longer exists (it was killed:
    a rerun on the same machine need not wait for the expiry)."""
    if datetime.fromisoformat(record["expires_at"]) <= _now():
        return True
    same_processes = record.get("host") == socket.gethostname() and record.get("pids") == _pid_namespace()
    if not same_processes or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _pid_namespace() -> str:
    """Which process ids ``pid`` refers to: containers sharing a host name (host networking) may
    still see different processes (Linux: the pid namespace; elsewhere the host name alone)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def describe(record: dict[str, Any]) -> str:
    return (
        f"{record['holder']} on host {record['host']} (pid {record['pid']}) since {record['taken_at']}, "
        f"lease expires at {record['expires_at']} unless renewed"
    )


def _refusal(folder: PathLike, record: dict[str, Any]) -> LeaseError:
    return LeaseError(
        f"{folder} is being written by {describe(record)} ({folder / LEASE_NAME}); not writing it at the "
        "same time: try again later (a DAG task's retry does)"
    )


def _create_exclusive(path: PathLike, data: str) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it."""
    local = local_path(path)
    if local is not None:
        tmp = local.parent / f".{local.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(data, encoding="utf-8")
        try:
            os.link(tmp, local)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network file systems): O_EXCL itself
            try:
                fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
        finally:
            tmp.unlink(missing_ok=True)
        return True
    remote: Any = path
    try:
        remote.fs.pipe_file(remote.path, data.encode("utf-8"), mode="create")  # S3: If-None-Match: *
    except FileExistsError:
        return False
    return True


class Lease:
    """The lease of one date folder for ``holder``; a context manager (acquired on entry, released on exit).

    ``ttl_s`` and ``renew_every_s`` default to :data:`LEASE_TTL_S` and :data:`RENEW_EVERY_S`.
    """

    def __init__(
        self,
        folder: PathLike,
        holder: str,
        *,
        ttl_s: float = LEASE_TTL_S,
        renew_every_s: float = RENEW_EVERY_S,
    ) -> None:
        self.folder = folder
        self.path: Any = folder / LEASE_NAME
        self.holder = holder
        self.ttl_s = ttl_s
        self.renew_every_s = renew_every_s
        self.taken_at = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self) -> str:
        now = _now()
        record = {
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pids": _pid_namespace(),
            "taken_at": self.taken_at or now.isoformat(timespec="seconds"),
            "expires_at": (now + timedelta(seconds=self.ttl_s)).isoformat(timespec="milliseconds"),
        }
        return json.dumps(record, indent=2) + "\n"

    def acquire(self) -> Self:
        """Take the lease, or renew it if this holder has it already (a retry of the same DAG run);
        :class:`LeaseError` naming the holder if another writer has it and it has not expired."""
        with storage_errors("take the lease", self.path):
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(3):  # a lease released or taken over meanwhile: look again
                if _create_exclusive(self.path, self._record()):
                    break
                record = _read(self.path)
                if record is None:
                    continue
                if record["holder"] == self.holder:
                    log.info("%s: renewing the lease of an earlier attempt of %s", self.folder, self.holder)
                    write_text_atomic(self.path, self._record())
                    break
                if not _expired(record):
                    raise _refusal(self.folder, record)
                log.warning("%s: taking over the expired lease of %s", self.folder, describe(record))
                self.path.unlink(missing_ok=True)
            else:
                raise LeaseError(f"{self.path}: could not take the lease (other writers keep taking it)")
        self.taken_at = _now().isoformat(timespec="seconds")
        with _HELD_LOCK:
            _HELD[str(self.folder)] = self
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.folder}", daemon=True)
        self._renewer.start()
        log.info("%s: lease taken by %s", self.folder, self.holder)
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                record = _read(self.path)
                if record is None or record["holder"] != self.holder:
                    log.error("%s: the lease was taken over: %s", self.folder, record and describe(record))
                    return
                write_text_atomic(self.path, self._record())
            except OSError as exc:  # the store is unreachable now: try again at the next renewal
                log.warning("%s: renewing the lease failed: %s", self.folder, exc)

    def check(self) -> None:
        """:class:`LeaseError` unless the lease file still names this holder."""
        record = _read(self.path)
        if record is None or record["holder"] != self.holder:
            what = "was removed" if record is None else f"is now held by {describe(record)}"
            raise LeaseError(f"{self.folder}: the lease of {self.holder} {what}; not publishing")

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this holder's."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        with _HELD_LOCK:
            if _HELD.get(str(self.folder)) is self:
                del _HELD[str(self.folder)]
        record = _read(self.path)
        if record is not None and record["holder"] == self.holder:
            with storage_errors("release the lease", self.path):
                self.path.unlink(missing_ok=True)
            log.info("%s: lease released by %s", self.folder, self.holder)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.release()
            return
        try:
            self.release()
        except OSError as failed:  # must not hide why the run failed; the lease expires by itself
            log.warning(
                "%s: could not release the lease (%s); it expires in %.0f s", self.folder, failed, self.ttl_s
            )


def check_free(folder: PathLike, holder: str) -> None:
    """:class:`LeaseError` if a writer other than ``holder`` holds an unexpired lease on ``folder``."""
    record = _read(folder / LEASE_NAME)
    if record is not None and record["holder"] != holder and not _expired(record):
        raise _refusal(folder, record)


def check_held(folder: PathLike) -> None:
    """If this process holds a lease on ``folder``, make sure it still does (before publishing)."""
    with _HELD_LOCK:
        held = _HELD.get(str(folder))
    if held is not None:
        held.check()
