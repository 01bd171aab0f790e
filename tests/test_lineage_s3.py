"""The aggregate task's lineage for a folder on S3 (a local moto server, as tests/test_s3.py runs it).

Namespace ``s3://bucket`` (the connection id of ``s3://conn@bucket`` names no data), name the key prefix,
statistics read back from the objects themselves.
"""

from __future__ import annotations

import json

import pytest

from tests.test_s3 import BUCKET, KEY, _client, s3_endpoint  # noqa: F401 - s3_endpoint is a fixture


def test_an_s3_folder_is_reported_with_its_objects_statistics(
    s3_endpoint: str,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk import ObjectStoragePath

    from esl_operators.lineage import aggregate_lineage

    client = _client(s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
    conn = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_LINEAGE", json.dumps(conn))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    prefix = "lineage/2024-05-10"
    parts = {"esl_id_part_1.csv": "esl_id\nA\nB\n", "esl_id_part_2.csv": "esl_id\nC\n"}
    for name, body in parts.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=body.encode())
    manifest = {
        "columns": ["esl_id"],
        "rows": 3,
        "partitions": [{"file": name} for name in parts],
        "errors": [],
    }
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/_manifest.json", Body=json.dumps(manifest).encode())

    lineage = aggregate_lineage(ObjectStoragePath(f"s3://aws_lineage@{BUCKET}/{prefix}"), published=True)
    [output] = lineage.outputs
    assert (output.namespace, output.name) == (f"s3://{BUCKET}", prefix)
    stats = output.outputFacets["outputStatistics"]
    assert (stats.rowCount, stats.size, stats.fileCount) == (3, sum(len(b) for b in parts.values()), 2)
    assert [f.name for f in output.facets["schema"].fields] == ["esl_id"]
    assert lineage.run_facets == {}
