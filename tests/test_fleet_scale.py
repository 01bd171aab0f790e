"""Fleet scale: one simulator process serving 300 servers from a low open-files limit (it raises its
own), and the standalone command against all of them, the rows exact; several servers per event loop
in the engine, each failing alone.

300 servers, beyond 256: the ESL ids' server byte wraps, so ids are unique per server only.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from esl_operators import cli
from esl_operators.client import ServerTarget
from esl_operators.engine import fetch_servers, loop_slots
from esl_operators.exceptions import StorageError
from esl_operators.records import PART_COLUMNS
from esl_operators.settings import MAX_LOOP_THREADS
from esl_operators.simulator import Fleet, ServerData, SimulatorThread, build_fleet
from esl_operators.simulator.process import read_lines, stop
from esl_operators.simulator.server import FILES_PER_SERVER, SPARE_FILES
from tests.expected import expected_partition
from tests.support import ANCHOR_MS, CUTOFF_MS, DS, REPO, ListSink, csv_rows, fetch_settings

pytestmark = pytest.mark.timeout(120)

SERVERS = 300
BATCH = 50
LOW_LIMIT = 256  # below what 300 listening sockets need
ESL_ID, SERVER = PART_COLUMNS.index("esl_id"), PART_COLUMNS.index("server")
FLEET_ARGS = {"stores": 3, "esls": 60, "page_size": 30, "seed": 6}  # 2 stores x 30 labels, 1 empty


def _low_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_LIMIT, hard))


def _soft_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text(encoding="utf-8")
    found = re.search(r"^Max open files\s+(\d+)", limits, re.MULTILINE)
    assert found is not None, limits
    return int(found.group(1))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], int, Path]]:
    """The simulator's URLs, its open-files soft limit once listening, and its stderr's file."""
    stderr = tmp_path_factory.mktemp("fleet") / "simulator.err"
    args = [f"--{name.replace('_', '-')}={value}" for name, value in FLEET_ARGS.items()]
    cmd = [sys.executable, "-m", "esl_operators.simulator", f"--servers={SERVERS}", "--base-port=0", *args]
    with stderr.open("wb") as errors:
        proc = subprocess.Popen(
            [*cmd, f"--reference-date={DS}"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=errors,
            preexec_fn=_low_open_files_limit,  # only setrlimit, between fork and exec
        )
    try:
        lines = read_lines(proc, SERVERS, timeout=60)
        yield [line.split(" listening on ", 1)[1] for line in lines], _soft_limit(proc.pid), stderr
    finally:
        stop(proc)


def test_the_simulator_raises_its_own_open_files_limit(served: tuple[list[str], int, Path]) -> None:
    urls, soft, stderr = served
    needed = SERVERS * FILES_PER_SERVER + SPARE_FILES
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == min(needed, hard) > LOW_LIMIT
    said = f"simulator: open-files limit raised from {LOW_LIMIT} to {soft} for {SERVERS} servers\n"
    assert stderr.read_text(encoding="utf-8") == said
    assert len(set(urls)) == SERVERS


def test_the_command_exports_every_server_exactly(
    served: tuple[list[str], int, Path], tmp_path: Path
) -> None:
    urls, _, _ = served
    names = [f"esl_{i}" for i in range(SERVERS)]
    argv = ["fetch", "--date", DS, "--out", str(tmp_path), "--servers-per-batch", str(BATCH)]
    for name, url in zip(names, urls, strict=True):
        argv += ["--server", f"{name}={url}"]
    assert cli.main(argv) == 0

    fleet = build_fleet(servers=SERVERS, reference_ms=ANCHOR_MS, **FLEET_ARGS)
    assert {len(s.real_stores) for s in fleet.servers} == {3}
    assert sorted({len(esls) for s in fleet.servers for esls in s.real_stores.values()}) == [0, 30]
    # Server 256's ids carry server 0's byte: unique per server only.
    assert {i[:3] for i in _ids(fleet.servers[0])} == {i[:3] for i in _ids(fleet.servers[256])} == {"51-"}
    folder = tmp_path / DS
    parts = sorted(folder.glob("esl_id_part_*.csv"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert [p.name for p in parts] == [f"esl_id_part_{n}.csv" for n in range(1, SERVERS // BATCH + 1)]
    total = 0
    for number, path in enumerate(parts):
        batch = range(number * BATCH, (number + 1) * BATCH)
        expected = expected_partition(fleet, {i: names[i] for i in batch}, CUTOFF_MS)
        assert csv_rows(path)[1:] == expected, path.name
        total += len(expected)
    assert total > SERVERS * 15  # about 38% of the labels are inside the 7-day lookback


def _ids(server: ServerData) -> list[str]:
    return [esl["esl_id"] for esls in server.real_stores.values() for esl in esls]


# --- several servers per event loop (esl_operators.engine) --------------------------------------------


def test_servers_in_flight_are_spread_over_at_most_max_loop_threads() -> None:
    assert MAX_LOOP_THREADS == 4
    cases = {1: [1], 3: [1, 1, 1], 4: [1, 1, 1, 1], 5: [2, 1, 1, 1], 32: [8, 8, 8, 8], 33: [9, 8, 8, 8]}
    assert {n: loop_slots(n) for n in cases} == cases


class ThreadSink(ListSink):
    """A ListSink remembering which thread wrote each server's rows; ``fail_on`` raises StorageError."""

    def __init__(self, fail_on: str | None = None) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.threads: dict[str, set[str]] = {}

    def write_rows(self, rows: Sequence[Sequence[str]]) -> None:
        server = rows[0][SERVER]
        if server == self.fail_on:
            raise StorageError("write", f"the part of {server}", OSError(errno.ENOSPC, "No space left"))
        self.threads.setdefault(server, set()).add(threading.current_thread().name)
        super().write_rows(rows)


def test_several_servers_share_a_loop_and_a_failing_one_fails_alone(
    simulator: SimulatorThread, small_fleet: Fleet, refused_port: int
) -> None:
    down = [ServerTarget(name=f"esl_down_{k}", base_url=f"http://127.0.0.1:{refused_port}") for k in range(6)]
    live = [ServerTarget(name=f"esl_sim_{k}", base_url=simulator.urls[k % 3]) for k in range(6)]
    targets = [t for pair in zip(live, down, strict=True) for t in pair]  # 12, interleaved
    sink = ThreadSink()
    results = fetch_servers(targets, fetch_settings(), sink, max_threads=8)  # 4 loops x 2 servers

    assert [r.server for r in results] == [t.name for t in targets]
    for target, result in zip(targets, results, strict=True):
        if target.name.startswith("esl_down"):
            assert result.error is not None and result.error.startswith(f"{target.name}: list stores: ")
            assert result.rows == 0
            continue
        assert result.errors() == []
        index = int(target.name.rsplit("_", 1)[1]) % 3
        expected = sorted(
            esl["esl_id"]
            for esls in small_fleet.servers[index].real_stores.values()
            for esl in esls
            if esl["last_hb_time"] >= CUTOFF_MS
        )
        got = sorted(r[ESL_ID] for r in sink.rows if r[SERVER] == target.name)
        assert got == expected and result.rows == len(expected)
    threads = set().union(*sink.threads.values())
    assert 1 <= len(threads) <= MAX_LOOP_THREADS and len(sink.threads) == 6
    assert all(len(names) == 1 for names in sink.threads.values())  # a server stays on its loop


def test_an_exception_escaping_one_server_is_raised_after_the_others_finish(
    simulator: SimulatorThread, small_fleet: Fleet
) -> None:
    targets = [ServerTarget(name=f"esl_sim_{k}", base_url=simulator.urls[k % 3]) for k in range(6)]
    sink = ThreadSink(fail_on="esl_sim_1")
    refused = r"^cannot write the part of esl_sim_1: \[Errno 28\] No space left$"
    with pytest.raises(StorageError, match=refused):
        fetch_servers(targets, fetch_settings(), sink, max_threads=6)  # loops of 2, 2, 1 and 1 servers
    # Every other server was still fetched to its end, on the loops the failing one shared.
    rows = Counter(r[SERVER] for r in sink.rows)
    for k in (0, 2, 3, 4, 5):
        esls = [e for s in small_fleet.servers[k % 3].real_stores.values() for e in s]
        assert rows[f"esl_sim_{k}"] == sum(1 for e in esls if e["last_hb_time"] >= CUTOFF_MS)
    assert "esl_sim_1" not in rows
