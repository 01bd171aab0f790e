"""The "ESL exports" plugin app: Airflow login required, only published files of plain dates served."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from esl_operators.config import DAG_ID
from esl_operators.simulator import build_fleet
from esl_operators.web import create_app, published_file
from tests.report_data import HOSTILE, Places, assert_inert, clipped, hostile_fleet, publish_run
from tests.support import ANCHOR_MS, DS, load_dag

SECRET = "top secret, outside the output root"

# Requests the tests below make; tests/test_view_s3.py makes every one of them against an s3:// root too.
TRAVERSALS = [
    "/..%2f..%2foutside%2fsecret.txt",
    f"/{DS}/..%2f..%2foutside%2fsecret.txt",
    f"/{DS}/%2e%2e%2f%2e%2e%2foutside%2fsecret.txt",
    "/%2e%2e/outside/secret.txt",
    f"/{DS}/%2e%2e",
    f"/{DS}/%2F..%2Foutside%2Fsecret.txt",
    f"/{DS}/%2Fetc%2Fpasswd",
    f"/{DS}//etc/passwd",
    f"/{DS}/_parts%2fbatch-0.arrow",
    f"/{DS}/_parts/batch-0.arrow",
    f"/{DS}/esl_id_part_9.csv",  # symlink to a file outside the root
    "/2024-05-12/report.html",  # date folder symlinked outside the root
    f"/{DS}/esl_id_part_1.csv%00.html",
    f"/{DS}/esl_id_part_0.csv",
    f"/{DS}/ESL_ID_PART_1.CSV",
    f"/{DS}/_SUCCESS",
    "/2024-5-10/report.html",
    "/２０２４-05-10/report.html",  # non-ASCII digits
    "/notes/report.html",
]
RAW_PATHS = [
    ("..", "secret.txt"),
    (DS, "../../outside/secret.txt"),
    (DS, "/etc/passwd"),
    ("/tmp", "report.html"),
    (DS, "report.html/.."),
    (DS, "esl_id_part_9.csv"),
    ("2024-05-12", "report.html"),
]
PROTECTED = ["/", f"/{DS}/esl_id_part_1.csv", f"/{DS}/report.html", f"/{DS}/_manifest.json"]


@pytest.fixture(scope="module")
def auth_manager(airflow_db: str) -> Any:
    """The configured auth manager (the simple one), initialised as the api-server does."""
    from airflow.api_fastapi.app import create_auth_manager

    manager = create_auth_manager()
    manager.init()
    return manager


def _token(manager: Any, role: str | None = "viewer", **kwargs: Any) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return str(manager.generate_jwt(SimpleAuthManagerUser(username="someone", role=role), **kwargs))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output root with one published run, a run in progress, clutter, and symlinks leading out."""
    base = tmp_path_factory.mktemp("plugin")
    root = base / "esl_export"
    fleet = build_fleet(servers=2, stores=3, esls=60, seed=5, reference_ms=ANCHOR_MS)
    publish_run(root, DS, fleet, ["esl_a", "esl_b"])
    (root / DS / "_SUCCESS").write_text("", encoding="utf-8")
    (root / "2024-05-11" / "_parts").mkdir(parents=True)  # fetch still running: no manifest yet
    (root / "notes").mkdir()  # not a date: never listed
    outside = base / "outside"
    (outside / DS).mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET, encoding="utf-8")
    (outside / DS / "report.html").write_text(SECRET, encoding="utf-8")
    (root / "2024-05-12").symlink_to(outside / DS)  # a date folder leading out of the root
    (root / DS / "esl_id_part_9.csv").symlink_to(outside / "secret.txt")  # a published name leading out
    (root / DS / "esl_id_part_8.csv").symlink_to(root / DS / "esl_id_part_1.csv")  # inside: fine
    (root / DS / "_parts" / "batch-0.arrow").parent.mkdir(exist_ok=True)
    (root / DS / "_parts" / "batch-0.arrow").write_text(SECRET, encoding="utf-8")
    return root


@pytest.fixture
def client(tree: Path) -> Iterator[TestClient]:
    with TestClient(create_app(output_root=lambda: tree)) as test_client:
        yield test_client


@pytest.fixture
def viewer(auth_manager: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(auth_manager)}"}


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROTECTED)
def test_anonymous_requests_are_refused(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert SECRET not in response.text and "esl_id" not in response.text
    assert response.headers["cache-control"] == "no-store"


def test_anonymous_browser_gets_a_login_link(client: TestClient, auth_manager: Any) -> None:
    response = client.get("/", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert f'href="{auth_manager.get_url_login()}" target="_top"' in response.text


@pytest.mark.parametrize(
    ("credentials", "status"),
    [
        ({"Authorization": "Bearer not-a-jwt"}, 403),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),  # no bearer and no cookie: anonymous
        ({"Cookie": "_token=not-a-jwt"}, 403),
    ],
)
def test_invalid_credentials_are_refused(
    client: TestClient, credentials: dict[str, str], status: int
) -> None:
    assert client.get("/", headers=credentials).status_code == status


def test_expired_revoked_and_foreign_tokens_are_refused(client: TestClient, auth_manager: Any) -> None:
    import jwt

    expired = _token(auth_manager, expiration_time_in_seconds=-3600)
    assert client.get("/", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    revoked = _token(auth_manager)
    assert client.get("/", headers={"Authorization": f"Bearer {revoked}"}).status_code == 200
    auth_manager.revoke_token(revoked)
    assert client.get("/", headers={"Authorization": f"Bearer {revoked}"}).status_code == 403
    claims = jwt.decode(_token(auth_manager), options={"verify_signature": False})
    forged = jwt.encode(claims, "a-key-the-server-never-issued-" + "x" * 40, algorithm="HS512")
    assert client.get("/", headers={"Authorization": f"Bearer {forged}"}).status_code == 403


def test_a_user_without_dag_access_is_refused(client: TestClient, auth_manager: Any) -> None:
    no_role = _token(auth_manager, role=None)  # authenticated, but may read no DAG
    response = client.get("/", headers={"Authorization": f"Bearer {no_role}"})
    assert response.status_code == 403
    assert "esl_export" in response.json()["detail"]


def test_the_ui_cookie_is_accepted(client: TestClient, auth_manager: Any) -> None:
    client.cookies.set("_token", _token(auth_manager))
    assert client.get("/").status_code == 200


# --- listing and downloads ----------------------------------------------------------------------


def test_listing_shows_dates_status_rows_and_links(
    client: TestClient, viewer: dict[str, str], tree: Path
) -> None:
    response = client.get("/", headers=viewer)
    assert response.status_code == 200
    html = response.text
    manifest = json.loads((tree / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert [d for d in ("2024-05-12", "2024-05-11", DS) if f"<b>{d}</b>" in html] == ["2024-05-11", DS]
    assert "notes" not in html
    assert "incomplete: no manifest yet" in html
    row = html[html.index(f"<b>{DS}</b>") :]
    assert ">complete<" in row
    assert f'<td class="num">{manifest["rows"]:,}</td>' in row
    assert f'href="{DS}/report.html"' in row and f'href="{DS}/_manifest.json"' in row
    for part in manifest["partitions"]:
        assert f'href="{DS}/{part["file"]}" download' in row
        assert f"{part['rows']:,} rows" in row
    assert "esl_id_part_9.csv" not in html  # its symlink leads out of the root
    assert "esl_id_part_8.csv" in html  # a symlink inside the root is fine
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_downloads_serve_the_published_bytes(client: TestClient, viewer: dict[str, str], tree: Path) -> None:
    csv = client.get(f"/{DS}/esl_id_part_1.csv", headers=viewer)
    assert csv.status_code == 200
    assert csv.content == (tree / DS / "esl_id_part_1.csv").read_bytes()
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.headers["content-disposition"].startswith("attachment;")
    assert f"{DS}_esl_id_part_1.csv" in csv.headers["content-disposition"]
    report = client.get(f"/{DS}/report.html", headers=viewer)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert report.headers["x-content-type-options"] == "nosniff"
    assert "<svg " in report.text
    manifest = client.get(f"/{DS}/_manifest.json", headers=viewer)
    assert manifest.json()["date"] == DS


# --- traversal ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_and_unpublished_names_are_not_found(
    client: TestClient, viewer: dict[str, str], path: str
) -> None:
    response = client.get(path, headers=viewer)
    assert response.status_code == 404
    assert SECRET not in response.text


@pytest.mark.parametrize(("ds", "name"), RAW_PATHS)
def test_published_file_refuses_raw_paths(tree: Path, ds: str, name: str) -> None:
    """The same rules without HTTP in between (no URL normalisation to hide behind)."""
    with pytest.raises(HTTPException) as refused:
        published_file(tree, ds, name)
    assert refused.value.status_code == 404


def test_a_symlink_inside_the_root_is_served(tree: Path) -> None:
    assert published_file(tree, DS, "esl_id_part_8.csv") == (tree / DS / "esl_id_part_1.csv").resolve()


# --- configuration and registration -------------------------------------------------------------


def test_output_root_comes_from_the_variable(
    monkeypatch: pytest.MonkeyPatch, tree: Path, viewer: dict[str, str]
) -> None:
    from esl_operators.web import configured_output_root

    monkeypatch.setenv("AIRFLOW_VAR_ESL_OUTPUT_ROOT", tree.as_uri())
    assert configured_output_root() == tree.resolve()
    with TestClient(create_app()) as default_client:
        assert f"<b>{DS}</b>" in default_client.get("/", headers=viewer).text
    # An object-storage URL is browsed as such (tests/test_view_s3.py), never taken for a local path.
    monkeypatch.setenv("AIRFLOW_VAR_ESL_OUTPUT_ROOT", "s3://bucket/esl")
    root = configured_output_root()
    assert not isinstance(root, Path)
    assert (root.protocol, root.path) == ("s3", "bucket/esl")


@pytest.mark.parametrize(
    ("text", "folder"),
    [
        ("my exports", "my exports"),
        ("上海 导出", "上海 导出"),
        ("50%", "50%"),
        # ObjectStoragePath keeps escapes literally: the tasks write a folder named "my%20exports"
        ("file://{base}/my%20exports", "my%20exports"),
        ("file://{base}/plain", "plain"),
    ],
)
def test_the_view_lists_the_folder_the_tasks_write(
    text: str, folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, viewer: dict[str, str]
) -> None:
    """Writer and view resolve ``output_root`` by one rule (config.output_root_path), file:// included."""
    from esl_operators.config import resolve_output_root
    from esl_operators.web import configured_output_root

    monkeypatch.chdir(tmp_path)
    text = text.format(base=tmp_path)
    written = resolve_output_root(text) / DS
    written.mkdir(parents=True)
    (written / "report.html").write_text("<p>report</p>", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]
    monkeypatch.setenv("AIRFLOW_VAR_ESL_OUTPUT_ROOT", text)
    assert configured_output_root() == tmp_path / folder
    with TestClient(create_app()) as default_client:
        assert default_client.get(f"/{DS}/report.html", headers=viewer).text == "<p>report</p>"


def test_plugin_registers_the_app_and_the_browse_entry() -> None:
    # Registered through the package's entry point: tests/test_install.py loads it as Airflow does.
    from esl_operators.plugin import EslExportsPlugin as plugin

    [app] = plugin.fastapi_apps
    assert app["url_prefix"] == "/esl-exports"
    assert not app["url_prefix"].startswith(("/api/v2", "/ui", "/execution", "/auth", "/pluginsv2"))
    [view] = plugin.external_views
    assert view["name"] == "ESL exports"
    assert view["category"] == "browse"
    assert view["href"] == "esl-exports/"  # relative to the UI's base URL
    assert view["url_route"] == "esl-exports"


def test_the_view_guards_the_dag_that_writes_the_output() -> None:
    assert load_dag().dag_id == DAG_ID  # require_reader asks Airflow about this id


HEAVY = ("matplotlib", "pandas", "pyarrow", "numpy")
_LOAD_PLUGIN = """
import importlib, json, sys
from pathlib import Path
module = importlib.import_module(sys.argv[1])  # what the airflow.plugins entry point loads
[app] = module.EslExportsPlugin.fastapi_apps
from esl_operators.web.app import listing_page
html = listing_page(Path(sys.argv[2]))
print(json.dumps({"loaded": sorted(m for m in sys.argv[3:] if m in sys.modules), "listing": len(html)}))
"""


def test_loading_the_plugin_imports_no_heavy_library(tree: Path) -> None:
    """Every Airflow process loads the plugin: it must not drag in the report's libraries."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_PLUGIN, "esl_operators.plugin", str(tree), *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loaded"] == []
    assert result["listing"] > 1000  # the listing rendered, in that same light process


def test_hostile_manifest_text_is_inert_in_the_listing_and_the_report(
    tmp_path: Path, viewer: dict[str, str]
) -> None:
    """Store codes and descriptions of the published labels, and the manifest's lists, are hostile
    text: the view serves the listing and the report with all of it as text, none as markup."""
    root = tmp_path / "esl_export"
    fleet = hostile_fleet(build_fleet(servers=2, stores=3, esls=60, seed=5, reference_ms=ANCHOR_MS))
    errors = [{"server": HOSTILE[0], "store": HOSTILE[1], "error": HOSTILE[2]}]
    publish_run(root, DS, fleet, ["esl_a", "esl_b"], errors=errors, skipped_ids=list(HOSTILE))
    with TestClient(create_app(output_root=lambda: root)) as hostile_client:
        listing = hostile_client.get("/", headers=viewer)
        report = hostile_client.get(f"/{DS}/report.html", headers=viewer)
    assert listing.status_code == report.status_code == 200
    assert "published with 1 error(s)" in listing.text
    assert_inert(listing.text)
    assert_inert(report.text)
    assert "&lt;img src=x onerror=alert(1)&gt;" in report.text
    places = Places(report.text)
    stores = {code for server in fleet.servers for code in server.real_stores}
    assert stores <= set(HOSTILE)  # stores=3: one empty, two with labels, per server
    shown = set(places.column("battery/Stores to visit first", "store"))
    assert shown and shown <= stores
    silent = "heartbeat/The 15 labels silent the longest"
    assert len(places.column(silent, "store")) == 15 and set(places.column(silent, "store")) <= stores
    assert set(places.column(silent, "description")) <= set(HOSTILE)
    named = {
        f"{code} ({name})"
        for server, name in zip(fleet.servers, ["esl_a", "esl_b"], strict=True)
        for code in server.real_stores
    }
    assert {clipped(n) for n in named} & set(places.charts["Stores with the most refreshes per label"])
    assert set(places.column("attention/Skipped ids", "value")) == set(HOSTILE)
    assert places.column("attention/Errors", "store") == [HOSTILE[1]]


# --- history files (issue 14) -------------------------------------------------------------------


def test_listing_shows_new_and_gone_and_serves_the_history_files(
    tmp_path: Path, viewer: dict[str, str]
) -> None:
    root = tmp_path / "esl_export"
    fleet = build_fleet(servers=1, stores=3, esls=30, seed=5, reference_ms=ANCHOR_MS)
    history = {
        "previous_date": "2024-05-09",
        "new": 1234,
        "gone": 7,
        "battery_drop": 0,
        "moved": 0,
        "firmware": 0,
    }
    publish_run(root, DS, fleet, ["esl_a"], history=history)
    publish_run(root, "2024-05-09", fleet, ["esl_a"])  # written before issue 14: no history block
    folder = root / DS
    files = {
        "_changes.csv": b"change,esl_id,server,store,previous,current\nnew,1,esl_a,S1,,\n",
        "_battery_forecast.csv": b"esl_id,server,store,battery,slope_per_day,days_left,forecast_date,"
        b"observations\n",
        "_snapshot.parquet": b"PAR1 not really, but served as is PAR1",
    }
    for name, body in files.items():
        (folder / name).write_bytes(body)
    outside = tmp_path / "outside.csv"
    outside.write_text(SECRET, encoding="utf-8")
    (root / "2024-05-09" / "_changes.csv").symlink_to(outside)  # a history name leading out of the root
    with TestClient(create_app(output_root=lambda: root)) as history_client:
        html = history_client.get("/", headers=viewer).text
        row = html[html.index(f"<b>{DS}</b>") : html.index("<b>2024-05-09</b>")]
        assert '<span class="new">new 1,234</span> · <span class="gone">gone 7</span>' in row
        for name in files:
            assert f'href="{DS}/{name}" download' in row
        older = html[html.index("<b>2024-05-09</b>") :]
        assert '<td class="num">' in older and "<td>–</td>" in older and "_changes.csv" not in older
        for name, body in files.items():
            got = history_client.get(f"/{DS}/{name}", headers=viewer)
            assert got.status_code == 200 and got.content == body
            assert got.headers["content-disposition"].startswith("attachment;")
            assert f'filename="{DS}{name}"' in got.headers["content-disposition"]
            assert got.headers["x-content-type-options"] == "nosniff"
        assert history_client.get(f"/{DS}/_changes.csv", headers=viewer).headers["content-type"] == (
            "text/csv; charset=utf-8"
        )
        snapshot = history_client.get(f"/{DS}/_snapshot.parquet", headers=viewer)
        assert snapshot.headers["content-type"] == "application/vnd.apache.parquet"
        refused = [
            "/2024-05-09/_changes.csv",  # symlink out of the root
            f"/{DS}/_changes.csv.tmp",
            f"/{DS}/.staging-0123/_changes.csv",
            f"/{DS}/_CHANGES.csv",
            "/2024-05-09/_battery_forecast.csv",  # not written for that date
        ]
        for path in refused:
            response = history_client.get(path, headers=viewer)
            assert response.status_code == 404, path
            assert SECRET not in response.text
        assert history_client.get(f"/{DS}/_changes.csv").status_code == 401  # login still required
