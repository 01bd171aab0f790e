"""Airflow plugin: "ESL exports" under Browse, listing run dates with their report and CSV files.

Registered by the package's ``airflow.plugins`` entry point (pyproject.toml), so installing esl-export
is enough; nothing is copied into a plugins folder (which would register it a second time).

The view is a FastAPI sub-app mounted by the api-server at ``/esl-exports``; the nav entry embeds it
in the Airflow UI (``url_route``). Access control lives in the sub-app itself
(:func:`esl_operators.web.require_reader`), since Airflow leaves plugin apps unprotected.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from esl_operators.config import VIEW_URL_PREFIX
from esl_operators.web import create_app

URL_PREFIX = VIEW_URL_PREFIX


class EslExportsPlugin(AirflowPlugin):
    name = "esl_exports"
    fastapi_apps = [  # noqa: RUF012 - AirflowPlugin declares these as class attributes
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "ESL exports"},
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "ESL exports",
            # Relative to the UI's base URL, so it works under a path prefix too; trailing slash so the
            # listing's relative links resolve inside the app.
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "esl-exports",
            "category": "browse",
            "destination": "nav",
        },
    ]
