"""Part files written by ``PartWriter`` (rows gathered into record batches, Arrow arrays built from
their buffers) read back by pyarrow exactly as written; what importing the fetch path loads; and the
command's process, which skips the interpreter's teardown, still ends with its code and output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest

from esl_operators.parts import PART_SCHEMA, PartWriter, open_part, read_part
from esl_operators.records import PART_COLUMNS
from esl_operators.simulator import SimulatorThread
from tests.support import DS

REPO = Path(__file__).resolve().parents[1]
WIDTH = len(PART_COLUMNS)
HEAVY = ("pandas", "pyarrow", "numpy", "aiohttp", "tqdm")


def row(number: int) -> tuple[str, ...]:
    """A part row whose cells differ per row and column: ASCII, empty, accented, CJK and emoji text."""
    cells = [f"{number}-{column}" for column in range(WIDTH)]
    cells[3] = ""  # an empty cell between two others
    cells[7] = ["plain", "Café crème", "價格標籤", "🏷️ label", ""][number % 5]
    return tuple(cells)


def written(path: Path, rows: list[tuple[str, ...]], chunk: int, batch_rows: int) -> list[int]:
    """Write ``rows`` ``chunk`` at a time; return the row counts of the file's record batches."""
    with PartWriter(path, batch_rows=batch_rows) as writer:
        for start in range(0, len(rows), chunk):
            writer.write_rows(rows[start : start + chunk])
        assert writer.rows == len(rows)
    with pa.OSFile(str(path)) as handle:
        return [batch.num_rows for batch in pyarrow.ipc.open_stream(handle)]


@pytest.mark.parametrize(
    ("count", "chunk", "batch_rows", "batches"),
    [
        (23, 4, 10, [12, 11]),  # chunks gathered until a batch has 10 rows; the rest at commit
        (23, 23, 10, [23]),  # one large write is one batch, not cut
        (7, 3, 100, [7]),  # fewer rows than a batch: one batch at commit
        (1, 1, 1, [1]),
    ],
)
def test_rows_read_back_exactly_as_written_in_gathered_batches(
    tmp_path: Path, count: int, chunk: int, batch_rows: int, batches: list[int]
) -> None:
    rows = [row(n) for n in range(count)]
    path = tmp_path / "batch-0.arrow"
    assert written(path, rows, chunk, batch_rows) == batches
    table = read_part(path)
    assert table.schema == PART_SCHEMA
    assert [tuple(r.values()) for r in table.to_pylist()] == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-0.arrow"]  # no temporary left


def test_an_empty_part_holds_the_schema_and_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "batch-0.arrow"
    with PartWriter(path) as writer:
        writer.write_rows([])
    with open_part(path) as reader:
        assert reader.schema == PART_SCHEMA
        assert reader.read_all().num_rows == 0


def test_a_row_of_the_wrong_width_is_refused_and_nothing_is_published(tmp_path: Path) -> None:
    path = tmp_path / "batch-0.arrow"
    with pytest.raises(ValueError, match="zip"), PartWriter(path, batch_rows=2) as writer:
        writer.write_rows([row(0), row(1)[:-1]])
    assert list(tmp_path.iterdir()) == []


def test_rows_left_at_commit_are_written_even_below_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "batch-0.arrow"
    rows = [row(n) for n in range(5)]
    assert written(path, rows, 2, 1000) == [5]
    assert read_part(path).column("esl_id").to_pylist() == [f"{n}-0" for n in range(5)]


def _loaded(code: str) -> list[str]:
    """Heavy modules a fresh interpreter has loaded after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_command_loads_no_heavy_library() -> None:
    """``esl-export`` loads the fetch path inside ``fetch`` and the aggregate step after the fetch."""
    assert _loaded("import esl_operators.cli") == []


def test_the_fetch_path_loads_aiohttp_but_not_arrow_or_tqdm() -> None:
    """Everything ``fetch`` imports before its first request: no pyarrow/numpy/pandas (the part
    writer loads pyarrow with its first batch) and no tqdm (only a terminal shows a bar)."""
    code = "import esl_operators.batch, esl_operators.config, esl_operators.lease, esl_operators.publish"
    assert _loaded(code) == ["aiohttp"]


def test_writing_a_part_does_not_load_pandas(tmp_path: Path) -> None:
    """``pa.array`` on Python lists would load pandas (about 0.3 s of CPU); the writer builds buffers."""
    code = (
        "from pathlib import Path\nfrom esl_operators.parts import PartWriter, read_part\n"
        f"path = Path({str(tmp_path / 'batch-0.arrow')!r})\n"
        "with PartWriter(path) as writer:\n"
        "    writer.write_rows([tuple(str(i) for i in range(18))] * 3)\n"
        "assert read_part(path).num_rows == 3"
    )
    assert _loaded(code) == ["pyarrow", "numpy"]


def test_the_command_process_ends_with_its_code_and_all_its_output(
    simulator: SimulatorThread, tmp_path: Path
) -> None:
    """``python -m esl_operators`` skips the interpreter's teardown (``os._exit``): its exit code,
    its last stdout line and its last log line (written as the lease is released) still arrive."""
    out = tmp_path / "out"
    servers = [arg for url in simulator.urls for arg in ("--server", url)]
    cmd = [sys.executable, "-m", "esl_operators", "fetch", *servers, "--date", DS, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = out / DS / "_manifest.json"
    assert done.stdout.splitlines()[-1] == f"{manifest}\terrors: 0"
    assert json.loads(manifest.read_text(encoding="utf-8"))["errors"] == []
    assert f"INFO {out / DS}: lease released by esl-export fetch " in done.stderr.splitlines()[-1]
    failed = subprocess.run(
        [*cmd[:-2], "--out", str(tmp_path / "other"), "--max-concurrency", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert failed.returncode == 2
    assert "--max-concurrency" in failed.stderr.splitlines()[-1]
