"""``output_root`` on object storage: a real ``dag.test()`` run writing to ``s3://`` on a local S3 server.

The S3 server is moto's (PyPI ``moto[server]``), started on 127.0.0.1 by this module and stopped by its
PID; Airflow reaches it through the Amazon provider (the optional ``esl-export[amazon]`` extra) and an
``aws_default`` connection whose ``endpoint_url`` points at it. Nothing talks to AWS.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators.csvformat import STANDARD_COLUMNS
from esl_operators.simulator import Fleet, SimulatorThread
from tests.expected import expected_partition
from tests.support import ANCHOR, CUTOFF_MS, connect, load_dag, moto_server, without_retries

pytest.importorskip("airflow.providers.amazon", reason="the Amazon provider (esl-export[amazon]) is missing")
pytest.importorskip("s3fs", reason="s3fs (apache-airflow-providers-amazon[s3fs]) is missing")
pytest.importorskip("moto.server", reason="moto[server] (requirements-test.txt) is missing")

BUCKET = "esl-exports"
KEY = "testing"  # moto accepts any credentials; these are not secrets


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=KEY,
    )


def _rows(client: Any, key: str) -> list[list[str]]:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8")
    return list(csv.reader(io.StringIO(body, newline="")))


@pytest.mark.parametrize(
    ("root", "credentials"),
    [
        # the connection named in the URL (ObjectStoragePath's conn_id@bucket form) holds the endpoint
        (f"s3://aws_default@{BUCKET}/esl", "connection"),
        # a plain bucket URL, as in the README: boto's own environment settings apply
        (f"s3://{BUCKET}/plain", "environment"),
    ],
)
def test_dag_run_publishes_to_an_s3_output_root(
    root: str,
    credentials: str,
    airflow_db: str,
    simulator: SimulatorThread,
    small_fleet: Fleet,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _client(s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    names = connect(monkeypatch, simulator, tmp_path / "unused-local-root")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe an instance-metadata address
    if credentials == "connection":
        extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
        conn = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    else:
        for name, value in {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
        }.items():
            monkeypatch.setenv(name, value)
    prefix = root.split(f"{BUCKET}/", 1)[1] + "/2024-05-10/"

    dag = without_retries(load_dag())
    run = dag.test(logical_date=ANCHOR, run_conf={"servers_per_batch": 2, "output_root": root})
    assert run.state == "success"

    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    keys = {item["Key"][len(prefix) :] for item in listing.get("Contents", [])}
    assert {
        "esl_id_part_1.csv",
        "esl_id_part_2.csv",
        "_manifest.json",
        "_SUCCESS",
        "_parts/batch-0.json",
        "_parts/batch-1.json",
    } <= keys
    assert not [k for k in keys if k.endswith(".tmp")]  # every temporary was renamed into place

    part1 = _rows(client, prefix + "esl_id_part_1.csv")
    part2 = _rows(client, prefix + "esl_id_part_2.csv")
    assert part1[0] == list(STANDARD_COLUMNS)
    assert part1[1:] == expected_partition(small_fleet, {0: names[0], 1: names[1]}, CUTOFF_MS)
    assert part2[1:] == expected_partition(small_fleet, {2: names[2]}, CUTOFF_MS)
    assert len(part1) > 100

    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "_manifest.json")["Body"].read())
    assert [(p["file"], p["rows"]) for p in manifest["partitions"]] == [
        ("esl_id_part_1.csv", len(part1) - 1),
        ("esl_id_part_2.csv", len(part2) - 1),
    ]
    assert not (tmp_path / "unused-local-root").exists()  # nothing went to the local default


def test_a_partition_sorted_in_runs_spills_locally_and_streams_its_csv_to_s3(
    airflow_db: str,
    simulator: SimulatorThread,
    small_fleet: Fleet,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The external sort with an ``s3://`` root: parts read from the bucket, runs spilled to a local
    temporary folder (removed afterwards), the merged CSV uploaded; the rows are the oracle's."""
    import logging
    import tempfile

    from esl_operators import spill

    client = _client(s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    names = connect(monkeypatch, simulator, tmp_path / "unused-local-root")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    conn = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": {"endpoint_url": s3_endpoint}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    local_tmp = tmp_path / "tmp"
    local_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(local_tmp))
    monkeypatch.setattr(spill, "RUN_SHARE", 16 * spill.MB // 8_000)  # runs of about 40 rows
    caplog.set_level(logging.INFO, logger="esl_operators.aggregate")
    root = f"s3://aws_default@{BUCKET}/spilled"

    dag = without_retries(load_dag())
    conf = {"servers_per_batch": 3, "output_root": root, "aggregate_memory_mb": 16}
    run = dag.test(logical_date=ANCHOR, run_conf=conf)
    assert run.state == "success"

    assert any("runs merged" in r.getMessage() for r in caplog.records)
    prefix = "spilled/2024-05-10/"
    keys = {i["Key"][len(prefix) :] for i in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert not [k for k in keys if k.endswith(".tmp") or ".spill-" in k]
    published = _rows(client, prefix + "esl_id_part_1.csv")
    assert published[1:] == expected_partition(small_fleet, dict(enumerate(names)), CUTOFF_MS)
    assert list(local_tmp.iterdir()) == []  # the local spill folder is gone


def test_the_dag_keeps_the_fleet_history_on_s3(
    airflow_db: str,
    simulator: SimulatorThread,
    small_fleet: Fleet,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: two DAG runs on an ``s3://`` root; the second compares with the first's snapshot."""
    import datetime as dt

    import pyarrow.parquet as pq

    from tests.expected_history import changes_file, expected_changes

    client = _client(s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    names = connect(monkeypatch, simulator, tmp_path / "unused-local-root")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    conn = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": {"endpoint_url": s3_endpoint}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    root = f"s3://aws_default@{BUCKET}/history"
    dag = without_retries(load_dag())
    labels = {}
    for days_before in (3, 0):
        anchor = ANCHOR - dt.timedelta(days=days_before)
        run = dag.test(logical_date=anchor, run_conf={"servers_per_batch": 2, "output_root": root})
        assert run.state == "success"
        cutoff = CUTOFF_MS - days_before * 86_400_000
        rows = expected_partition(small_fleet, dict(enumerate(names)), cutoff)
        labels[days_before] = {
            (r[2], r[0]): {"store": r[1], "battery": r[5], "firmware": r[10]} for r in rows
        }

    prefix = "history/2024-05-10/"
    snapshot = client.get_object(Bucket=BUCKET, Key=prefix + "_snapshot.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(snapshot))
    assert sorted(zip(table["server"].to_pylist(), table["esl_id"].to_pylist(), strict=True)) == sorted(
        labels[0]
    )
    found = expected_changes(labels[3], labels[0], drop_points=10)
    assert found["gone"]
    changes = client.get_object(Bucket=BUCKET, Key=prefix + "_changes.csv")["Body"].read()
    assert changes == changes_file(found)
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "_manifest.json")["Body"].read())
    assert manifest["history"] == {"previous_date": "2024-05-07", **{k: len(v) for k, v in found.items()}}
    keys = {i["Key"] for i in client.list_objects_v2(Bucket=BUCKET, Prefix="history/")["Contents"]}
    assert "history/2024-05-07/_snapshot.parquet" in keys
    assert "history/2024-05-07/_changes.csv" not in keys  # no earlier published date
