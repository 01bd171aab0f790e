"""Who may use the view: a logged-in Airflow user allowed to read the ``esl_export`` DAG.

Airflow does not protect plugin sub-apps, so :func:`require_reader` does it with Airflow's own token
validation. Airflow imports are local: the plugin module is loaded by every Airflow process, the
api-server parts only matter in the api-server.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from esl_operators.config import DAG_ID
from esl_operators.templating import render

# The refusal page needs no script. Framing is allowed only by Airflow itself.
REFUSED_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"


class Refused(HTTPException):
    """401/403 from :func:`require_reader`; a browser gets a page with a way back to the login."""


async def refused_page(request: Request, exc: Exception) -> Response:
    """The app's handler for :class:`Refused`: JSON for API clients, a login link for browsers."""
    assert isinstance(exc, Refused)
    headers = {**(exc.headers or {}), "Cache-Control": "no-store"}
    if "text/html" not in request.headers.get("Accept", ""):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
    from airflow.api_fastapi.app import get_auth_manager

    page = render("refused.html", detail=exc.detail, login=get_auth_manager().get_url_login())
    headers["Content-Security-Policy"] = REFUSED_CSP
    return HTMLResponse(page, status_code=exc.status_code, headers=headers)


async def require_reader(request: Request) -> Any:
    """The Airflow user behind the request's JWT; 401/403 unless logged in and allowed to read the DAG.

    Same credential order as the core API's ``get_user``: an ``Authorization: Bearer`` header, else the
    ``_token`` cookie the UI's login sets. The token is checked by the configured auth manager (signature,
    expiry, revocation), and the user must be allowed to read the ``esl_export`` DAG, whose output this is.
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
