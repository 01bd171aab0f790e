"""The fetch engine: a few threads, one asyncio loop each, draining servers into a part file.

At most :data:`MAX_LOOP_THREADS` threads each run one ``asyncio.run`` loop that drives several
servers at once, every server with its own ``aiohttp`` session, limiter and semaphore: the legacy
script shared one loop across threads and crashed, and one thread per server contends for the GIL.
Inside a server, stores run concurrently and the details of a page are fetched concurrently, all
under the server's semaphore, while the next page is already being fetched.

Longer than 300 lines: the loop threads, the per-server lifetime (a server's session, limiter and
semaphore) and the error classification belong together, which is easier to review in one module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from esl_operators.client import EslClient, Page, ServerTarget, TransportSettings
from esl_operators.exceptions import (
    AuthError,
    ConfigError,
    EslApiError,
    NotFoundError,
    RecordError,
    StorageError,
)
from esl_operators.limiter import AdaptiveLimiter
from esl_operators.manifest import ErrorEntry, ServerManifest, server_manifest
from esl_operators.pagination import PageWalk, iter_pages
from esl_operators.progress import Progress
from esl_operators.records import DAY_MS, esl_id_of, last_heartbeat_ms, to_part_row
from esl_operators.retry import RetryPolicy
from esl_operators.settings import MAX_LOOP_THREADS, default, for_task, resolve

log = logging.getLogger(__name__)

# Rows are handed to the part writer in chunks: memory stays flat, the writer's lock stays cold.
CHUNK_ROWS = 2_000
# Left-out labels are always counted; only this many per store are listed by id in a manifest.
MAX_LISTED = 100
# Details of this many pages of a store are on the wire at once once it is the last store of its
# server still walking: its next page's details queue up while the current page's finish, so the
# server's limit stays busy across page ends (one page at a time left most slots idle for the last
# round trip of every page). While other stores walk, their pages fill those slots and one page at a
# time is kept: a deeper queue cost about 5% more CPU per request when CPU-bound (measured).
PAGES_IN_FLIGHT = 2


class RowSink(Protocol):
    def write_rows(self, rows: Sequence[Sequence[str]]) -> None: ...


def _default_max_valid_ms() -> int:
    # The wall clock is used only to spot impossible (far-future) timestamps, never for the window.
    return int(time.time() * 1000) + DAY_MS


@dataclass(frozen=True)
class FetchSettings:
    """What the engine needs of a run's settings; built by :func:`make_settings` from the table."""

    cutoff_ms: int
    max_concurrency: int = default("max_concurrency")
    max_records_per_store: int = default("max_records_per_store")
    max_pages: int = default("max_pages")
    adaptive_concurrency: bool = default("adaptive_concurrency")
    progress_interval_s: float = default("progress_interval_s")
    transport: TransportSettings = field(default_factory=TransportSettings)
    max_valid_ms: int = field(default_factory=_default_max_valid_ms)

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_records_per_store < 1:
            raise ValueError(f"max_records_per_store must be >= 1, got {self.max_records_per_store}")
        if self.max_pages < 1:
            raise ValueError(f"max_pages must be >= 1, got {self.max_pages}")


def make_settings(*, cutoff_ms: int, **options: Any) -> FetchSettings:
    """Engine settings from the fetch task's options (``settings.for_task("fetch")``), each checked
    against the table; a missing one takes the table's default. Unknown names are refused.
    """
    unknown = sorted(set(options) - {s.name for s in for_task("fetch")})
    if unknown:
        raise ConfigError(f"unknown fetch settings {unknown}")
    values = resolve(options, for_task("fetch"), lambda s: s.name)
    transport = TransportSettings(
        timeout_s=values["request_timeout_s"],
        connect_timeout_s=values["connect_timeout_s"],
        max_body_bytes=int(values["max_body_mb"] * 1024 * 1024),
        retry=RetryPolicy(attempts=values["retry_attempts"], max_delay_s=values["retry_max_delay_s"]),
    )
    return FetchSettings(
        cutoff_ms=cutoff_ms,
        max_concurrency=values["max_concurrency"],
        max_records_per_store=values["max_records_per_store"],
        max_pages=values["max_pages"],
        adaptive_concurrency=values["adaptive_concurrency"],
        progress_interval_s=values["progress_interval_s"],
        transport=transport,
    )


@dataclass
class StoreResult:
    store: str
    rows: int = 0
    seen: int = 0
    stale: int = 0
    invalid: int = 0
    removed: int = 0
    capped: bool = False
    error: str | None = None
    pages_announced_first: int = 0  # total_page of page 1
    pages_walked: int = 0  # differs when the store moved onto more or fewer pages while paged
    invalid_samples: list[dict[str, str]] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)
    blanked_fields: dict[str, int] = field(default_factory=dict)

    def reject(self, esl_id: str, reason: str) -> None:
        self.invalid += 1
        if len(self.invalid_samples) < MAX_LISTED:
            self.invalid_samples.append({"esl_id": esl_id, "reason": reason})

    def remove(self, esl_id: str) -> None:
        self.removed += 1
        if len(self.removed_ids) < MAX_LISTED:
            self.removed_ids.append(esl_id)

    def blank(self, issues: list[tuple[str, str]]) -> None:
        for name, _reason in issues:
            self.blanked_fields[name] = self.blanked_fields.get(name, 0) + 1


@dataclass
class ServerResult:
    server: str
    stores: list[StoreResult] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    requests: int = 0
    retries: int = 0
    concurrency: int = 0  # the limit the server ended at (adaptive) or the fixed one
    concurrency_changes: int = 0

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.stores)

    def errors(self) -> list[ErrorEntry]:
        found: list[ErrorEntry] = []
        if self.error:
            found.append({"server": self.server, "store": "", "error": self.error})
        found += [{"server": self.server, "store": s.store, "error": s.error} for s in self.stores if s.error]
        return found

    def to_manifest(self) -> ServerManifest:
        return server_manifest(self)


_REMOVED = object()  # marks a detail that answered 404: the label left between listing and detail


def _primary(group: BaseExceptionGroup) -> BaseException:
    """The error a failed task group stands for: a broken part file (it fails the whole batch), then
    credentials, then the first API error."""
    for kind in (StorageError, AuthError, EslApiError):
        matched = group.subgroup(kind)
        if matched is not None:
            return _leaves(matched)[0]
    return group


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _detail_or_removed(client: EslClient, esl_id: str) -> Any:
    try:
        return await client.get_detail(esl_id)
    except NotFoundError:
        return _REMOVED


async def _fetch_details(client: EslClient, ids: list[str]) -> list[Any]:
    """All details of one page, concurrently; the first real failure cancels the rest."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_detail_or_removed(client, esl_id)) for esl_id in ids]
    except BaseExceptionGroup as group:
        raise _primary(group) from None
    return [task.result() for task in tasks]


@dataclass
class _PageInFlight:
    """A page whose details are on the wire; the store records it when its turn comes, in page order."""

    number: int
    ids: list[str]
    rejected: list[tuple[str, str]]  # (esl_id, reason) of entries without a usable id
    walked: int  # PageWalk.walked when the page arrived: the store's pages_walked if the walk ends here
    details: asyncio.Task[list[Any]]


@dataclass
class _Walking:
    """How many stores of a server are still walking their pages (one event loop: no lock)."""

    stores: int


def _start_details(client: EslClient, page: Page, walked: int) -> _PageInFlight:
    ids: list[str] = []
    rejected: list[tuple[str, str]] = []
    for entry in page.entries:
        try:
            ids.append(esl_id_of(entry))
        except RecordError as exc:
            rejected.append((str(exc.esl_id), f"page {page.number}: {exc.reason}"))
    task = asyncio.create_task(_fetch_details(client, ids))
    return _PageInFlight(page.number, ids, rejected, walked, task)


async def _fetch_store(
    client: EslClient,
    store: str,
    settings: FetchSettings,
    sink: RowSink,
    progress: Progress,
    still_walking: _Walking,
) -> StoreResult:
    """Walk a store's pages; the last store walking has the details of PAGES_IN_FLIGHT pages on the
    wire at once, the others one page's.

    Whatever the overlap, the store's outcome is the one of walking its pages one by one: pages are
    recorded in page order, a failure counts only if every page before it was recorded without the
    store being capped, and ``pages_walked`` is the walk's count at the page it stopped at.
    """
    result = StoreResult(store)
    buffer: list[tuple[str, ...]] = []
    walk = PageWalk()
    pending: collections.deque[_PageInFlight] = collections.deque()
    walked: int | None = None

    async def record(page: _PageInFlight) -> bool:
        """One page's rows and counts, True once the store is capped (the walk ends there)."""
        nonlocal walked, buffer
        walked = page.walked
        for esl_id, reason in page.rejected:
            result.reject(esl_id, reason)
        details = await page.details
        progress.advance(len(page.ids))
        for esl_id, detail in zip(page.ids, details, strict=True):
            result.seen += 1
            row = _row_or_none(detail, esl_id, store, client.server, settings, result)
            if row is None:
                continue
            buffer.append(row)
            result.rows += 1
            if result.rows >= settings.max_records_per_store:
                result.capped = True
                break
        if len(buffer) >= CHUNK_ROWS:
            sink.write_rows(buffer)
            buffer = []
        return result.capped

    try:
        # aclosing: leaving early (cap, error) must cancel the page fetched ahead, not leak it.
        walking = iter_pages(client, store, max_pages=settings.max_pages, walk=walk)
        async with contextlib.aclosing(walking) as pages:
            try:
                async for page in pages:
                    if page.number == 1:
                        progress.expect(page.total_pages * len(page.entries))
                    pending.append(_start_details(client, page, walk.walked))
                    depth = PAGES_IN_FLIGHT if still_walking.stores == 1 else 1
                    if len(pending) >= depth and await record(pending.popleft()):
                        break
            except EslApiError:
                # A later page failed: the pages before it count first, and a cap among them means
                # a walk one page at a time would never have asked for the failed page.
                while pending:
                    if await record(pending.popleft()):
                        break
                else:
                    raise
            while pending and not result.capped:
                await record(pending.popleft())
    except AuthError:
        raise  # not this store's problem: the whole server refuses us
    except EslApiError as exc:
        result.error = str(exc)
    finally:
        still_walking.stores -= 1
        # Pages past a cap or a failure are not wanted: their details are cancelled, outcome discarded.
        for unwanted in pending:
            unwanted.details.cancel()
        await asyncio.gather(*(unwanted.details for unwanted in pending), return_exceptions=True)
    result.pages_announced_first = walk.announced_first
    result.pages_walked = walk.walked if walked is None else walked
    if buffer:
        sink.write_rows(buffer)
    return result


def _row_or_none(
    detail: Any, esl_id: str, store: str, server: str, settings: FetchSettings, result: StoreResult
) -> tuple[str, ...] | None:
    """Apply the heartbeat window and build the row; count whatever is left out, and why."""
    if detail is _REMOVED:
        result.remove(esl_id)
        return None
    try:
        if not isinstance(detail, dict):
            raise RecordError(esl_id, f"detail 'data' is a {type(detail).__name__}, not an object")
        if esl_id_of(detail) != esl_id:
            raise RecordError(esl_id, f"detail answered for esl_id {detail.get('esl_id')!r}")
        if last_heartbeat_ms(detail, settings.max_valid_ms) < settings.cutoff_ms:
            result.stale += 1
            return None
        row, issues = to_part_row(detail, store=store, server=server, max_valid_ms=settings.max_valid_ms)
    except RecordError as exc:
        result.reject(esl_id, exc.reason)
        return None
    result.blank(issues)
    return row


async def fetch_server(target: ServerTarget, settings: FetchSettings, sink: RowSink) -> ServerResult:
    """Drain one server. Errors are recorded in the result, never raised past it."""
    started = time.monotonic()
    result = ServerResult(target.name)
    progress = Progress(target.name, interval_s=settings.progress_interval_s)
    limiter = AdaptiveLimiter(
        settings.max_concurrency, name=target.name, adaptive=settings.adaptive_concurrency
    )
    connector = aiohttp.TCPConnector(limit=settings.max_concurrency, ssl=target.ssl())
    client: EslClient | None = None
    try:
        async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
            client = EslClient(session, target, limiter, transport=settings.transport)
            stores = await client.list_stores()
            log.info("%s: %d stores", target.display, len(stores))
            walking = _Walking(len(stores))
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(_fetch_store(client, s, settings, sink, progress, walking))
                        for s in stores
                    ]
            except BaseExceptionGroup as failed:
                raise _primary(failed) from None
            result.stores = [task.result() for task in tasks]
    except EslApiError as exc:
        result.error = str(exc)
    finally:
        progress.close()
        result.duration_s = time.monotonic() - started
        if client is not None:
            result.requests, result.retries = client.requests, client.retries
        result.concurrency, result.concurrency_changes = limiter.limit, limiter.changes
        limiter.close()  # stops its lag timer; its one INFO line about the server
    return result


# The servers in flight share at most MAX_LOOP_THREADS (settings) threads, each loop driving several
# servers. Measured on 1,000 servers, 64,000 requests (benchmarks/scenarios/fleet_scale.py): one
# thread per server in flight (32) spent 21.5-25.3 CPU s, contending for the GIL; 4 loops 19.2; 4
# servers with the same requests 15.6-19.1. A few loops, not one (21.5-27 CPU s, far slower): a loop
# busy converting a page would stall every server.


class _Queue:
    """Target indexes in input order, handed out to the loops' workers (thread-safe)."""

    def __init__(self, count: int) -> None:
        self._next = 0
        self._count = count
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._count:
                return None
            self._next += 1
            return self._next - 1


# What a server ended in: its result, or the exception that escaped fetch_server (a broken part file,
# a bug), which fetch_servers raises once every server is done, as the thread pool used to.
_Outcome = ServerResult | Exception


@dataclass(frozen=True)
class _Work:
    """What every loop thread shares: the queue of target indexes, the targets, their sinks, and
    the outcome list each server's worker fills at its index."""

    queue: _Queue
    targets: Sequence[ServerTarget]
    settings: FetchSettings
    sinks: Sequence[RowSink]
    outcomes: list[_Outcome | None]


async def _run_servers(work: _Work, slots: int) -> None:
    """``slots`` servers at a time on this loop, each with its own session, limiter and semaphore
    (:func:`fetch_server`), until the queue is empty."""

    async def worker() -> None:
        while (index := work.queue.take()) is not None:
            try:
                outcome: _Outcome = await fetch_server(work.targets[index], work.settings, work.sinks[index])
            except Exception as exc:  # noqa: BLE001 - that server's failure alone; raised by fetch_servers
                outcome = exc
            work.outcomes[index] = outcome

    await asyncio.gather(*(worker() for _ in range(slots)))


def _run_loop(work: _Work, slots: int) -> None:
    # A fresh loop per thread, created and closed in it: nothing asyncio-bound crosses threads.
    asyncio.run(_run_servers(work, slots))


def loop_slots(in_flight: int) -> list[int]:
    """Servers at once per loop thread: ``in_flight`` spread as evenly as possible over at most
    :data:`MAX_LOOP_THREADS` loops (5 -> [2, 1, 1, 1])."""
    loops = min(MAX_LOOP_THREADS, in_flight)
    return [in_flight // loops + (1 if i < in_flight % loops else 0) for i in range(loops)]


def fetch_servers(
    targets: Sequence[ServerTarget],
    settings: FetchSettings,
    sink: RowSink | Sequence[RowSink],
    *,
    max_threads: int = 3,
) -> list[ServerResult]:
    """Fetch every target with at most ``max_threads`` servers in flight; results in input order.

    The servers in flight share at most :data:`MAX_LOOP_THREADS` threads, one event loop each. A server
    that fails is that server's result alone; an exception that escapes a server (a broken part file)
    is raised once every server is done, the first in input order.

    ``sink`` is one sink for all targets, or one per target (the standalone command runs several
    batches, each with its own part file, through one pool).
    """
    if max_threads < 1:
        raise ValueError(f"max_threads must be >= 1, got {max_threads}")
    sinks = [sink] * len(targets) if not isinstance(sink, Sequence) else list(sink)
    if len(sinks) != len(targets):
        raise ValueError(f"{len(sinks)} sinks for {len(targets)} targets")
    if not targets:
        return []
    work = _Work(_Queue(len(targets)), targets, settings, sinks, [None] * len(targets))
    slots = loop_slots(min(max_threads, len(targets)))
    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="esl-fetch") as pool:
        loops = [pool.submit(_run_loop, work, n) for n in slots]
        for done in loops:
            done.result()  # a loop itself never fails; BaseException (KeyboardInterrupt) passes
    results: list[ServerResult] = []
    for outcome in work.outcomes:
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None  # every index was taken by a worker that ran to completion
        results.append(outcome)
    return results
