"""The one Jinja2 environment for every HTML page we produce: the fleet report and the web view.

Autoescape is on for every template. One escaping rule is applied to every ``{{ value }}`` through
:func:`as_html` (Jinja2's ``finalize``), so published reports keep the bytes they always had:
``html.escape`` (quotes as ``&quot;``/``&#x27;``), ``None`` as nothing, lists and dicts as compact
JSON. Only values that are already markup (:class:`markupsafe.Markup`, e.g. a chart SVG that matplotlib
wrote and escaped itself) pass through unchanged; nothing else can.

Templates are package data (``esl_operators/templates``), found through the import system, so they are
there in an installed wheel as in a checkout. Light on purpose: the api-server imports this.
"""

from __future__ import annotations

import functools
import html
import json
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

TEMPLATES = "templates"


def as_html(value: Any) -> Any:
    """Any value as HTML text: escaped, nested structures as compact JSON; markup passes through."""
    if value is None:
        return ""
    if hasattr(value, "__html__"):
        return value
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return Markup(html.escape(str(value), quote=True))


@functools.cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("esl_operators", TEMPLATES),
        autoescape=True,
        finalize=as_html,
        undefined=StrictUndefined,  # a misspelt name fails the render instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    """Render one of the package's templates."""
    return environment().get_template(template).render(**context)
