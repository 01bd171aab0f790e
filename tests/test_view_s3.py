"""The "ESL exports" view on an ``s3://`` output root: the same pages, files and refusals as a local one.

The local test tree of ``tests/test_plugin.py`` (one published run, a run in progress, clutter) is
copied object by object into a bucket of a real S3 server (moto's, on 127.0.0.1, as ``tests/test_s3.py``
starts it); the symlink that stays inside the root becomes a copy, what lies outside the root goes to
keys beside it. Both roots are then browsed through the app: the listing, every file and every refusal
must be the local one's. Both ways of reaching the bucket are used: an ``aws`` connection named in the
URL, and boto's own environment.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from esl_operators.web import create_app, published_file
from esl_operators.web.app import listing_page
from esl_operators.web.files import CHUNK_BYTES, chunks, open_object, shown, view_root
from tests.support import DS
from tests.test_plugin import HEAVY, PROTECTED, RAW_PATHS, SECRET, TRAVERSALS, _token, auth_manager, tree
from tests.test_s3 import BUCKET, KEY, _client, s3_endpoint

pytest.importorskip("airflow.providers.amazon", reason="the Amazon provider (esl-export[amazon]) is missing")
pytest.importorskip("moto.server", reason="moto[server] (requirements-test.txt) is missing")

__all__ = ["auth_manager", "s3_endpoint", "tree"]  # fixtures this module uses from the local tests

PREFIX = "esl"
PUBLISHED = ["esl_id_part_1.csv", "esl_id_part_2.csv", "esl_id_part_8.csv", "report.html", "_manifest.json"]
COMPARED_HEADERS = (
    "content-type",
    "content-length",
    "content-disposition",
    "content-security-policy",
    "cache-control",
    "x-content-type-options",
    "referrer-policy",
)


def _forget_stores() -> None:
    """Drop the process's cached stores: each test module runs its own S3 server on another port."""
    from airflow.sdk.io import store
    from s3fs import S3FileSystem

    store._STORE_CACHE.clear()
    S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, tree: Path) -> Iterator[Any]:
    """The local tree under ``s3://esl-exports/esl/``, the outside of the root beside it."""
    client = _client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(tree.rglob("*")):
        relative = path.relative_to(tree).as_posix()
        if path.is_symlink() and not path.resolve().is_relative_to(tree.resolve()):
            continue  # leads out of the root: on S3 that is a key outside the prefix (below)
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{relative}", Body=path.read_bytes())
    # Folders without files do not exist on S3: a fetch in progress has written a part, and so on.
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/2024-05-11/_parts/batch-0.arrow", Body=SECRET.encode())
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/notes/readme.txt", Body=SECRET.encode())
    for key in ("outside/secret.txt", f"outside/{DS}/report.html", f"{PREFIX}x/{DS}/report.html"):
        client.put_object(Bucket=BUCKET, Key=key, Body=SECRET.encode())  # beside the root: never served
    yield client


@pytest.fixture(scope="module", params=["connection", "environment"])
def s3_root(request: pytest.FixtureRequest, bucket: Any, s3_endpoint: str) -> Iterator[Any]:
    """The root as the Variable names it: through the connection in the URL, or boto's environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe an instance-metadata address
        if request.param == "connection":
            extra = {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}
            conn = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": extra}
            patch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
            text = f"s3://aws_default@{BUCKET}/{PREFIX}"
        else:
            for name, value in {
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": KEY,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": s3_endpoint,
            }.items():
                patch.setenv(name, value)
            text = f"s3://{BUCKET}/{PREFIX}"
        _forget_stores()
        patch.setenv("AIRFLOW_VAR_ESL_OUTPUT_ROOT", text)
        try:
            yield view_root(text)
        finally:
            _forget_stores()


@pytest.fixture
def s3_client(s3_root: Any) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:  # the root from the Variable, as in the api-server
        yield test_client


@pytest.fixture
def local_client(tree: Path) -> Iterator[TestClient]:
    with TestClient(create_app(output_root=lambda: tree)) as test_client:
        yield test_client


@pytest.fixture
def viewer(auth_manager: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(auth_manager)}"}


def test_the_variable_names_an_object_storage_root(s3_root: Any) -> None:
    assert (s3_root.protocol, s3_root.path) == ("s3", f"{BUCKET}/{PREFIX}")
    assert shown(s3_root) == f"s3://{BUCKET}/{PREFIX}"  # no user part (conn id) on the page


@pytest.mark.parametrize("path", PROTECTED)
def test_anonymous_requests_are_refused(s3_client: TestClient, auth_manager: Any, path: str) -> None:
    response = s3_client.get(path)
    assert response.status_code == 401
    assert SECRET not in response.text and "esl_id" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert s3_client.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403


def test_the_listing_is_the_local_one(
    s3_client: TestClient, local_client: TestClient, viewer: dict[str, str], s3_root: Any, tree: Path
) -> None:
    remote = s3_client.get("/", headers=viewer)
    local = local_client.get("/", headers=viewer)
    assert remote.status_code == local.status_code == 200
    assert f"<code>s3://{BUCKET}/{PREFIX}</code>" in remote.text
    assert remote.text.replace(shown(s3_root), "ROOT") == local.text.replace(str(tree), "ROOT")
    html = remote.text
    assert [d for d in ("2024-05-12", "2024-05-11", DS) if f"<b>{d}</b>" in html] == ["2024-05-11", DS]
    assert "notes" not in html and "esl_id_part_9.csv" not in html and SECRET not in html
    row = html[html.index(f"<b>{DS}</b>") :]
    assert ">complete<" in row
    manifest = json.loads((tree / DS / "_manifest.json").read_text(encoding="utf-8"))
    for part in manifest["partitions"]:
        assert f'href="{DS}/{part["file"]}" download' in row
    assert remote.headers["content-security-policy"] == local.headers["content-security-policy"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_files_are_the_local_ones_byte_for_byte(
    s3_client: TestClient, local_client: TestClient, viewer: dict[str, str], name: str
) -> None:
    remote = s3_client.get(f"/{DS}/{name}", headers=viewer)
    local = local_client.get(f"/{DS}/{name}", headers=viewer)
    assert remote.status_code == local.status_code == 200
    assert remote.content == local.content and len(remote.content) > 100
    assert {h: remote.headers.get(h) for h in COMPARED_HEADERS} == {
        h: local.headers.get(h) for h in COMPARED_HEADERS
    }
    assert remote.headers["last-modified"].endswith(" GMT")


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_and_unpublished_names_are_not_found(
    s3_client: TestClient, viewer: dict[str, str], path: str
) -> None:
    response = s3_client.get(path, headers=viewer)
    assert response.status_code == 404
    assert SECRET not in response.text


@pytest.mark.parametrize(("ds", "name"), RAW_PATHS)
def test_published_file_refuses_raw_paths(s3_root: Any, ds: str, name: str) -> None:
    with pytest.raises(HTTPException) as refused:
        published_file(s3_root, ds, name)
    assert refused.value.status_code == 404


def test_keys_beside_the_root_and_folders_named_like_files(
    bucket: Any, s3_root: Any, s3_client: TestClient, viewer: dict[str, str]
) -> None:
    """Keys S3 allows and a folder cannot hold: a prefix named ``report.html``, a ``..`` segment;
    and a sibling prefix that merely starts like the root (``eslx/``)."""
    odd = "2024-05-14"
    bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{odd}/report.html/inner", Body=SECRET.encode())
    bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{odd}/../../outside/x.csv", Body=SECRET.encode())
    try:
        html = s3_client.get("/", headers=viewer).text
        row = html[html.index(f"<b>{odd}</b>") : html.index("<b>2024-05-11</b>")]
        assert "incomplete: no manifest yet" in row and "report.html" not in row and ">none<" in row
        for path in (f"/{odd}/report.html", f"/{odd}/..%2f..%2foutside%2fx.csv", f"/{odd}/%2e%2e"):
            assert s3_client.get(path, headers=viewer).status_code == 404
        assert "<b>2024-05-13</b>" not in html  # eslx/ is not inside esl/
    finally:
        for key in (f"{odd}/report.html/inner", f"{odd}/../../outside/x.csv"):
            bucket.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")
    assert f"<b>{odd}</b>" not in s3_client.get("/", headers=viewer).text  # no listing cached


def test_new_dates_show_at_once(
    bucket: Any, s3_client: TestClient, viewer: dict[str, str], tree: Path
) -> None:
    """The api-server's store caches listings; the view must not: tasks elsewhere write meanwhile."""
    assert "<b>2024-05-15</b>" not in s3_client.get("/", headers=viewer).text
    body = (tree / DS / "report.html").read_bytes()
    bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}/2024-05-15/report.html", Body=body)
    try:
        assert "<b>2024-05-15</b>" in s3_client.get("/", headers=viewer).text
        assert s3_client.get("/2024-05-15/report.html", headers=viewer).content == body
    finally:
        bucket.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/2024-05-15/report.html")
    assert s3_client.get("/2024-05-15/report.html", headers=viewer).status_code == 404


def test_a_large_file_is_streamed_in_chunks(
    bucket: Any, s3_root: Any, s3_client: TestClient, viewer: dict[str, str]
) -> None:
    """A 24 MiB partition is sent in 1 MiB pieces, one ranged read each: never held whole (the peak
    of the Python heap while streaming is a few chunks, whatever the file's size)."""
    line = b"51-00-00-01,store,server," + b"x" * 70 + b"\n"
    body = line * (24 * CHUNK_BYTES // len(line) + 1)
    bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}/2024-05-16/esl_id_part_1.csv", Body=body)
    try:
        target = published_file(s3_root, "2024-05-16", "esl_id_part_1.csv")
        handle, info = open_object(target)
        assert info["size"] == len(body)
        sizes = []
        digest_ok = True
        tracemalloc.start()
        try:
            offset = 0
            for chunk in chunks(handle, "big"):
                sizes.append(len(chunk))
                digest_ok &= memoryview(body)[offset : offset + len(chunk)] == chunk  # no copy
                offset += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert digest_ok and sum(sizes) == len(body)
        assert len(sizes) == math.ceil(len(body) / CHUNK_BYTES) and max(sizes) == CHUNK_BYTES
        limit = min(6 * CHUNK_BYTES, len(body) // 4)
        assert peak < limit, f"peak {peak:,} bytes while streaming {len(body):,}"
        response = s3_client.get("/2024-05-16/esl_id_part_1.csv", headers=viewer)
        assert response.status_code == 200 and response.content == body
        assert response.headers["content-length"] == str(len(body))
    finally:
        bucket.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/2024-05-16/esl_id_part_1.csv")


def test_an_unreachable_store_is_named_and_a_missing_bucket_is_empty(
    viewer: dict[str, str], refused_port: int, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    extra = {
        "endpoint_url": f"http://127.0.0.1:{refused_port}",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    dead = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_S3", json.dumps(dead))
    live = {"conn_type": "aws", "login": KEY, "password": KEY, "extra": {"endpoint_url": s3_endpoint}}
    monkeypatch.setenv("AIRFLOW_CONN_LIVE_S3", json.dumps(live))
    for text, status, says in (
        (f"s3://dead_s3@{BUCKET}/{PREFIX}", 502, f"cannot read s3://{BUCKET}/{PREFIX}: "),
        ("s3://live_s3@no-such-bucket/esl", 200, "No run dates under s3://no-such-bucket/esl yet"),
    ):
        monkeypatch.setenv("AIRFLOW_VAR_ESL_OUTPUT_ROOT", text)
        with TestClient(create_app()) as client:
            response = client.get("/", headers=viewer)
            assert response.status_code == status, response.text
            assert says in response.text
            assert KEY not in response.text.replace(f"{BUCKET}", "")  # no credentials in the answer
            assert client.get(f"/{DS}/report.html", headers=viewer).status_code == (
                404 if status == 200 else 502
            )


_LOAD_PLUGIN = """
import importlib, json, sys
module = importlib.import_module("esl_operators.plugin")  # what the airflow.plugins entry point loads
from esl_operators.web.app import listing_page
from esl_operators.web.files import view_root
html = listing_page(view_root(sys.argv[1]))
print(json.dumps({"loaded": sorted(m for m in sys.argv[2:] if m in sys.modules), "listing": html}))
"""


def test_browsing_s3_imports_no_heavy_library(s3_root: Any, tree: Path) -> None:
    """The api-server lists an s3:// root without pyarrow, pandas, numpy or matplotlib."""
    text = os.environ["AIRFLOW_VAR_ESL_OUTPUT_ROOT"]
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_PLUGIN, text, *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loaded"] == []
    assert result["listing"].replace(shown(s3_root), "ROOT") == listing_page(tree).replace(str(tree), "ROOT")
