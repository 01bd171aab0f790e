"""What every scenario shares: the run date, the clients, and :class:`Bench`, which runs them.

A scenario is one module of ``benchmarks/scenarios`` with ``run(bench) -> Scenario``; its full and
quick sizes live in that module and are chosen with :meth:`Bench.pick`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, TypeVar

from benchmarks.harness import PYTHON, FleetSpec, Measurement, Simulator, count_rows, measure
from benchmarks.tables import Row

DATE = "2024-05-10"  # the simulator's reference date and every client's --date
CUTOFF_MS = int(datetime(2024, 5, 3, tzinfo=UTC).timestamp()) * 1000  # 7-day lookback
DEFAULT_CONCURRENCY = 4  # ours' default --max-concurrency, and the legacy semaphore
RUN_TIMEOUT_S = 600.0
PARTITIONS = "*/esl_id_part_*.csv"  # published CSVs under an output root

T = TypeVar("T")


class Scenario(TypedDict):
    """What a scenario returns: one section of BENCHMARKS.md (``rows`` become its table)."""

    title: str
    description: str
    rows: list[Row]
    columns: tuple[str, ...]  # keys of ``benchmarks.tables.COLUMNS``
    spec: NotRequired[FleetSpec]
    expected_rows: NotRequired[int | None]  # what the dataset says a correct export publishes
    adaptive_available: NotRequired[bool]
    checks: NotRequired[dict[str, bool]]  # a scenario's pass/fail checks its targets read (fleet)


@dataclass(frozen=True)
class Client:
    """A command run against the simulated servers: ``python -m <prefix> --server ... <extra>``."""

    label: str
    prefix: tuple[str, ...]
    extra: tuple[str, ...] = ()
    rows_glob: str = PARTITIONS

    def argv(self, urls: Sequence[str], out: Path) -> list[str]:
        servers = [arg for url in urls for arg in ("--server", url)]
        return [PYTHON, "-m", *self.prefix, *servers, "--date", DATE, "--out", str(out), *self.extra]


def ours(label: str, *extra: str) -> Client:
    return Client(label, ("esl_operators", "fetch"), extra)


class Bench:
    """Scenario runner: full or quick sizes, the repetition count, a scratch folder, run logs."""

    def __init__(self, quick: bool, reps: int, work: Path, say: Callable[[str], None]) -> None:
        self.quick = quick
        self.reps = reps
        self.work = work
        self.say = say
        self._runs = 0

    def pick(self, full: T, quick: T) -> T:
        """A scenario's size for this run: ``quick`` with ``--quick`` (the harness test), else ``full``."""
        return quick if self.quick else full

    def log(self, name: str) -> Path:
        self._runs += 1
        return self.work / f"{self._runs:03d}-{name}.log"

    def clients(self, spec: FleetSpec, clients: Sequence[Client], reps: int | None = None) -> list[Row]:
        """Each client ``reps`` times against one simulator, repetitions interleaved (rep 1 of all
        clients, then rep 2...) so slow drift of the machine hits every client alike."""
        with Simulator(spec, DATE, self.log("simulator")) as sim:
            return self.clients_on(sim, clients, reps)

    def clients_on(self, sim: Simulator, clients: Sequence[Client], reps: int | None = None) -> list[Row]:
        """:meth:`clients` against a simulator already running (a scenario that sets it up itself)."""
        rows = {c.label: Row(c.label) for c in clients}
        for rep in range(reps or self.reps):
            for client in clients:
                out = self.work / "out"
                shutil.rmtree(out, ignore_errors=True)
                run = measure(
                    client.argv(sim.urls, out),
                    log_path=self.log("client"),
                    timeout_s=RUN_TIMEOUT_S,
                    simulator=sim,
                )
                if run.ok:
                    run.rows = count_rows(out, client.rows_glob)
                rows[client.label].runs.append(run)
                self.say(f"  {client.label} #{rep + 1}: {_brief(run)}")
        return list(rows.values())

    def run_step(
        self,
        cmd: Sequence[str],
        name: str,
        env: dict[str, str] | None = None,
        rows: tuple[Path, str] | None = None,
    ) -> Measurement:
        """One measured command; ``rows``: (folder, glob) of the CSVs whose rows it published."""
        run = measure(cmd, log_path=self.log(name), timeout_s=RUN_TIMEOUT_S, env=env)
        if run.ok and rows is not None:
            run.rows = count_rows(*rows)
        self.say(f"  {name}: {_brief(run)}")
        return run


def baselines(bench: Bench, *, with_sleep: bool = True) -> list[Client]:
    """The clients ours is compared with in the network scenarios (``benchmarks/legacy.py`` and
    ``benchmarks/requests_threads.py``). ``with_sleep=False`` leaves out the legacy script as it
    runs (1 s of sleep per page): only the latency-bound comparison needs it, and elsewhere it was
    a minute of ``make bench`` spent on a number no target reads."""
    sleep_s = bench.pick(1.0, 0.05)  # the legacy script's pause per page
    slept = Client(
        f"legacy-style, sleep {sleep_s:g} s/page", ("benchmarks.legacy",), ("--page-sleep", str(sleep_s))
    )
    return [
        *([slept] if with_sleep else []),
        Client("legacy-style, no sleep", ("benchmarks.legacy",), ("--page-sleep", "0")),
        Client("requests + threads(16)", ("benchmarks.requests_threads",)),
    ]


def _brief(run: Measurement) -> str:
    text = f"{run.wall_s:.2f} s, {run.cpu_s:.2f} CPU s, {run.peak_rss_mb:.0f} MB, rows {run.rows}"
    if run.requests is not None:
        text += f", {run.requests} requests ({run.overloaded} refused)"
    return text if run.ok else f"{text}, FAILED exit {run.exit_code}: {run.log_tail}"


def describe(spec: FleetSpec) -> str:
    capacity = f"capacity {spec.capacity}" if spec.capacity else "no capacity limit"
    return (
        f"{spec.servers} server(s) × {spec.stores} stores × {spec.esls:,} ESLs, {spec.page_size} per page, "
        f"{spec.latency_ms:g} ms latency, {capacity}."
    )


def failed(title: str, exc: BaseException) -> Scenario:
    """The section of a scenario that raised: said so, so the other scenarios' numbers still count."""
    text = f"**The scenario failed and was not measured**: {type(exc).__name__}: {exc}"
    return {"title": title, "description": text, "rows": [], "columns": ()}


def jsonable(value: Any) -> Any:
    """``json.dumps(default=...)`` for the dataclasses in a scenario (its ``spec``)."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    raise TypeError(f"not JSON serialisable: {value!r}")
