"""A rerun of a published date that fails, at any point, never leaves a mix (issue 12, item 2).

Each case starts from the same earlier publication (two partitions, a report) and reruns the date with
other rows in one partition and no report, so a completed rerun also removes files. After the failure
the date holds the earlier set or the new set, byte for byte; or, when the move itself was interrupted,
no ``_SUCCESS`` and a commit journal, which the next attempt's first step (``remove_stale_stagings``)
rolls forward to the new set, byte for byte. Failing in the aggregation before the commit is also
covered by ``tests/test_bad_input.py`` (a short part), ``tests/test_spill.py`` (a full disk while merging)
and ``tests/test_storage_faults.py`` (a full disk or an I/O error in each staged file).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators import aggregate
from esl_operators.aggregate import aggregate_run
from esl_operators.exceptions import StorageError
from esl_operators.publish import JOURNAL_NAME, remove_stale_stagings
from esl_operators.simulator import Fleet, SimulatorThread
from tests import faultfs
from tests.support import DS, leftovers, published_files
from tests.test_spill import make_rows, write_part

pytestmark = pytest.mark.timeout(300)

OLD_FILES = [
    "_SUCCESS",
    "_manifest.json",
    "_snapshot.parquet",
    "esl_id_part_1.csv",
    "esl_id_part_2.csv",
    "report.html",
]
NEW_FILES = ["_SUCCESS", "_manifest.json", "_snapshot.parquet", "esl_id_part_1.csv"]
# The aggregate step's clock, fixed: the manifest's aggregate duration is then the same in every run.
FIXED_CLOCK = types.SimpleNamespace(monotonic=lambda: 0.0)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An output root with the earlier publication and the rerun's part; the rerun's manifests; the
    bytes of the earlier set and of the set a clean rerun publishes."""
    root = tmp_path_factory.mktemp("template") / "out"
    earlier = [
        write_part(root, make_rows(600, seed=1), batch=0),
        write_part(root, make_rows(400, seed=2), batch=1),
    ]
    aggregate_run(earlier, output_root=root, ds=DS)
    old = published_files(root / DS)
    assert sorted(old) == OLD_FILES
    rerun = [write_part(root, make_rows(700, seed=3), batch=0)]
    clean = tmp_path_factory.mktemp("clean") / "out"
    shutil.copytree(root, clean)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aggregate, "time", FIXED_CLOCK)
        aggregate_run(rerun, output_root=clean, ds=DS, report=False)
    new = published_files(clean / DS)
    assert sorted(new) == NEW_FILES
    assert new["esl_id_part_1.csv"] != old["esl_id_part_1.csv"]
    yield {"root": root, "rerun": rerun, "old": old, "new": new}


def copy_of(template: dict[str, Any], tmp_path: Path) -> Path:
    root = tmp_path / "out"
    shutil.copytree(template["root"], root)
    return root


def journals(folder: Path) -> list[Path]:
    return sorted(folder.glob(f".staging-*/{JOURNAL_NAME}"))


# --- killed (SIGKILL) ---------------------------------------------------------------------------------

KILL_SCRIPT = """
import json, logging, os, signal, sys, types
from pathlib import Path
from esl_operators import aggregate

aggregate.time = types.SimpleNamespace(monotonic=lambda: 0.0)
logger_name, words, manifests, root = sys.argv[1:5]


class KillWhenLogged(logging.Handler):
    def emit(self, record):
        if record.name == logger_name and words in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)


logger = logging.getLogger(logger_name)
logger.setLevel(logging.DEBUG)
logger.addHandler(KillWhenLogged())
manifests = json.loads(Path(manifests).read_text())
aggregate.aggregate_run(manifests, output_root=Path(root), ds={ds!r}, report=False)
"""

# (logger, message: the process is killed right after this step, state then, state after recovery)
KILL_POINTS = [
    ("esl_operators.aggregate", "esl_id_part_1.csv: ", "old", "old"),  # staging, before the commit
    ("esl_operators.publish", "commit journal written", "old", "new"),
    ("esl_operators.publish", "esl_id_part_1.csv moved into place", "incomplete", "new"),
    ("esl_operators.publish", "_manifest.json moved into place", "incomplete", "new"),
    ("esl_operators.publish", "stale files removed", "incomplete", "new"),
    ("esl_operators.publish", "_SUCCESS written", "new", "new"),
]


def kill_during_aggregate(root: Path, manifests: Any, logger: str, words: str) -> None:
    """Run the aggregate step in a real process and SIGKILL it right after it logs ``words``."""
    path = root.parent / "manifests.json"
    path.write_text(json.dumps(manifests), encoding="utf-8")
    script = KILL_SCRIPT.format(ds=DS)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), logger, words, str(path), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def check_state(folder: Path, template: dict[str, Any], state: str) -> None:
    files = published_files(folder)
    visible = {k: v for k, v in files.items() if not k.startswith(".staging-")}
    if state == "incomplete":  # a reader sees no _SUCCESS: the date is not published right now
        assert "_SUCCESS" not in visible
        assert journals(folder)
    else:
        assert visible == template[state]


@pytest.mark.parametrize(("logger", "words", "after_kill", "after_recovery"), KILL_POINTS)
def test_killed_during_publish_leaves_the_old_set_or_a_journal_the_next_attempt_finishes(
    logger: str, words: str, after_kill: str, after_recovery: str, template: dict[str, Any], tmp_path: Path
) -> None:
    root = copy_of(template, tmp_path)
    folder = root / DS

    kill_during_aggregate(root, template["rerun"], logger, words)

    check_state(folder, template, after_kill)
    assert list(folder.glob(".staging-*"))  # the killed attempt's staging folder is still there
    remove_stale_stagings(folder)  # the next attempt's first step
    assert published_files(folder) == template[after_recovery]
    assert leftovers(folder) == []
    remove_stale_stagings(folder)  # nothing left to do: repeating it changes nothing
    assert published_files(folder) == template[after_recovery]


def test_an_attempt_killed_while_rolling_forward_is_finished_by_the_next(
    template: dict[str, Any], tmp_path: Path
) -> None:
    root = copy_of(template, tmp_path)
    folder = root / DS
    kill_during_aggregate(
        root, template["rerun"], "esl_operators.publish", "esl_id_part_1.csv moved into place"
    )
    script = f"""
import logging, os, signal
from pathlib import Path
from esl_operators.publish import remove_stale_stagings

class KillWhenLogged(logging.Handler):
    def emit(self, record):
        if "_manifest.json moved into place" in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

logger = logging.getLogger("esl_operators.publish")
logger.setLevel(logging.DEBUG)
logger.addHandler(KillWhenLogged())
remove_stale_stagings(Path({str(folder)!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    check_state(folder, template, "incomplete")

    remove_stale_stagings(folder)  # the attempt after that one finishes the set
    assert published_files(folder) == template["new"]
    assert leftovers(folder) == []


# --- a write error while the set is moved into place ---------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            faultfs.Fault(rf"/{DS}/_manifest\.json$", on="rename", code=errno.EIO),
            r"cannot publish {staging}/_manifest\.json as {folder}/_manifest\.json: "
            r"\[Errno 5\] Input/output error",
        ),
        (
            faultfs.Fault(rf"/{DS}/\._SUCCESS\.[0-9a-f]+\.tmp$", on="create", code=errno.ENOSPC),
            r"cannot write {folder}/_SUCCESS: \[Errno 28\] No space left on device",
        ),
    ],
    ids=["moving-the-manifest", "writing-success"],
)
def test_a_write_error_during_publish_is_finished_by_the_next_attempt(
    fault: faultfs.Fault, message: str, template: dict[str, Any], tmp_path: Path
) -> None:
    from airflow.sdk import ObjectStoragePath

    faultfs.register()
    copy_of(template, tmp_path)
    root = ObjectStoragePath(f"faulty://{tmp_path}/out")
    folder = root / DS
    local = tmp_path / "out" / DS
    fault.fired = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aggregate, "time", FIXED_CLOCK)
        with faultfs.injected(fault), pytest.raises(StorageError) as caught:
            aggregate_run(template["rerun"], output_root=root, ds=DS, report=False)

    [journal] = journals(local)
    staging = f"faulty://{journal.parent}"
    expected = message.format(staging=re.escape(staging), folder=re.escape(str(folder)))
    assert re.fullmatch(expected, str(caught.value)), str(caught.value)
    assert fault.fired == 1
    check_state(local, template, "incomplete")
    assert "_SUCCESS" not in os.listdir(local)

    remove_stale_stagings(folder)  # the next attempt's first step: the fault is gone
    assert published_files(local) == template["new"]
    assert leftovers(local) == []


# --- failing in fetch -----------------------------------------------------------------------------------


def test_a_rerun_failing_in_fetch_keeps_the_earlier_publication(
    small_fleet: Fleet, refused_port: int, tmp_path: Path
) -> None:
    """``esl-export fetch`` publishes a date; rerun with its server down, it fails before publishing."""
    out = tmp_path / "out"

    def command(*servers: str) -> list[str]:
        args = [arg for url in servers for arg in ("--server", url)]
        return [sys.executable, "-m", "esl_operators", "fetch", *args, "--date", DS, "--out", str(out)]

    with SimulatorThread(small_fleet) as sim:
        subprocess.run(command(*sim.urls), check=True, timeout=120, capture_output=True)
    before = published_files(out / DS)
    assert {"_SUCCESS", "_manifest.json", "esl_id_part_1.csv", "esl_id_part_3.csv"} <= set(before)

    down = f"http://127.0.0.1:{refused_port}"
    done = subprocess.run(
        [*command(down), "--retry-attempts", "1"], timeout=120, capture_output=True, text=True
    )

    assert done.returncode == 1, done.stderr[-2000:]
    assert "not published: fix the servers or use --on-server-error skip" in done.stderr
    assert published_files(out / DS) == before
    assert leftovers(out / DS) == []


def test_the_command_finishes_an_interrupted_commit_even_when_its_own_fetch_fails(
    template: dict[str, Any], refused_port: int, tmp_path: Path
) -> None:
    root = copy_of(template, tmp_path)
    folder = root / DS
    kill_during_aggregate(
        root, template["rerun"], "esl_operators.publish", "esl_id_part_1.csv moved into place"
    )
    check_state(folder, template, "incomplete")

    down = f"http://127.0.0.1:{refused_port}"
    cli = [sys.executable, "-m", "esl_operators", "fetch", "--server", down, "--date", DS, "--out", str(root)]
    done = subprocess.run([*cli, "--retry-attempts", "1"], capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stderr[-2000:]
    assert "finishing the publication an interrupted attempt began" in done.stderr
    assert published_files(folder) == template["new"]
    assert leftovers(folder) == []
