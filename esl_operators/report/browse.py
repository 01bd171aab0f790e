"""Read-only web view of the published run dates, mounted into the Airflow api-server by the plugin.

Serves nothing but the published files of plain run dates: ``{root}/{YYYY-MM-DD}/`` and, inside it,
``esl_id_part_N.csv``, ``report.html`` and ``_manifest.json``. Names are checked against those
patterns before any path is built, and the resolved file (symlinks followed) must still lie inside the
output root. Every route requires a logged-in Airflow user who may read the ``esl_export`` DAG:
Airflow does not protect plugin sub-apps, so :func:`require_reader` does it with Airflow's own token
validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from esl_operators.config import DEFAULT_OUTPUT_ROOT, OUTPUT_ROOT_VARIABLE
from esl_operators.report import REPORT_NAME
from esl_operators.report.page import esc
from esl_operators.report.style import CSS
from esl_operators.storage import MANIFEST_NAME, as_local_root

DAG_ID = "esl_export"
SUCCESS_MARKER = "_SUCCESS"
LISTED_DATES = 120
# ASCII digits only: ``\d`` would also accept other scripts' digits.
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
PUBLISHED = re.compile(r"esl_id_part_[1-9][0-9]{0,5}\.csv|report\.html|_manifest\.json", re.ASCII)
_PART_NUMBER = re.compile(r"esl_id_part_([0-9]+)\.csv", re.ASCII)

# The listing needs no script; the report has none either. Framing is allowed only by Airflow itself.
LISTING_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
_SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def configured_output_root() -> Path:
    """The Variable ``esl_output_root`` (else ``./data/esl_export``), read the way the api-server can.

    ``esl_operators.config.resolve_output_root`` goes through the Task SDK, which only sees Variables
    inside a task; here the metadata database (and secrets backends, and ``AIRFLOW_VAR_*``) are read
    directly.
    """
    from airflow.models import Variable

    root = Variable.get(OUTPUT_ROOT_VARIABLE, default_var=None) or DEFAULT_OUTPUT_ROOT
    if root.startswith("file://"):
        root = unquote(urlparse(root).path)
    elif "://" in root:
        raise HTTPException(
            501, f"browsing an object-storage output root ({root.split('://')[0]}://) is not supported"
        )
    return as_local_root(root)


class Refused(HTTPException):
    """401/403 from :func:`require_reader`; a browser gets a page with a way back to the login."""


async def _refused_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    headers = {**(exc.headers or {}), "Cache-Control": "no-store"}
    if "text/html" not in request.headers.get("Accept", ""):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
    from airflow.api_fastapi.app import get_auth_manager

    login = get_auth_manager().get_url_login()
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ESL exports</title>'
        f"<style>{CSS}</style></head><body><main><section class=alert><h2>{esc(exc.detail)}</h2>"
        f'<p>Log in to Airflow to see the ESL exports: <a href="{esc(login)}" target="_top">log in</a>.</p>'
        "</section></main></body></html>"
    )
    headers["Content-Security-Policy"] = LISTING_CSP
    return HTMLResponse(page, status_code=exc.status_code, headers=headers)


async def require_reader(request: Request) -> Any:
    """The Airflow user behind the request's JWT; 401/403 unless logged in and allowed to read the DAG.

    Same credential order as the core API's ``get_user``: an ``Authorization: Bearer`` header, else the
    ``_token`` cookie the UI's login sets. The token is checked by the configured auth manager (signature,
    expiry, revocation), and the user must be allowed to read the ``esl_export`` DAG, whose output this is.
    Imports are local: the plugin module is loaded by every Airflow process, the api-server parts only
    matter in the api-server.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    try:
        user = await resolve_user_from_token(token)
    except HTTPException as exc:
        raise Refused(exc.status_code, str(exc.detail)) from None
    manager = get_auth_manager()
    allowed = await run_in_threadpool(
        manager.is_authorized_dag, method="GET", details=DagDetails(id=DAG_ID), user=user
    )
    if not allowed:
        raise Refused(403, f"not allowed to read the {DAG_ID} DAG's output")
    return user


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None


def _inside(base: Path, candidate: Path) -> Path | None:
    """``candidate`` with every symlink resolved, or None if that leaves ``base`` or does not exist.

    ``base`` must itself be resolved already (the output root may legitimately be a symlink).
    """
    resolved = _resolved(candidate)
    return resolved if resolved is not None and resolved.is_relative_to(base) else None


def published_file(root: Path, ds: str, name: str) -> Path:
    """The published file ``name`` of run date ``ds``; 404 for anything else."""
    if not DATE.fullmatch(ds) or not PUBLISHED.fullmatch(name):
        raise HTTPException(404, "not a published file")
    base = _resolved(root)
    target = _inside(base, base / ds / name) if base else None
    if target is None or not target.is_file():
        raise HTTPException(404, "not a published file")
    return target


def _runs(root: Path) -> list[dict[str, Any]]:
    base = _resolved(root)
    if base is None or not base.is_dir():
        return []
    runs = []
    dates = sorted((p.name for p in base.iterdir() if DATE.fullmatch(p.name)), reverse=True)
    for ds in dates[:LISTED_DATES]:
        folder = _inside(base, base / ds)
        if folder is not None and folder.is_dir():
            runs.append(_run(base, ds, folder))
    return runs


def _run(base: Path, ds: str, folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = {}
    problem = ""
    manifest_path = _inside(base, folder / MANIFEST_NAME)
    if manifest_path is not None:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # half-written by hand, or not JSON: say so, list the rest
            problem = f"unreadable manifest: {exc}"
    parts = sorted(
        (
            p.name
            for p in folder.glob("esl_id_part_*.csv")
            if PUBLISHED.fullmatch(p.name) and _inside(base, p)
        ),
        key=lambda n: int(_PART_NUMBER.fullmatch(n).group(1)),  # type: ignore[union-attr]
    )
    rows_by_file = {
        p.get("file"): p.get("rows") for p in manifest.get("partitions", []) if isinstance(p, dict)
    }
    errors = manifest.get("errors") or []
    if problem:
        status = problem
    elif not manifest:
        status = "incomplete: no manifest yet"
    elif errors:
        status = f"published with {len(errors)} error(s)"
    elif _inside(base, folder / SUCCESS_MARKER) is not None:
        status = "complete"
    else:
        status = "published"
    return {
        "date": ds,
        "status": status,
        "ok": not problem and bool(manifest) and not errors,
        "rows": manifest.get("rows"),
        "parts": [(name, rows_by_file.get(name)) for name in parts],
        "report": _inside(base, folder / REPORT_NAME) is not None,
        "manifest": manifest_path is not None,
    }


def _listing(root: Path, runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        ds = esc(run["date"])
        parts = "".join(
            f'<li><a href="{ds}/{esc(name)}" download>{esc(name)}</a>'
            + (f' <span class="note">{rows:,} rows</span>' if isinstance(rows, int) else "")
            + "</li>"
            for name, rows in run["parts"]
        )
        parts = f'<ul class="files">{parts}</ul>' if parts else "–"
        report = (
            f'<a href="{ds}/report.html">open</a> <a href="{ds}/report.html" target="_blank">new tab</a>'
            if run["report"]
            else '<span class="note">none</span>'
        )
        manifest = f'<a href="{ds}/_manifest.json">manifest</a>' if run["manifest"] else ""
        labels = f"{run['rows']:,}" if isinstance(run["rows"], int) else "–"
        state = "good" if run["ok"] else "bad"
        rows.append(
            f'<tr><td><b>{ds}</b></td><td class="{state}">{esc(run["status"])}</td>'
            f'<td class="num">{labels}</td><td>{report}</td><td>{parts}</td><td>{manifest}</td></tr>'
        )
    body = (
        "<table><thead><tr><th>run date</th><th>status</th><th class=num>labels</th><th>report</th>"
        f"<th>CSV partitions (download)</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else f'<p class="note">No run dates under {esc(root)} yet.</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ESL exports</title>'
        f"<style>{CSS} td.good {{ color: var(--green); }} td.bad {{ color: var(--red); font-weight: 600; }}"
        " a { margin-right: 10px; } ul.files { margin: 0; padding: 0; list-style: none; }</style>"
        "</head><body><main><header>"
        '<p class="kicker">esl-export</p><h1>ESL exports</h1>'
        f"<p>Run dates published under <code>{esc(root)}</code>, newest first"
        f" (at most {LISTED_DATES}).</p></header><section>{body}</section></main></body></html>"
    )


def _root(request: Request) -> Path:
    return request.app.state.output_root()


Root = Annotated[Path, Depends(_root)]


def create_app(output_root: Callable[[], Path] = configured_output_root) -> FastAPI:
    """The sub-app the plugin mounts; ``output_root`` is resolved on every request (Variables change)."""
    app = FastAPI(
        title="ESL exports",
        dependencies=[Depends(require_reader)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        exception_handlers={Refused: _refused_page},
    )
    app.state.output_root = output_root

    @app.get("/", response_class=HTMLResponse)
    def listing(root: Root) -> HTMLResponse:
        headers = {**_SAFE_HEADERS, "Content-Security-Policy": LISTING_CSP, "Cache-Control": "no-store"}
        return HTMLResponse(_listing(root, _runs(root)), headers=headers)

    @app.get("/{ds}/{name}")
    def download(ds: str, name: str, root: Root) -> Response:
        path = published_file(root, ds, name)
        headers = {**_SAFE_HEADERS, "Cache-Control": "private, no-cache"}
        if name == REPORT_NAME:
            headers["Content-Security-Policy"] = REPORT_CSP
            return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)
        if name == MANIFEST_NAME:
            return FileResponse(path, media_type="application/json", headers=headers)
        return FileResponse(
            path, media_type="text/csv; charset=utf-8", filename=f"{ds}_{name}", headers=headers
        )

    return app
