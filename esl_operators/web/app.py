"""The view's FastAPI app: the listing at ``/`` and the published files at ``/{ds}/{name}``.

Every route requires :func:`~esl_operators.web.access.require_reader`. The app builds no HTML by hand:
the listing and the refusal page are autoescaping templates (:mod:`esl_operators.templating`). A file is
answered with the same headers from a local folder (``FileResponse``) as from object storage (streamed
in chunks, :func:`esl_operators.web.files.chunks`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse

from esl_operators.storage import MANIFEST_NAME, REPORT_NAME, SNAPSHOT_NAME
from esl_operators.templating import render
from esl_operators.web.access import Refused, refused_page, require_reader
from esl_operators.web.files import (
    ViewRoot,
    chunks,
    configured_output_root,
    open_object,
    published_file,
    shown,
)
from esl_operators.web.runs import LISTED_DATES, list_runs

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

# The listing needs no script; the report has none either. Framing is allowed only by Airflow itself.
LISTING_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
_SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def listing_page(root: ViewRoot) -> str:
    """The listing of the run dates under ``root``."""
    return render(
        "listing.html",
        root=shown(root),
        runs=list_runs(root),
        limit=LISTED_DATES,
        report_name=REPORT_NAME,
        manifest_name=MANIFEST_NAME,
    )


def _root(request: Request) -> ViewRoot:
    root: ViewRoot = request.app.state.output_root()
    return root


Root = Annotated[Any, Depends(_root)]  # ViewRoot; FastAPI cannot build a model of the SDK's path


def attachment(filename: str) -> str:
    """``Content-Disposition`` of a download; ``filename`` is ASCII (a run date and a published name)."""
    return f'attachment; filename="{filename}"'


def object_response(target: ObjectStoragePath, media_type: str, headers: dict[str, str]) -> Response:
    """``target`` streamed in chunks, with the headers ``FileResponse`` gives a local file."""
    handle, info = open_object(target)
    headers = {**headers, "Content-Length": str(info["size"])}
    modified = info.get("LastModified")  # S3's name; other stores say less, and then so do we
    if isinstance(modified, datetime):
        modified = modified if modified.tzinfo else modified.replace(tzinfo=UTC)
        headers["Last-Modified"] = format_datetime(modified.astimezone(UTC), usegmt=True)
    if info.get("ETag"):
        headers["ETag"] = str(info["ETag"])
    return StreamingResponse(chunks(handle, shown(target)), media_type=media_type, headers=headers)


def create_app(output_root: Callable[[], ViewRoot] = configured_output_root) -> FastAPI:
    """The sub-app the plugin mounts; ``output_root`` is resolved on every request (Variables change)."""
    app = FastAPI(
        title="ESL exports",
        dependencies=[Depends(require_reader)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        exception_handlers={Refused: refused_page},
    )
    app.state.output_root = output_root

    @app.get("/", response_class=HTMLResponse)
    def listing(root: Root) -> HTMLResponse:
        headers = {**_SAFE_HEADERS, "Content-Security-Policy": LISTING_CSP, "Cache-Control": "no-store"}
        return HTMLResponse(listing_page(root), headers=headers)

    @app.get("/{ds}/{name}")
    def download(ds: str, name: str, root: Root) -> Response:
        target = published_file(root, ds, name)
        headers = {**_SAFE_HEADERS, "Cache-Control": "private, no-cache"}
        if name == REPORT_NAME:
            headers["Content-Security-Policy"] = REPORT_CSP
            media_type = "text/html; charset=utf-8"
        elif name == MANIFEST_NAME:
            media_type = "application/json"
        else:
            # Saved as e.g. 2024-05-10_esl_id_part_1.csv, 2024-05-10_changes.csv: the date stays with it.
            saved_as = f"{ds}{name}" if name.startswith("_") else f"{ds}_{name}"
            headers["Content-Disposition"] = attachment(saved_as)
            parquet = name == SNAPSHOT_NAME
            media_type = "application/vnd.apache.parquet" if parquet else "text/csv; charset=utf-8"
        if isinstance(target, Path):
            return FileResponse(target, media_type=media_type, headers=headers)
        return object_response(target, media_type, headers)

    return app
