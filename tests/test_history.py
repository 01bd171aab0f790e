"""Fleet history (issue 14, sections 1-3): the snapshot, ``_changes.csv`` and ``_battery_forecast.csv``.

Real aggregate runs (``aggregate_run``, as the DAG and the command call it) on real part files of a
synthetic fleet over many dates: labels drain, go silent and come back, are added and removed, move
between stores, and one store gets a firmware upgrade. Expected files come from
``tests/expected_history.py``, computed from the same labels without the package's history code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esl_operators.aggregate import aggregate_run
from esl_operators.engine import ServerResult, StoreResult
from esl_operators.manifest import BatchManifest, batch_manifest
from esl_operators.parts import PartWriter
from esl_operators.records import PART_COLUMNS
from esl_operators.storage import part_path
from tests.expected_history import (
    Cells,
    Label,
    changes_file,
    expected_changes,
    expected_forecast,
    forecast_file,
)
from tests.support import DAY_MS

SERVERS = ("http://127.0.0.1:18001", "esl_b")
# CSV-hostile and formula-like store codes, as in-store servers hand them out
STORES = ("S01", "S,02", 'Q"3', "上海", "=cmd")
START = date(2026, 11, 1)
LABELS_PER_SERVER = 40


def day(n: int) -> str:
    return (START + timedelta(days=n)).isoformat()


def midnight_ms(ds: str) -> int:
    return int(datetime.fromisoformat(ds).replace(tzinfo=UTC).timestamp()) * 1000


def fleet_on(n: int, *, seed: str = "") -> dict[Label, dict[str, str]]:
    """The labels published on day ``n``: part cells per (server, esl_id)."""
    ds = day(n)
    labels: dict[Label, dict[str, str]] = {}
    for server in SERVERS:
        for k in range(LABELS_PER_SERVER):
            life = random.Random(f"{seed}{server}/{k}")  # the label's constants
            first = 0 if k < 32 else life.randrange(1, 8)  # added later
            last = 99 if k % 13 else life.randrange(3, 9)  # removed some day
            rate = life.choice((0, 0, 0.5, 1, 2, 3, 9))  # points per day; a few fast drainers
            full = life.randrange(40, 101)
            today = random.Random(f"{seed}{server}/{k}/{n}")
            if not first <= n <= last or today.random() < 0.12:  # not there, or silent today
                continue
            battery = max(0, min(100, int(full - rate * n) + today.choice((-1, 0, 0, 1))))
            store = STORES[(k + (1 if k % 7 == 0 and n >= 4 else 0)) % len(STORES)]  # some move on day 4
            firmware = "6.0.3" if store == "S01" and n >= 6 else ("" if k % 11 == 0 else "5.4.0")
            esl_id = "=1+1" if k == 0 else f"{k * 7919 % 65536:04X}-{k:02d}"  # the same ids on both servers
            hb = midnight_ms(ds) - today.randrange(0, 3 * DAY_MS)
            cells = {name: "" for name in PART_COLUMNS}
            cells.update(
                esl_id=esl_id,
                store=store,
                server=server,
                create_time=str(hb - today.randrange(1, 400) * DAY_MS),
                last_hb_time=str(hb),
                battery="" if today.random() < 0.08 else str(battery),
                screen_size="2.9",
                description=today.choice(("", "Aisle 4", 'Promo "2 for 1", aisle 3', "Kühlregal\n7-2")),
                refresh_times=str(today.randrange(0, 5000)),
                led_times=str(today.randrange(0, 100)),
                firmware=firmware,
                rom="HS-ROM-2.0",
                product_id=str(today.choice((0, 17, 4660))),
                chip_family=today.choice(("", "stellarPro")),
                set_wor=str(today.randrange(0, 3)),
                temperature=today.choice(("", "21", "-4")),
                frequency=repr(today.choice((0.0, 0.5, 2.25, 10.0))),
            )
            labels[(server, esl_id)] = cells
    return labels


def write_parts(root: Any, ds: str, labels: Mapping[Label, Mapping[str, str]]) -> list[BatchManifest]:
    """One part per server (batch), as fetch tasks write them, and their batch manifests."""
    manifests = []
    for batch, server in enumerate(SERVERS):
        rows = [
            tuple(c[name] for name in PART_COLUMNS) for (s, _), c in sorted(labels.items()) if s == server
        ]
        path = part_path(root, ds, batch)
        with PartWriter(path) as writer:
            for start in range(0, len(rows), 17):
                writer.write_rows(rows[start : start + 17])
        per_store: dict[str, int] = {}
        for (s, _), c in labels.items():
            if s == server:
                per_store[c["store"]] = per_store.get(c["store"], 0) + 1
        result = ServerResult(
            server, stores=[StoreResult(k, rows=v, seen=v) for k, v in sorted(per_store.items())]
        )
        anchor = datetime.fromisoformat(ds).replace(tzinfo=UTC)
        manifests.append(
            batch_manifest(
                [result],
                batch=batch,
                part=str(path),
                anchor=anchor,
                cutoff_ms=midnight_ms(ds),
                duration_s=0.0,
            )
        )
    return manifests


def publish(root: Any, ds: str, labels: Mapping[Label, Mapping[str, str]], **options: Any) -> dict[str, Any]:
    """Aggregate the date's parts; return its run manifest."""
    options.setdefault("report", False)
    aggregate_run(write_parts(root, ds, labels), output_root=root, ds=ds, **options)
    result: dict[str, Any] = json.loads((root / ds / "_manifest.json").read_text(encoding="utf-8"))
    return result


def counts(found: Mapping[str, list[list[str]]]) -> dict[str, int]:
    return {kind: len(rows) for kind, rows in found.items()}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def window(
    published: Mapping[str, Mapping[Label, Cells]], ds: str, days: int
) -> dict[str, Mapping[Label, Cells]]:
    """The published dates at most ``days`` before ds, and ds."""
    end = date.fromisoformat(ds)
    return {d: v for d, v in published.items() if 0 <= (end - date.fromisoformat(d)).days <= days}


# Days run, with gaps (4, 7, 8 never ran): P is the latest published date, not yesterday.
RUN_DAYS = (0, 1, 2, 3, 5, 6, 9, 10, 11, 12)


def test_changes_and_forecast_over_dates_with_gaps_match_the_oracle(tmp_path: Path) -> None:
    published: dict[str, Mapping[Label, Cells]] = {}
    seen_kinds: dict[str, int] = dict.fromkeys(("new", "gone", "battery_drop", "moved", "firmware"), 0)
    forecast_rows = 0
    for n in RUN_DAYS:
        ds, labels = day(n), fleet_on(n)
        manifest = publish(tmp_path, ds, labels)
        previous = max(published) if published else None
        folder = tmp_path / ds
        if previous is None:
            assert manifest["history"] == {
                "previous_date": None,
                **dict.fromkeys(seen_kinds, 0),
            }
            assert not (folder / "_changes.csv").exists()
            assert not (folder / "_battery_forecast.csv").exists()
        else:
            found = expected_changes(published[previous], labels, drop_points=10)
            assert manifest["history"] == {"previous_date": previous, **counts(found)}
            assert (folder / "_changes.csv").read_bytes() == changes_file(found)
            rows = expected_forecast(window({**published, ds: labels}, ds, 30), ds, 10, 60)
            assert (folder / "_battery_forecast.csv").read_bytes() == forecast_file(rows)
            for kind, count in counts(found).items():
                seen_kinds[kind] += count
            forecast_rows += len(rows)
        published[ds] = labels
    assert min(seen_kinds.values()) >= 3, seen_kinds  # every kind of change really happened
    assert forecast_rows >= 20
    assert json.loads((tmp_path / day(9) / "_manifest.json").read_text())["history"]["previous_date"] == day(
        6
    )


def test_the_settings_change_the_history(tmp_path: Path) -> None:
    """battery_drop_points, battery_alert_pct, forecast_horizon_days; history_days bounds the window."""
    published: dict[str, Mapping[Label, Cells]] = {}
    options = {
        "battery_drop_points": 3,
        "battery_alert_pct": 35,
        "forecast_horizon_days": 5,
        "history_days": 4,
    }
    for n in (0, 1, 2, 3, 5, 6):
        ds, labels = day(n), fleet_on(n)
        manifest = publish(tmp_path, ds, labels, **options)
        if published:
            previous = max(published)
            found = expected_changes(published[previous], labels, drop_points=3)
            assert manifest["history"] == {"previous_date": previous, **counts(found)}
            assert (tmp_path / ds / "_changes.csv").read_bytes() == changes_file(found)
            rows = expected_forecast(window({**published, ds: labels}, ds, 4), ds, 35, 5)
            assert (tmp_path / ds / "_battery_forecast.csv").read_bytes() == forecast_file(rows)
        published[ds] = labels
    # 6 days after the last published date, with a 4-day window: no previous date
    manifest = publish(tmp_path, day(12), fleet_on(12), **options)
    assert manifest["history"]["previous_date"] is None
    assert not (tmp_path / day(12) / "_changes.csv").exists()


def test_a_date_without_a_previous_one_removes_the_history_files_of_its_earlier_run(tmp_path: Path) -> None:
    publish(tmp_path, day(0), fleet_on(0))
    publish(tmp_path, day(1), fleet_on(1))
    assert (tmp_path / day(1) / "_changes.csv").exists()
    (tmp_path / day(0) / "_SUCCESS").unlink()  # day 0 is no longer published

    manifest = publish(tmp_path, day(1), fleet_on(1))

    assert manifest["history"]["previous_date"] is None
    assert not (tmp_path / day(1) / "_changes.csv").exists()
    assert not (tmp_path / day(1) / "_battery_forecast.csv").exists()
    assert manifest["removed_stale_files"] == ["_battery_forecast.csv", "_changes.csv"]
    assert (tmp_path / day(1) / "_snapshot.parquet").exists()


def test_rerunning_a_date_replaces_its_files_and_leaves_other_dates_alone(tmp_path: Path) -> None:
    for n in (0, 1, 2):
        publish(tmp_path, day(n), fleet_on(n))
    before = {n: files(tmp_path / day(n)) for n in (0, 1, 2)}
    changed = fleet_on(1, seed="rerun ")  # the servers said something else this time

    manifest = publish(tmp_path, day(1), changed)

    assert files(tmp_path / day(0)) == before[0]
    assert files(tmp_path / day(2)) == before[2]  # its changes still compare with the earlier day 1
    found = expected_changes(fleet_on(0), changed, drop_points=10)
    assert manifest["history"] == {"previous_date": day(0), **counts(found)}
    after = files(tmp_path / day(1))
    assert after["_changes.csv"] == changes_file(found) != before[1]["_changes.csv"]
    assert after["_snapshot.parquet"] != before[1]["_snapshot.parquet"]
    assert snapshot_labels(tmp_path / day(1)) == {key: typed_oracle(c) for key, c in changed.items()}


# --- the snapshot ---------------------------------------------------------------------------------


def _int(text: str) -> int | None:
    return int(text) if text else None


def typed_oracle(cells: Mapping[str, str]) -> dict[str, Any]:
    """What the snapshot must hold for a label (whole-number cells only, as the synthetic fleet has)."""

    def moment(ms: str) -> datetime | None:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC) if ms else None

    text = {name: cells[name] or None for name in PART_COLUMNS}
    return {
        "esl_id": text["esl_id"],
        "store": text["store"],
        "server": text["server"],
        "created_at": moment(cells["create_time"]),
        "last_heartbeat_at": moment(cells["last_hb_time"]),
        "battery": _int(cells["battery"]),
        "screen_size": text["screen_size"],
        "description": text["description"],
        "refresh_times": _int(cells["refresh_times"]),
        "led_times": _int(cells["led_times"]),
        "firmware": text["firmware"],
        "rom": text["rom"],
        "extesl_id": text["extesl_id"],
        "product_id": _int(cells["product_id"]),
        "chip_family": text["chip_family"],
        "set_wor": _int(cells["set_wor"]),
        "temperature": _int(cells["temperature"]),
        "frequency": float(cells["frequency"]) if cells["frequency"] else None,
    }


def snapshot_labels(folder: Path) -> dict[Label, dict[str, Any]]:
    rows = pq.read_table(folder / "_snapshot.parquet").to_pylist()
    found = {(r["server"], r["esl_id"]): r for r in rows}
    assert len(found) == len(rows)
    return found


SNAPSHOT_TYPES = {
    "esl_id": pa.string(),
    "store": pa.string(),
    "server": pa.string(),
    "created_at": pa.timestamp("ms", tz="UTC"),
    "last_heartbeat_at": pa.timestamp("ms", tz="UTC"),
    "battery": pa.int64(),
    "screen_size": pa.string(),
    "description": pa.string(),
    "refresh_times": pa.int64(),
    "led_times": pa.int64(),
    "firmware": pa.string(),
    "rom": pa.string(),
    "extesl_id": pa.string(),
    "product_id": pa.int64(),
    "chip_family": pa.string(),
    "set_wor": pa.int64(),
    "temperature": pa.int64(),
    "frequency": pa.float64(),
}


def test_snapshot_has_the_contract_columns_and_one_typed_row_per_published_label(tmp_path: Path) -> None:
    labels = fleet_on(3)
    publish(tmp_path, day(3), labels)
    schema = pq.read_schema(tmp_path / day(3) / "_snapshot.parquet")
    assert [(f.name, f.type) for f in schema] == list(SNAPSHOT_TYPES.items())
    assert snapshot_labels(tmp_path / day(3)) == {key: typed_oracle(c) for key, c in labels.items()}


def test_values_that_do_not_fit_their_column_are_null_in_the_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = fleet_on(0)
    odd = dict(labels)
    keys = sorted(odd)
    odd[keys[0]] = {**odd[keys[0]], "temperature": "-5.0", "set_wor": "on"}
    odd[keys[1]] = {**odd[keys[1]], "temperature": "21.5", "product_id": str(1 << 64)}
    publish(tmp_path, day(0), odd)
    found = snapshot_labels(tmp_path / day(0))
    assert (found[keys[0]]["temperature"], found[keys[0]]["set_wor"]) == (-5, None)
    assert (found[keys[1]]["temperature"], found[keys[1]]["product_id"]) == (None, None)
    assert (
        "values that do not fit their column are null in the snapshot: product_id 1, set_wor 1, temperature 1"
        in (caplog.text)
    )


def test_both_header_styles_give_the_same_snapshot(tmp_path: Path) -> None:
    for style, zone in (("standard", "UTC"), ("legacy", "Asia/Shanghai")):
        for n in (0, 1, 2, 3):
            publish(tmp_path / style, day(n), fleet_on(n), header_style=style, timezone=zone)
    for n in (0, 1, 2, 3):
        standard = (tmp_path / "standard" / day(n) / "_snapshot.parquet").read_bytes()
        assert (tmp_path / "legacy" / day(n) / "_snapshot.parquet").read_bytes() == standard
    assert (tmp_path / "standard" / day(3) / "esl_id_part_1.csv").read_bytes() != (
        tmp_path / "legacy" / day(3) / "esl_id_part_1.csv"
    ).read_bytes()


def test_spreadsheet_safe_runs_guard_the_server_texts_of_the_history_files(tmp_path: Path) -> None:
    """The legacy layout guards formulas by default: so do its history files (the snapshot never)."""
    published: dict[str, Mapping[Label, Cells]] = {}
    for n in (0, 1, 2, 3, 5):
        publish(tmp_path, day(n), fleet_on(n), header_style="legacy")
        published[day(n)] = fleet_on(n)
    found = expected_changes(published[day(3)], published[day(5)], drop_points=10)
    guarded = changes_file(found, guarded=True)
    assert (tmp_path / day(5) / "_changes.csv").read_bytes() == guarded != changes_file(found)
    rows = expected_forecast(published, day(5), 10, 60)
    assert (tmp_path / day(5) / "_battery_forecast.csv").read_bytes() == forecast_file(rows, guarded=True)
    assert "'=1+1" in guarded.decode() and "'=cmd" in guarded.decode()


def test_partitions_sorted_in_runs_give_the_same_snapshot_rows_and_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_spill import force_runs

    for n in (0, 1, 2, 3):
        publish(tmp_path / "memory", day(n), fleet_on(n))
    with monkeypatch.context() as patch:
        budget = force_runs(patch, run_bytes=2_000)
        for n in (0, 1, 2, 3):
            publish(tmp_path / "runs", day(n), fleet_on(n), aggregate_memory_mb=budget)
    for n in (0, 1, 2, 3):
        memory, runs = tmp_path / "memory" / day(n), tmp_path / "runs" / day(n)
        assert snapshot_labels(runs) == snapshot_labels(memory)
        assert pq.ParquetFile(runs / "_snapshot.parquet").num_row_groups > 4  # really written in pieces
        for name in ("_changes.csv", "_battery_forecast.csv", "esl_id_part_1.csv"):
            if n:
                assert (runs / name).read_bytes() == (memory / name).read_bytes()


def test_object_storage_roots_give_the_same_history(tmp_path: Path) -> None:
    """A root that is not a local path (universal-pathlib on fsspec's memory file system, as
    ``ObjectStoragePath`` is): the snapshot is written through the store's file object, and the
    snapshots are read back from local copies."""
    from upath import UPath

    remote = UPath("memory://esl/history-test")
    for n in (0, 1, 2, 3, 5):
        publish(tmp_path, day(n), fleet_on(n))
        publish(remote, day(n), fleet_on(n))
    for n in (0, 1, 2, 3, 5):
        for name in ("_snapshot.parquet", "_changes.csv", "_battery_forecast.csv", "_SUCCESS"):
            if n or name in ("_snapshot.parquet", "_SUCCESS"):
                assert (remote / day(n) / name).read_bytes() == (tmp_path / day(n) / name).read_bytes(), name


@pytest.fixture(autouse=True)
def _clean_memory_filesystem() -> Iterator[None]:
    yield
    from fsspec.implementations.memory import MemoryFileSystem

    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]


# --- the standalone command and the DAG, against the simulator ---------------------------------------


def published_by_simulator(fleet: Any, servers: Mapping[int, str], ds: str) -> dict[Label, Cells]:
    """The labels a run for ``ds`` publishes (the 7-day window), from the simulator's dataset."""
    from tests.expected import expected_partition

    rows = expected_partition(fleet, dict(servers), midnight_ms(ds) - 7 * DAY_MS)
    return {(r[2], r[0]): {"store": r[1], "battery": r[5], "firmware": r[10]} for r in rows}


def test_the_command_publishes_the_history_with_its_options(
    simulator: Any, small_fleet: Any, tmp_path: Path
) -> None:
    from esl_operators import cli

    servers = [arg for url in simulator.urls for arg in ("--server", url)]
    options = ["--servers-per-batch", "3", "--history-days", "5", "--battery-alert-pct", "50"]
    published: dict[str, Mapping[Label, Cells]] = {}
    for ds in ("2024-05-03", "2024-05-06", "2024-05-10"):  # 05-10 compares with 05-06, 4 days before
        assert cli.main(["fetch", *servers, "--date", ds, "--out", str(tmp_path), *options]) == 0
        labels = published_by_simulator(small_fleet, dict(enumerate(simulator.urls)), ds)
        manifest = json.loads((tmp_path / ds / "_manifest.json").read_text(encoding="utf-8"))
        assert manifest["params"]["history_days"] == 5
        assert len(snapshot_labels(tmp_path / ds)) == len(labels) == manifest["rows"]
        if published:
            previous = max(published)
            found = expected_changes(published[previous], labels, drop_points=10)
            assert manifest["history"] == {"previous_date": previous, **counts(found)}
            assert found["gone"] and not found["new"]  # the heartbeat window moved on
            assert (tmp_path / ds / "_changes.csv").read_bytes() == changes_file(found)
            rows = expected_forecast(window({**published, ds: labels}, ds, 5), ds, 50, 60)
            assert (tmp_path / ds / "_battery_forecast.csv").read_bytes() == forecast_file(rows)
        else:
            assert manifest["history"]["previous_date"] is None
        published[ds] = labels


def test_the_history_settings_are_checked_like_every_setting(tmp_path: Path) -> None:
    from esl_operators.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"^history_days must be between 1 and 366, got 0$"):
        aggregate_run([], output_root=tmp_path, ds=day(0), history_days=0)
    with pytest.raises(ConfigError, match=r"^battery_alert_pct must be between 0 and 100, got 101$"):
        aggregate_run([], output_root=tmp_path, ds=day(0), battery_alert_pct=101)


def test_a_snapshot_of_another_writer_serves_as_history(tmp_path: Path) -> None:
    """P's snapshot rewritten by plain pyarrow, all servers mixed in one row group, shuffled."""
    publish(tmp_path, day(0), fleet_on(0))
    path = tmp_path / day(0) / "_snapshot.parquet"
    table = pq.read_table(path)
    order = list(range(table.num_rows))
    random.Random(3).shuffle(order)
    pq.write_table(table.take(pa.array(order)), path)
    assert pq.ParquetFile(path).num_row_groups == 1

    manifest = publish(tmp_path, day(1), fleet_on(1))

    found = expected_changes(fleet_on(0), fleet_on(1), drop_points=10)
    assert manifest["history"] == {"previous_date": day(0), **counts(found)}
    assert (tmp_path / day(1) / "_changes.csv").read_bytes() == changes_file(found)


def test_an_unusable_earlier_snapshot_fails_the_run_naming_it(tmp_path: Path) -> None:
    from esl_operators.snapshot import HistoryError

    publish(tmp_path, day(0), fleet_on(0))
    path = tmp_path / day(0) / "_snapshot.parquet"
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(5, 1)]), path)
    twice = table["esl_id"][5].as_py()
    server = table["server"][5].as_py()
    with pytest.raises(
        HistoryError, match=rf"^{day(0)}/_snapshot.parquet: server '{server}' has label '{twice}'"
    ):
        publish(tmp_path, day(1), fleet_on(1))
    pq.write_table(table.drop_columns(["firmware"]), path)
    with pytest.raises(
        HistoryError, match=rf"^{day(0)}/_snapshot.parquet: snapshot lacks the column firmware"
    ):
        publish(tmp_path, day(1), fleet_on(1))
    assert not (tmp_path / day(1) / "_SUCCESS").exists()  # nothing published
