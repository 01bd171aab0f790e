"""The package as an Airflow provider: the ``esl_working`` connection type and its form.

Airflow finds :func:`get_provider_info` through the ``apache_airflow_provider`` entry point
(pyproject.toml), so ``airflow providers list`` shows esl-export and the UI offers "Hanshow ESL-Working"
as a connection type, backed by :class:`esl_operators.hooks.EslWorkingHook`. The form is declared here,
as data (``ui-field-behaviour`` and ``conn-fields``, the convention since Airflow 3.2, which reads them
without importing the hook); the hook hands the same data to older Airflow 3 releases through
``get_ui_field_behaviour``. This module imports nothing: the providers manager loads it in every
Airflow process.
"""

from __future__ import annotations

import copy
from typing import Any

CONN_TYPE = "esl_working"
HOOK_NAME = "Hanshow ESL-Working"
HOOK_CLASS = "esl_operators.hooks.EslWorkingHook"

#: Extra keys the form edits as fields of their own (they land in the connection's extra JSON, where
#: ``airflow connections add --conn-extra`` puts them too). Other extra keys become request headers.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "timeout": {
        "label": "Request timeout (s)",
        "description": "Total time for one request attempt; empty: the run's request_timeout_s (60).",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
    "connect_timeout": {
        "label": "Connect timeout (s)",
        "description": "Time to open a connection; empty: the run's connect_timeout_s (10).",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
    "verify": {
        "label": "Verify TLS certificate",
        "description": "For https: check the server's certificate (turn off only for a lab server).",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "ca_bundle": {
        "label": "CA bundle",
        "description": "For https with a private CA: path of a PEM file on the workers.",
        "schema": {"type": ["string", "null"]},
    },
}

#: Every standard field applies (description too); ``schema`` holds the URL scheme, hence its label.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": [],
    "relabeling": {"schema": "Scheme"},
    "placeholders": {
        "host": "10.1.2.3 or esl.example.com",
        "port": "9000",
        "schema": "http or https (default http)",
        "login": "API user, if the server wants basic auth",
        "password": "API password (never logged)",
        "extra": '{"X-Tenant": "eu"} (other keys become request headers)',
    },
}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's providers manager (a fresh copy: the manager adds keys)."""
    return {
        "package-name": "esl-export",
        "name": "Hanshow ESL-Working (esl-export)",
        "description": "Exports Hanshow ESL-Working label data (HTTP API v3) to sorted CSV partitions.",
        "hooks": [{"integration-name": HOOK_NAME, "python-modules": ["esl_operators.hooks"]}],
        "operators": [{"integration-name": HOOK_NAME, "python-modules": ["esl_operators.operators"]}],
        "connection-types": [
            {
                "hook-class-name": HOOK_CLASS,
                "hook-name": HOOK_NAME,
                "connection-type": CONN_TYPE,
                "ui-field-behaviour": copy.deepcopy(UI_FIELD_BEHAVIOUR),
                "conn-fields": copy.deepcopy(CONN_FIELDS),
            }
        ],
    }


def python_field_behaviour() -> dict[str, Any]:
    """:data:`UI_FIELD_BEHAVIOUR` in the shape ``BaseHook.get_ui_field_behaviour`` returns."""
    return {key.replace("-", "_"): copy.deepcopy(value) for key, value in UI_FIELD_BEHAVIOUR.items()}
