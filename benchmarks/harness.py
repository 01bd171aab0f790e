"""Measuring one client run: the simulator in its own process, the client in another.

* **wall**: ``time.perf_counter`` from spawning the client to reaping it (interpreter start and
  imports included: that is what a user waits for).
* **requests**: difference of the simulator's ``GET /_stats`` counters (``total``, summed over
  servers) before and after the run, so retries and refused (503) requests count as well.
* **CPU** and **peak RSS**: ``os.wait4`` on the client's pid returns its own ``rusage``:
  ``ru_utime + ru_stime`` and ``ru_maxrss`` (KiB on Linux) of that process alone, never of the
  simulator or the harness. The client is started by ``benchmarks/launcher.py`` (a stdlib-only
  interpreter of about 10 MB) which does that ``wait4``: Linux carries the peak RSS of the process
  that forked a client across ``exec``, so a client spawned by the harness itself (about 95 MB
  with aiohttp and pyarrow loaded) never showed less than the harness's size.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from esl_operators.simulator.process import read_lines as _read_lines

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")
SIM_START_TIMEOUT_S = 300.0  # building a 200k-label fleet takes a while on a slow machine
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FleetSpec:
    """Arguments of ``python -m esl_operators.simulator``."""

    servers: int
    stores: int
    esls: int
    page_size: int = 50
    latency_ms: float = 0.0
    capacity: int = 0
    overload_status: int | None = None
    seed: int = 1

    def argv(self, reference_date: str) -> list[str]:
        args = [
            "--servers", str(self.servers), "--base-port", "0", "--stores", str(self.stores),
            "--esls", str(self.esls), "--page-size", str(self.page_size),
            "--latency-ms", str(self.latency_ms), "--capacity", str(self.capacity),
            "--seed", str(self.seed), "--reference-date", reference_date,
        ]  # fmt: skip
        if self.overload_status is not None:
            args += ["--overload-status", str(self.overload_status)]
        return args


@dataclass
class Measurement:
    """One client run."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int
    rows: int | None = None
    requests: int | None = None
    overloaded: int | None = None
    log_tail: str = ""
    spawned_at: float | None = None  # time.monotonic() just before the client's fork (launcher)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Simulator:
    """The simulator CLI as a child process on free loopback ports; stopped by pid on exit."""

    def __init__(self, spec: FleetSpec, reference_date: str, log_path: Path) -> None:
        self.spec = spec
        self.reference_date = reference_date
        self.log_path = log_path
        self.urls: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Simulator:
        cmd = [PYTHON, "-m", "esl_operators.simulator", *self.spec.argv(self.reference_date)]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log)
        try:
            lines = _read_lines(self._proc, self.spec.servers, SIM_START_TIMEOUT_S)
            self.urls = [line.split(" listening on ", 1)[1].strip() for line in lines]
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # the CLI stops cleanly on SIGTERM
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def counters(self) -> dict[str, int]:
        """``total`` and ``overloaded`` summed over all servers (``/_stats`` is never counted)."""
        summed = {"total": 0, "overloaded": 0}
        for stats in self.counters_per_server():
            for key in summed:
                summed[key] += stats[key]
        return summed

    def counters_per_server(self) -> list[dict[str, int]]:
        """``total`` and ``overloaded`` of each server, in the order of :attr:`urls`."""
        found = []
        for url in self.urls:
            with urllib.request.urlopen(f"{url}/_stats", timeout=10) as response:
                stats = json.load(response)
            found.append({key: int(stats[key]) for key in ("total", "overloaded")})
        return found


@dataclass
class _Watchdog:
    """Kills a run's process group once ``timeout_s`` passes; cancelled when the run ends."""

    pid: int
    timeout_s: float
    fired: bool = False
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        if not self._done.wait(self.timeout_s):
            self.fired = True
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return  # ended on its own in the meantime

    def cancel(self) -> None:
        self._done.set()
        self._thread.join(STOP_TIMEOUT_S)


def measure(
    cmd: Sequence[str],
    *,
    log_path: Path,
    timeout_s: float,
    simulator: Simulator | None = None,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Run ``cmd`` (cwd = repository) to completion and measure it; see the module docstring."""
    before = simulator.counters() if simulator else None
    usage_path = log_path.with_suffix(".rusage.json")
    usage_path.unlink(missing_ok=True)
    started = time.perf_counter()
    with log_path.open("wb") as log:
        # Own session: on timeout the whole group is killed, grandchildren included.
        proc = subprocess.Popen(
            [PYTHON, "-I", "-S", str(LAUNCHER), str(usage_path), *cmd],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    watchdog = _Watchdog(proc.pid, timeout_s)
    try:
        _, status, _ = os.wait4(proc.pid, 0)
    except BaseException:
        # Interrupted (Ctrl-C): never leave the client running behind us.
        os.killpg(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
        raise
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    try:
        usage = json.loads(usage_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # The launcher itself was killed (the watchdog) before it could say: no client numbers.
        usage = {"cpu_s": 0.0, "peak_rss_kib": 0, "exit_code": proc.returncode or -9}
    result = Measurement(
        wall_s=wall,
        cpu_s=float(usage["cpu_s"]),
        peak_rss_mb=int(usage["peak_rss_kib"]) / 1024,
        exit_code=int(usage["exit_code"]),
        spawned_at=usage.get("spawned_at"),
    )
    if simulator is not None and before is not None:
        after = simulator.counters()
        result.requests = after["total"] - before["total"]
        result.overloaded = after["overloaded"] - before["overloaded"]
    if watchdog.fired:
        result.log_tail = f"killed after {timeout_s:.0f} s"
    elif not result.ok:
        result.log_tail = _tail(log_path)
    return result


def _tail(path: Path, lines: int = 2, width: int = 240) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " / ".join(line.strip() for line in text[-lines:])[:width]


def count_rows(folder: Path, pattern: str) -> int:
    """Data rows of all files matching ``pattern`` under ``folder``: CSVs are counted (headers
    excluded); for JSON files (our batch manifests) their ``rows`` field is summed, so the count
    does not depend on the format of our intermediate part files."""
    total = 0
    for path in sorted(folder.glob(pattern)):
        if path.suffix == ".json":
            total += int(json.loads(path.read_text(encoding="utf-8"))["rows"])
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            total += sum(1 for _ in csv.reader(handle)) - 1
    return total
