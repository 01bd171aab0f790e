"""Storage faults (issue 12, item 4): a full disk or an I/O error in the middle of a part, a partition,
the report or the manifest fails the step with a message naming the file and the cause, leaves no
temporary file, and the previous publication stays byte for byte as it was.

The faults come from an injected fsspec file system (``tests/faultfs.py``): the real local file system,
or real S3 (a moto server on 127.0.0.1), whose writes of one chosen file stop after N bytes. The steps
are the real ones (``run_batch`` as a fetch task runs it, ``aggregate_run`` as the aggregate task does),
on an ``ObjectStoragePath`` root as in a DAG run.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators.aggregate import aggregate_run
from esl_operators.batch import run_batch
from esl_operators.exceptions import StorageError
from esl_operators.simulator import SimulatorThread
from esl_operators.storage import SNAPSHOT_NAME
from tests import faultfs
from tests.support import ANCHOR, DS, fetch_settings, leftovers, moto_server, published_files, sim_target
from tests.test_spill import make_rows, write_part

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:UPath 'faults3' filesystem not explicitly implemented:UserWarning"),
]

CAUSES = {errno.ENOSPC: "[Errno 28] No space left on device", errno.EIO: "[Errno 5] Input/output error"}


@pytest.fixture(scope="module", autouse=True)
def _faulty_file_systems() -> None:
    faultfs.register()


def earlier_publication(root: Any) -> tuple[list[Any], dict[str, bytes]]:
    """A complete publication of two partitions and a report; then the rerun's parts (other rows)."""
    first = [
        write_part(root, make_rows(400, seed=1), batch=0),
        write_part(root, make_rows(300, seed=2), batch=1),
    ]
    aggregate_run(first, output_root=root, ds=DS)
    before = published_files(root / DS)
    # (at least: the history files of issue 14 join them)
    assert {"_SUCCESS", "_manifest.json", "esl_id_part_1.csv", "esl_id_part_2.csv", "report.html"} <= set(
        before
    )
    rerun = [
        write_part(root, make_rows(500, seed=3), batch=0),
        write_part(root, make_rows(350, seed=4), batch=1),
    ]
    return rerun, before


def faulty_root(tmp_path: Path) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(f"faulty://{tmp_path}/out")


AGGREGATE_FAULTS = [
    ("esl_id_part_1.csv", errno.ENOSPC, 1_000),
    ("esl_id_part_2.csv", errno.EIO, 5_000),
    ("report.html", errno.ENOSPC, 20_000),
    ("_manifest.json", errno.EIO, 100),
    (SNAPSHOT_NAME, errno.ENOSPC, 1_000),
]


def check_aggregate_fault(root: Any, name: str, code: int, after: int, prefix: str) -> None:
    rerun, before = earlier_publication(root)
    if name not in before:
        pytest.skip(f"the aggregate step does not write {name} yet (issue 14 adds it)")
    folder = root / DS
    fault = faultfs.Fault(rf"/\.staging-[0-9a-f]+/\.?{re.escape(name)}[^/]*$", after=after, code=code)
    with faultfs.injected(fault), pytest.raises(StorageError) as caught:
        aggregate_run(rerun, output_root=root, ds=DS)

    assert re.fullmatch(
        rf"cannot write {re.escape(prefix)}/{DS}/\.staging-[0-9a-f]{{12}}/{re.escape(name)}: "
        + re.escape(CAUSES[code]),
        str(caught.value),
    ), str(caught.value)
    assert caught.value.errno == code
    assert fault.fired == 1
    assert leftovers(folder) == []
    assert published_files(folder) == before  # the earlier publication, byte for byte, _SUCCESS included


@pytest.mark.parametrize(("name", "code", "after"), AGGREGATE_FAULTS)
def test_a_storage_fault_while_publishing_keeps_the_earlier_publication(
    name: str, code: int, after: int, tmp_path: Path
) -> None:
    root = faulty_root(tmp_path)
    check_aggregate_fault(root, name, code, after, f"faulty://{tmp_path}/out")


@pytest.mark.parametrize(
    ("name", "code", "after"), [("batch-0.arrow", errno.ENOSPC, 20_000), ("batch-0.json", errno.EIO, 10)]
)
def test_a_storage_fault_while_fetching_a_part_names_it_and_removes_its_temporary(
    name: str, code: int, after: int, simulator: SimulatorThread, tmp_path: Path
) -> None:
    root = faulty_root(tmp_path)
    _, before = earlier_publication(root)
    folder = root / DS
    fault = faultfs.Fault(rf"/_parts/\.?{re.escape(name)}[^/]*$", after=after, code=code)
    targets = [sim_target(simulator, i) for i in range(3)]
    with faultfs.injected(fault), pytest.raises(StorageError) as caught:
        run_batch(targets, fetch_settings(), output_root=root, ds=DS, batch=0, anchor=ANCHOR, max_threads=3)

    assert str(caught.value) == f"cannot write faulty://{tmp_path}/out/{DS}/_parts/{name}: {CAUSES[code]}"
    assert fault.fired >= 1
    assert leftovers(folder) == []
    assert published_files(folder) == before


# --- the same on S3 (moto) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bucket on a local moto server, reached as ``faults3://`` through the ``AWS_*`` environment."""
    pytest.importorskip("s3fs", reason="s3fs (apache-airflow-providers-amazon[s3fs]) is missing")
    pytest.importorskip("moto.server", reason="moto[server] (requirements-test.txt) is missing")
    import boto3

    key = "testing"  # moto accepts any credentials; these are not secrets
    with (
        moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            patch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="faults")
        faultfs.register()
        faultfs.attach_s3()
        yield "faults"


@pytest.mark.parametrize(
    ("name", "code", "after"), [AGGREGATE_FAULTS[0], AGGREGATE_FAULTS[3]], ids=["partition", "manifest"]
)
def test_a_storage_fault_on_s3_keeps_the_earlier_publication(
    name: str, code: int, after: int, faulty_bucket: str, request: pytest.FixtureRequest
) -> None:
    from airflow.sdk import ObjectStoragePath

    prefix = f"faults3://{faulty_bucket}/{request.node.callspec.id}"
    check_aggregate_fault(ObjectStoragePath(prefix), name, code, after, prefix)


def test_a_storage_fault_on_s3_while_fetching_a_part(faulty_bucket: str, simulator: SimulatorThread) -> None:
    from airflow.sdk import ObjectStoragePath

    prefix = f"faults3://{faulty_bucket}/part"
    root = ObjectStoragePath(prefix)
    _, before = earlier_publication(root)
    fault = faultfs.Fault(r"/_parts/\.batch-0\.arrow[^/]*$", after=20_000)
    targets = [sim_target(simulator, i) for i in range(3)]
    with faultfs.injected(fault), pytest.raises(StorageError) as caught:
        run_batch(targets, fetch_settings(), output_root=root, ds=DS, batch=0, anchor=ANCHOR, max_threads=3)

    assert str(caught.value) == f"cannot write {prefix}/{DS}/_parts/batch-0.arrow: {CAUSES[errno.ENOSPC]}"
    assert leftovers(root / DS) == []
    assert published_files(root / DS) == before
    assert json.loads(before["_manifest.json"])["rows"] > 0
