"""The view's FastAPI app: the listing at ``/`` and the published files at ``/{ds}/{name}``.

Every route requires :func:`~esl_operators.web.access.require_reader`. The app builds no HTML by hand:
the listing and the refusal page are autoescaping templates (:mod:`esl_operators.templating`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from esl_operators.storage import MANIFEST_NAME, REPORT_NAME, SNAPSHOT_NAME
from esl_operators.templating import render
from esl_operators.web.access import Refused, refused_page, require_reader
from esl_operators.web.files import configured_output_root, published_file
from esl_operators.web.runs import LISTED_DATES, list_runs

# The listing needs no script; the report has none either. Framing is allowed only by Airflow itself.
LISTING_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
_SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def listing_page(root: Path) -> str:
    """The listing of the run dates under ``root``."""
    return render(
        "listing.html",
        root=root,
        runs=list_runs(root),
        limit=LISTED_DATES,
        report_name=REPORT_NAME,
        manifest_name=MANIFEST_NAME,
    )


def _root(request: Request) -> Path:
    root: Path = request.app.state.output_root()
    return root


Root = Annotated[Path, Depends(_root)]


def create_app(output_root: Callable[[], Path] = configured_output_root) -> FastAPI:
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
        path = published_file(root, ds, name)
        headers = {**_SAFE_HEADERS, "Cache-Control": "private, no-cache"}
        if name == REPORT_NAME:
            headers["Content-Security-Policy"] = REPORT_CSP
            return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)
        if name == MANIFEST_NAME:
            return FileResponse(path, media_type="application/json", headers=headers)
        # Saved as e.g. 2024-05-10_esl_id_part_1.csv, 2024-05-10_changes.csv: the date stays with the file.
        filename = f"{ds}{name}" if name.startswith("_") else f"{ds}_{name}"
        if name == SNAPSHOT_NAME:
            media = "application/vnd.apache.parquet"
            return FileResponse(path, media_type=media, filename=filename, headers=headers)
        return FileResponse(path, media_type="text/csv; charset=utf-8", filename=filename, headers=headers)

    return app
