"""Aggregation benchmark: N synthetic part rows into a sorted partition, ours vs naive pandas.

    python -m benchmarks.aggregation generate --root DIR --rows N   # part file + batch manifest
    python -m benchmarks.aggregation grow --root DIR --source DIR --times K  # K copies of a part
    python -m benchmarks.aggregation ours --root DIR [--memory-mb MB]   # esl_operators.aggregate_run
    python -m benchmarks.aggregation pandas --root DIR              # read_csv / sort_values / to_csv

Each step runs in its own process (the harness measures wall time and peak RSS per process). The
part file is written with our ``PartWriter`` in the ``PART_COLUMNS`` layout, and the manifest is
built with ``batch_manifest`` as a fetch task builds it, so ``aggregate_run`` accepts it unchanged.
pandas reads the very same rows from a plain CSV (``part.csv``) in the same column layout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DS = "2024-05-10"
ANCHOR = datetime(2024, 5, 10, tzinfo=UTC)
DAY_MS = 86_400_000
ANCHOR_MS = int(ANCHOR.timestamp()) * 1000
SERVERS = 4
STORES_PER_SERVER = 50
CHUNK = 50_000
MANIFEST = "batch-manifest.json"
NAIVE_INPUT = "part.csv"  # the same rows as the part file, as CSV: what a naive pandas job reads

_SCREENS = np.array(["1.54", "2.13", "2.9", "4.2", "7.5"])
_FIRMWARES = np.array(["5.3.12", "5.4.0", "5.4.1", "6.0.3", "4.9.27", "6.1.0"])
_ROMS = np.array(["HS-ROM-1.7", "HS-ROM-1.8", "HS-ROM-2.0", "HS-ROM-2.0b"])
# CSV-hostile descriptions (commas, quotes, non-ASCII), as on real servers.
_DESCRIPTIONS = np.array(["", "Aisle 4 bay 12", 'Promo "2 for 1", aisle 3', "Kühlregal 7-2", "冷藏 5 号"])


def _columns(rows: int, seed: int) -> dict[str, list[str]]:
    """Realistic part-row cells, vectorised: a million rows take seconds, not minutes."""
    from esl_operators.records import chip_family

    rng = np.random.default_rng(seed)
    server_ix = rng.integers(0, SERVERS, rows)
    store_ix = rng.integers(0, STORES_PER_SERVER, rows)
    ids = rng.choice(1 << 24, rows, replace=False)  # unique per server even if all rows sat on one
    last_hb = ANCHOR_MS - rng.integers(0, 7 * DAY_MS, rows)
    create = last_hb - rng.integers(0, 400 * DAY_MS, rows)
    refresh = rng.integers(0, 8192, rows)
    days = (last_hb - create) // DAY_MS
    frequency = np.where(days > 0, refresh / np.maximum(days, 1), 0.0)
    product = rng.integers(0, 0x10000, rows)
    families = {int(p): chip_family(int(p)) for p in np.unique(product)}
    temperature = rng.integers(-5, 36, rows).astype(str)
    temperature[rng.random(rows) < 0.1] = ""
    return {
        "esl_id": [
            f"{0x51 + s:02X}-{i >> 16:02X}-{(i >> 8) & 0xFF:02X}-{i & 0xFF:02X}"
            for s, i in zip(server_ix.tolist(), ids.tolist(), strict=True)
        ],
        "store": [f"S{k:04d}" for k in store_ix.tolist()],
        "server": [f"http://127.0.0.1:{18000 + s}" for s in server_ix.tolist()],
        "create_time": create.astype(str).tolist(),
        "last_hb_time": last_hb.astype(str).tolist(),
        "battery": rng.integers(0, 101, rows).astype(str).tolist(),
        "screen_size": _SCREENS[rng.integers(0, len(_SCREENS), rows)].tolist(),
        "description": _DESCRIPTIONS[rng.integers(0, len(_DESCRIPTIONS), rows)].tolist(),
        "refresh_times": refresh.astype(str).tolist(),
        "led_times": rng.integers(0, 1024, rows).astype(str).tolist(),
        "firmware": _FIRMWARES[rng.integers(0, len(_FIRMWARES), rows)].tolist(),
        "rom": _ROMS[rng.integers(0, len(_ROMS), rows)].tolist(),
        "extesl_id": ["" for _ in range(rows)],
        "product_id": product.astype(str).tolist(),
        "chip_family": [families[p] for p in product.tolist()],
        "set_wor": rng.integers(0, 3, rows).astype(str).tolist(),
        "temperature": temperature.tolist(),
        "frequency": [repr(f) for f in frequency.tolist()],
    }


def generate(root: Path, rows: int, seed: int) -> None:
    from esl_operators.batch import batch_manifest
    from esl_operators.engine import ServerResult, StoreResult
    from esl_operators.parts import PartWriter
    from esl_operators.records import PART_COLUMNS
    from esl_operators.storage import part_path

    columns = _columns(rows, seed)
    cells = [columns[name] for name in PART_COLUMNS]
    path = part_path(root, DS, 0)
    # The same rows twice: our part file (whatever format PartWriter writes) and a CSV for pandas.
    with PartWriter(path) as writer, (root / NAIVE_INPUT).open("w", encoding="utf-8", newline="") as raw:
        plain = csv.writer(raw, lineterminator="\n")
        plain.writerow(PART_COLUMNS)
        for start in range(0, rows, CHUNK):
            chunk = list(zip(*(c[start : start + CHUNK] for c in cells), strict=True))
            writer.write_rows(chunk)
            plain.writerows(chunk)
    counts: dict[str, dict[str, int]] = {}
    for server, store in zip(columns["server"], columns["store"], strict=True):
        per_server = counts.setdefault(server, {})
        per_server[store] = per_server.get(store, 0) + 1
    results = [
        ServerResult(server, stores=[StoreResult(s, rows=n, seen=n) for s, n in sorted(stores.items())])
        for server, stores in sorted(counts.items())
    ]
    manifest = batch_manifest(
        results, batch=0, part=str(path), anchor=ANCHOR, cutoff_ms=ANCHOR_MS - 7 * DAY_MS, duration_s=0.0
    )
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    print(f"{path}\t{rows} rows")


def grow(root: Path, source: Path, times: int) -> None:
    """A part ``times`` as large as ``source``'s, untimed: its rows again under other server names
    (each copy a fleet of its own, so no label repeats), in the part format (an Arrow IPC stream of
    ``PART_SCHEMA``); generating millions of rows afresh would take minutes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc

    from esl_operators.batch import batch_manifest
    from esl_operators.engine import ServerResult, StoreResult
    from esl_operators.parts import PART_SCHEMA, open_part
    from esl_operators.storage import part_path

    path = part_path(root, DS, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    with pa.OSFile(str(path), "wb") as handle, pa.ipc.new_stream(handle, PART_SCHEMA) as writer:
        for copy in range(times):
            with open_part(part_path(source, DS, 0)) as reader:
                for batch in reader:
                    servers = pc.binary_join_element_wise(batch.column("server"), f"/copy-{copy}", "")
                    renamed = batch.set_column(batch.schema.get_field_index("server"), "server", servers)
                    writer.write_batch(renamed)
                    grouped = pa.table(renamed).group_by(["server", "store"]).aggregate([([], "count_all")])
                    for server, store, n in zip(*(grouped[c].to_pylist() for c in grouped.column_names),
                                                strict=True):  # fmt: skip
                        counts.setdefault(server, {})[store] = counts.get(server, {}).get(store, 0) + n
    results = [
        ServerResult(server, stores=[StoreResult(s, rows=n, seen=n) for s, n in sorted(stores.items())])
        for server, stores in sorted(counts.items())
    ]
    manifest = batch_manifest(
        results, batch=0, part=str(path), anchor=ANCHOR, cutoff_ms=ANCHOR_MS - 7 * DAY_MS, duration_s=0.0
    )
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    print(f"{path}\t{manifest['rows']} rows")


def ours(root: Path, *, report: bool, memory_mb: int | None = None) -> None:
    from esl_operators.aggregate import aggregate_run

    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    budget = {} if memory_mb is None else {"aggregate_memory_mb": memory_mb}
    summary = aggregate_run([manifest], output_root=root, ds=DS, report=report, **budget)
    print(f"{summary['manifest']}\t{summary['rows']} rows")


def naive_pandas(root: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(root / NAIVE_INPUT)
    frame = frame.sort_values(["frequency", "esl_id"])
    out = root / "pandas" / DS / "esl_id_part_1.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    print(f"{out}\t{len(frame)} rows")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("generate", "grow", "ours", "ours-report", "pandas"))
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--source", type=Path, help="grow: the root whose part is copied")
    parser.add_argument("--times", type=int, default=4, help="grow: copies of the source part")
    parser.add_argument("--memory-mb", type=int, help="ours: aggregate_memory_mb (default: the setting's)")
    args = parser.parse_args(argv)
    if args.step == "generate":
        generate(args.root, args.rows, args.seed)
    elif args.step == "grow":
        grow(args.root, args.source, args.times)
    elif args.step in ("ours", "ours-report"):
        ours(args.root, report=args.step == "ours-report", memory_mb=args.memory_mb)
    else:
        naive_pandas(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
