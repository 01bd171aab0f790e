"""The aggregate step in bounded memory: a partition sorted in spilled runs and merged is byte for byte
the partition sorted in memory, with the same counts, and leaves no spill file behind.

Runs are forced small by raising ``spill.RUN_SHARE`` (the share of the budget a run may use), so a
partition of a few thousand rows goes through a dozen runs; everything else is the real code on real
files: parts written by ``PartWriter``, ``aggregate_run`` as the DAG and the command call it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from esl_operators import merge, spill
from esl_operators.aggregate import aggregate_run
from esl_operators.cleaning import drop_duplicates
from esl_operators.csvformat import ORDER, order_keys, sort_order
from esl_operators.engine import ServerResult, StoreResult
from esl_operators.exceptions import ConfigError
from esl_operators.manifest import BatchManifest, batch_manifest
from esl_operators.parts import PART_SCHEMA, PartWriter
from esl_operators.records import PART_COLUMNS
from esl_operators.simulator import Fleet, SimulatorThread
from esl_operators.storage import part_path
from tests.expected import expected_partition
from tests.support import ANCHOR, ANCHOR_MS, CUTOFF_MS, DAY_MS, DS, csv_rows

SERVERS = ("http://127.0.0.1:18001", "http://127.0.0.1:18002", "esl_b")
STORES = ("S01", "S02", "S03", "alpha", "上海")
FAILED_STORE = (SERVERS[0], "S02")  # a store that failed midway: its rows must not be published
FAILED_SERVER = SERVERS[2]  # a server that failed: none of its rows are published
# CSV-hostile and formula-like text, as in-store servers hand it out (the legacy layout guards formulas)
DESCRIPTIONS = (
    "",
    "Aisle 4",
    'Promo "2 for 1", aisle 3',
    "Kühlregal\n7-2",
    "冷藏 5 号",
    "a,b",
    "=1+1",
    "@cmd",
)
# few distinct frequencies: long ties, ordered by esl_id, then server, then store
FREQUENCIES = (0.0, 0.5, 1.0, 2.25, 3.3333333333333335, 10.0, 123.456)
RUN_BYTES = 40_000  # forced run size: a few hundred rows


def _row(rng: random.Random, server: str, store: str, esl_id: str, hb: int) -> list[str]:
    cells = {name: "" for name in PART_COLUMNS}
    cells.update(
        esl_id=esl_id,
        store=store,
        server=server,
        create_time=str(hb - rng.randrange(1, 400) * DAY_MS) if rng.random() > 0.05 else "",
        last_hb_time=str(hb),
        battery=str(rng.randrange(0, 101)) if rng.random() > 0.1 else "",
        screen_size=rng.choice(("2.13", "2.9", "4.2")),
        description=rng.choice(DESCRIPTIONS),
        refresh_times=str(rng.randrange(0, 5000)),
        led_times=str(rng.randrange(0, 100)),
        firmware=rng.choice(("5.4.0", "6.0.3")),
        rom="HS-ROM-2.0",
        product_id=str(rng.choice((0, 17, 4660))),
        chip_family=rng.choice(("", "stellarPro")),
        set_wor=str(rng.randrange(0, 3)),
        temperature=rng.choice(("", "21", "-4")),
        frequency=repr(rng.choice(FREQUENCIES)),
    )
    return [cells[name] for name in PART_COLUMNS]


def make_rows(labels: int, seed: int = 11) -> list[list[str]]:
    """Part rows in fetch order, with copies of labels spread through the part: in other stores with
    an older, newer or equal heartbeat, and exact-key copies (same store and heartbeat) whose other
    cells differ, where the first in the part must win."""
    rng = random.Random(seed)
    rows = []
    for n in range(labels):
        server = SERVERS[n % len(SERVERS)]
        esl_id = f"{rng.randrange(16**4):04X}-{n:05d}"
        hb = ANCHOR_MS - rng.randrange(0, 7 * DAY_MS)
        rows.append(_row(rng, server, rng.choice(STORES), esl_id, hb))
    originals = list(rows)
    for original in rng.sample(originals, labels // 8):
        cells = dict(zip(PART_COLUMNS, original, strict=True))
        hb = int(cells["last_hb_time"]) + rng.choice((-3_600_000, 3_600_000, 0))
        store = rng.choice(STORES) if rng.random() < 0.7 else cells["store"]
        rows.insert(rng.randrange(len(rows) + 1), _row(rng, cells["server"], store, cells["esl_id"], hb))
    # one id on two servers is two labels, not a copy
    rows.append(
        _row(rng, SERVERS[1], "S01", dict(zip(PART_COLUMNS, rows[0], strict=True))["esl_id"], ANCHOR_MS)
    )
    return rows


def write_part(root: Path, rows: list[list[str]], batch: int = 0, chunk: int = 97) -> BatchManifest:
    """The part file and its batch manifest, as a fetch task writes them (small record batches)."""
    path = part_path(root, DS, batch)
    with PartWriter(path) as writer:
        for start in range(0, len(rows), chunk):
            writer.write_rows([tuple(r) for r in rows[start : start + chunk]])
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        cells = dict(zip(PART_COLUMNS, r, strict=True))
        per_server = counts.setdefault(cells["server"], {})
        per_server[cells["store"]] = per_server.get(cells["store"], 0) + 1
    results = []
    for server in sorted(counts):
        stores = [StoreResult(s, rows=n, seen=n) for s, n in sorted(counts[server].items())]
        for store in stores:
            if (server, store.store) == FAILED_STORE:
                store.error = f"{server}: store 'S02' page 3: HTTP 500 (gave up after 3 attempts)"
        result = ServerResult(server, stores=stores)
        if server == FAILED_SERVER:
            result.error = f"{server}: connection refused"
        results.append(result)
    return batch_manifest(
        results, batch=batch, part=str(path), anchor=ANCHOR, cutoff_ms=CUTOFF_MS, duration_s=0.0
    )


def force_runs(monkeypatch: pytest.MonkeyPatch, run_bytes: int = RUN_BYTES) -> int:
    """Make runs ``run_bytes`` large at the smallest budget; returns that budget (MB)."""
    megabytes = 16
    monkeypatch.setattr(spill, "RUN_SHARE", megabytes * spill.MB // run_bytes)
    return megabytes


def expected_labels(rows: list[list[str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """Independent oracle: (server, esl_id) -> (store, last_hb_time) of the row a run publishes."""
    best: dict[tuple[str, str], tuple[int, str, int]] = {}
    for position, r in enumerate(rows):
        c = dict(zip(PART_COLUMNS, r, strict=True))
        if c["server"] == FAILED_SERVER or (c["server"], c["store"]) == FAILED_STORE:
            continue
        rank = (-int(c["last_hb_time"]), c["store"], position)
        key = (c["server"], c["esl_id"])
        if key not in best or rank < best[key]:
            best[key] = rank
    return {key: (store, str(-hb)) for key, (hb, store, _) in best.items()}


def run_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[list[str]], **options: Any
) -> tuple[Path, Path]:
    """The same part aggregated in memory and in forced runs; returns both date folders."""
    folders = []
    for mode in ("memory", "runs"):
        root = tmp_path / mode
        manifest = write_part(root, rows)
        with monkeypatch.context() as patch:
            budget = force_runs(patch) if mode == "runs" else 256
            aggregate_run([manifest], output_root=root, ds=DS, aggregate_memory_mb=budget, **options)
        folders.append(root / DS)
    return folders[0], folders[1]


def runs_logged(caplog: pytest.LogCaptureFixture) -> list[int]:
    found = [re.search(r"\(sorted (\d+) runs merged\)", r.getMessage()) for r in caplog.records]
    return [int(m.group(1)) for m in found if m]


def without_durations(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "durations_s"}


@pytest.mark.parametrize(
    ("header_style", "timezone"),
    [("standard", "UTC"), ("legacy", "Asia/Shanghai"), ("legacy", "America/New_York")],
)
def test_partition_sorted_in_runs_is_byte_identical_to_memory(
    header_style: str,
    timezone: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = make_rows(3000)
    caplog.set_level(logging.INFO, logger="esl_operators.aggregate")
    memory, runs = run_both(
        tmp_path, monkeypatch, rows, header_style=header_style, timezone=timezone, report=False
    )

    assert runs_logged(caplog) and runs_logged(caplog)[0] >= 8  # really merged from many runs
    published = (memory / "esl_id_part_1.csv").read_bytes()
    assert (runs / "esl_id_part_1.csv").read_bytes() == published
    in_memory = json.loads((memory / "_manifest.json").read_text(encoding="utf-8"))
    in_runs = json.loads((runs / "_manifest.json").read_text(encoding="utf-8"))
    assert without_durations(in_runs) == without_durations(in_memory)

    oracle = expected_labels(rows)
    failed = sum(
        1
        for r in rows
        if r[PART_COLUMNS.index("server")] == FAILED_SERVER
        or (r[PART_COLUMNS.index("server")], r[PART_COLUMNS.index("store")]) == FAILED_STORE
    )
    [partition] = in_runs["partitions"]
    assert partition["rows"] == len(oracle) == in_runs["rows"]
    assert partition["dropped_failed_store_rows"] == failed > 100
    assert partition["dropped_duplicate_rows"] == len(rows) - failed - len(oracle) > 100
    by_store: dict[str, dict[str, int]] = {}
    for (server, _), (store, _) in oracle.items():
        by_store.setdefault(server, {})
        by_store[server][store] = by_store[server].get(store, 0) + 1
    assert {s: c for s, c in in_runs["rows_by_store"].items() if c} == by_store


@pytest.mark.parametrize("fan_in", [2, 1000])
def test_runs_publish_the_oracles_rows_in_the_contract_order(
    fan_in: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merged in one pass, and in a deep tree of passes (two runs at a time)."""
    monkeypatch.setattr(merge, "FAN_IN", fan_in)
    rows = make_rows(2000, seed=5)
    root = tmp_path / "runs"
    manifest = write_part(root, rows)
    aggregate_run([manifest], output_root=root, ds=DS, aggregate_memory_mb=force_runs(monkeypatch))

    published = csv_rows(root / DS / "esl_id_part_1.csv")
    header, body = published[0], published[1:]
    cells = [dict(zip(header, r, strict=True)) for r in body]
    oracle = expected_labels(rows)
    assert {(c["server"], c["esl_id"]): c["store"] for c in cells} == {k: v[0] for k, v in oracle.items()}
    order = [(float(c["frequency"]), c["esl_id"], c["server"], c["store"]) for c in cells]
    assert order == sorted(order) and len(order) == len(oracle)


def test_report_statistics_are_the_same_from_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    memory, runs = run_both(tmp_path, monkeypatch, make_rows(1500, seed=3), report=True)
    strip = re.compile(rb"[0-9.]+ s\b")  # the page states the run's durations
    assert strip.sub(b"", (runs / "report.html").read_bytes()) == strip.sub(
        b"", (memory / "report.html").read_bytes()
    )


@pytest.mark.parametrize("runs", [True, False])
def test_no_spill_file_is_left_after_success(
    runs: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nor one a killed attempt left, whether this run spills or sorts in memory."""
    root = tmp_path / "out"
    manifest = write_part(root, make_rows(1000))
    stale = root / DS / "_parts" / ".spill-0badc0de"  # what a killed attempt leaves
    stale.mkdir()
    (stale / "bucket-0.arrow").write_bytes(b"half a bucket")
    budget = force_runs(monkeypatch) if runs else 256

    aggregate_run([manifest], output_root=root, ds=DS, aggregate_memory_mb=budget)

    assert sorted(p.name for p in (root / DS / "_parts").iterdir()) == ["batch-0.arrow"]
    assert not [p for p in (root / DS).rglob("*") if p.name.endswith(".tmp")]
    assert (root / DS / "_SUCCESS").exists()


def test_a_failure_midway_through_the_merge_removes_spill_files_and_keeps_the_last_publication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "out"
    manifest = write_part(root, make_rows(2000))
    aggregate_run([manifest], output_root=root, ds=DS)  # an earlier, complete publication
    published = (root / DS / "esl_id_part_1.csv").read_bytes()
    merged = merge.merge_runs
    seen: list[int] = []

    def failing_merge(runs: list[Path], *args: Any) -> Any:
        folder = runs[0].parent
        for piece in merged(runs, *args):
            seen.append(len(piece))
            if len(seen) == 3:
                assert sorted(folder.iterdir())  # spill files are there, being merged
                raise OSError(28, "No space left on device")
            yield piece

    monkeypatch.setattr("esl_operators.aggregate.merge_runs", failing_merge)
    with pytest.raises(OSError, match="No space left on device"):
        aggregate_run([manifest], output_root=root, ds=DS, aggregate_memory_mb=force_runs(monkeypatch))

    assert len(seen) == 3
    assert sorted(p.name for p in (root / DS / "_parts").iterdir()) == ["batch-0.arrow"]
    assert not [p for p in (root / DS).rglob("*") if p.name.endswith(".tmp")]
    assert (root / DS / "esl_id_part_1.csv").read_bytes() == published
    assert (root / DS / "_SUCCESS").exists()  # the earlier publication stays whole (issue 12)


@pytest.mark.parametrize(
    ("fan_in", "where", "message"),
    [
        (1000, "stream_lines_atomic", "OSError: [Errno 27] File too large"),  # the CSV
        (4, "merge_runs", "OSError: [Errno 27] Error writing bytes to file"),  # a merged run
    ],
)
def test_a_write_error_in_the_merge_cleans_up_in_a_real_process(
    fan_in: int, where: str, message: str, tmp_path: Path
) -> None:
    """A file-size limit (RLIMIT_FSIZE) above every bucket's and run's size but below the CSV's
    (and, merging 4 runs at a time, below a merged run's): the kernel refuses the write midway
    (EFBIG) while runs are being merged."""
    root = tmp_path / "out"
    manifest = write_part(root, make_rows(3000))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        from pathlib import Path
        from esl_operators import merge, spill
        from esl_operators.aggregate import aggregate_run
        spill.RUN_SHARE = 16 * spill.MB // {RUN_BYTES}
        merge.FAN_IN = {fan_in}
        manifest = json.loads(Path({str(tmp_path / "manifest.json")!r}).read_text())
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, resource.RLIM_INFINITY))
        aggregate_run([manifest], output_root=Path({str(root)!r}), ds={DS!r}, aggregate_memory_mb=16)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stderr[-2000:]
    assert message in done.stderr
    assert f"in {where}" in done.stderr
    assert sorted(p.name for p in (root / DS / "_parts").iterdir()) == ["batch-0.arrow"]
    assert sorted(p.name for p in (root / DS).iterdir()) == ["_parts"]  # nothing half-written


@pytest.mark.parametrize("runs", [False, True])
def test_empty_partitions(runs: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No rows at all, and (through runs) rows that all belong to failed stores: a header only."""
    budget = force_runs(monkeypatch) if runs else 256
    root = tmp_path / "out"
    rows = [r for r in make_rows(1500) if r[PART_COLUMNS.index("server")] == FAILED_SERVER]
    empty = write_part(root, [], batch=0)
    failed = write_part(root, rows, batch=1)
    aggregate_run([empty, failed], output_root=root, ds=DS, aggregate_memory_mb=budget, report=False)

    for name in ("esl_id_part_1.csv", "esl_id_part_2.csv"):
        assert (root / DS / name).read_bytes().count(b"\n") == 1  # the header line
    run = json.loads((root / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert [(p["rows"], p["dropped_failed_store_rows"]) for p in run["partitions"]] == [
        (0, 0),
        (0, len(rows)),
    ]
    assert sorted(p.name for p in (root / DS / "_parts").iterdir()) == ["batch-0.arrow", "batch-1.arrow"]


def test_part_missing_a_row_is_refused_before_any_run_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esl_operators.aggregate import AggregateError

    root = tmp_path / "out"
    rows = make_rows(1000)
    manifest = write_part(root, rows)
    write_part(root, rows[:-1])  # the same part, one row short

    with pytest.raises(
        AggregateError, match=r"^batch 0: part file has 1125 rows, its fetch task reported 1126$"
    ):
        aggregate_run([manifest], output_root=root, ds=DS, aggregate_memory_mb=force_runs(monkeypatch))
    assert sorted(p.name for p in (root / DS / "_parts").iterdir()) == ["batch-0.arrow"]
    assert not (root / DS / "esl_id_part_1.csv").exists()


def test_a_label_repeated_past_the_bucket_limit_is_reduced_as_it_is_read(tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = [_row(rng, SERVERS[0], rng.choice(STORES), "SAME", ANCHOR_MS - rng.randrange(0, 9) * 1000)
            for _ in range(3000)]  # fmt: skip
    rows += [_row(rng, SERVERS[0], "S01", f"OTHER-{n}", ANCHOR_MS) for n in range(50)]
    table = pa.Table.from_pylist([dict(zip(PART_COLUMNS, r, strict=True)) for r in rows], schema=PART_SCHEMA)
    path = tmp_path / "bucket.arrow"
    with pa.OSFile(str(path), "wb") as handle, pa.ipc.new_stream(handle, PART_SCHEMA) as writer:
        writer.write_table(table, max_chunksize=100)

    unique, dropped = spill.read_bucket(path, limit_bytes=20_000)  # a few batches at a time

    expected = drop_duplicates(table)
    assert (unique.num_rows, dropped) == (51, 2999)
    assert sorted(unique.to_pylist(), key=str) == sorted(expected.to_pylist(), key=str)


def test_the_merges_row_keys_order_rows_exactly_as_sort_order() -> None:
    """The merge compares run rows in Python (``row_key``) and sorts gathered rows with Arrow: both
    must be the published order, edge cases included (-0.0, NaN, infinities, NUL, non-ASCII, nulls)."""
    rng = random.Random(7)
    numbers = ["0.0", "-0.0", "1.5", "-2", "nan", "-nan", "inf", "-inf", "1e-300", "3", "2.5", None]
    texts = ["", "a", "a\x00", "a\x00b", "ab", "b", "上海", "Z", "é", "\x00", "a\x01", "\U0001f600", None]
    columns = {name: pa.array([""] * 4000, pa.string()) for name in PART_COLUMNS}
    columns["frequency"] = pa.array([rng.choice(numbers) for _ in range(4000)], pa.string())
    for name in ("esl_id", "server", "store"):
        columns[name] = pa.array([rng.choice(texts) for _ in range(4000)], pa.string())
    table = pa.table(columns)
    keys = order_keys(table)
    assert keys.schema.names == [name for name, _ in ORDER] == merge.RUN_SCHEMA.names[:4]

    by_arrow = [merge.row_key(*row.values()) for row in keys.take(sort_order(table)).to_pylist()]
    by_python = sorted(merge.row_key(*row.values()) for row in keys.to_pylist())

    assert by_arrow == by_python
    assert len(set(by_python)) < 4000  # ties exist: equal keys compare equal


def test_buckets_depend_on_the_esl_id_alone_and_spread_evenly() -> None:
    ids = pa.array([f"{n:08X}" for n in range(20_000)], pa.string())
    table = pa.table({"esl_id": ids, "server": pa.array(["x", "y"] * 10_000)})
    buckets = spill.bucket_of(table, 7)
    again = spill.bucket_of(pa.table({"esl_id": ids.slice(5, 100), "server": pa.array(["z"] * 100)}), 7)
    assert np.array_equal(again, buckets[5:105])
    sizes = np.bincount(buckets, minlength=7)
    assert sizes.min() > 0.9 * 20_000 / 7 and sizes.max() < 1.1 * 20_000 / 7


def test_budget_sizes() -> None:
    budget = spill.Budget.from_mb(256)
    assert budget.run_bytes == 256 * spill.MB // spill.RUN_SHARE
    assert budget.buckets(4_000_000, 210) == math.ceil(4_000_000 * 210 * 1.1 / budget.run_bytes)
    assert budget.buckets(10, 210) == 2  # spilled means at least two runs
    low, high = merge.MERGE_BATCH_ROWS
    assert budget.merge_rows(2, 200) == high and budget.merge_rows(10_000, 200) == low


def test_the_budget_is_checked_like_every_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^aggregate_memory_mb must be between 16 and 65536, got 8$"):
        aggregate_run([], output_root=tmp_path, ds=DS, aggregate_memory_mb=8)


def test_object_storage_roots_spill_to_a_local_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root that is not a local path (a universal-pathlib path, as Airflow's ``ObjectStoragePath``
    is; here on fsspec's memory file system; ``test_s3.py`` runs the DAG on S3): spill files go to a
    local temporary folder, the CSV is streamed to the store; both cleaned up."""
    from upath import UPath

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temporary))
    rows = make_rows(1500)
    local = tmp_path / "local"
    aggregate_run([write_part(local, rows)], output_root=local, ds=DS)
    remote = UPath("memory://esl/spill-test")
    manifest = write_part(remote, rows)  # type: ignore[arg-type]

    aggregate_run([manifest], output_root=remote, ds=DS, aggregate_memory_mb=force_runs(monkeypatch))

    assert (remote / DS / "esl_id_part_1.csv").read_bytes() == (local / DS / "esl_id_part_1.csv").read_bytes()
    assert list(temporary.iterdir()) == []
    assert sorted(p.name for p in (remote / DS / "_parts").iterdir()) == ["batch-0.arrow"]
    shutil.rmtree(temporary)


def test_the_command_sorts_in_runs_with_its_budget_option(
    simulator: SimulatorThread,
    small_fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``esl-export fetch --aggregate-memory-mb`` reaches the aggregate step; runs give the oracle's rows."""
    from esl_operators import cli

    force_runs(monkeypatch, run_bytes=8_000)
    caplog.set_level(logging.INFO, logger="esl_operators.aggregate")
    servers = [arg for url in simulator.urls for arg in ("--server", url)]
    argv = ["fetch", *servers, "--date", DS, "--out", str(tmp_path), "--servers-per-batch", "3"]
    assert cli.main([*argv, "--aggregate-memory-mb", "16"]) == 0

    assert runs_logged(caplog) and runs_logged(caplog)[0] >= 4
    published = csv_rows(tmp_path / DS / "esl_id_part_1.csv")
    every = dict(enumerate(simulator.urls))
    assert published[1:] == expected_partition(small_fleet, every, CUTOFF_MS)
    run = json.loads((tmp_path / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert run["params"]["aggregate_memory_mb"] == 16
