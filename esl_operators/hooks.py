"""Turn Airflow ``http`` connections into :class:`~esl_operators.client.ServerTarget` objects.

Connection handling (host/schema/port into a base URL, login/password into basic auth, extras into
headers and request options) is providers-http's ``HttpAsyncHook``; we only read what it resolved.
Resolution happens once, in the task's main thread, before any worker thread starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.providers.http.hooks.http import HttpAsyncHook

from esl_operators.client import ServerTarget
from esl_operators.exceptions import ConfigError
from esl_operators.settings import parse_bool

# Extras of ours that the hook would otherwise pass through as request headers.
OWN_EXTRAS = ("connect_timeout",)


def _seconds(conn_id: str, key: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"connection {conn_id!r}: extra {key!r} must be a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"connection {conn_id!r}: extra {key!r} must be positive")
    return seconds


def _verify(conn_id: str, value: Any) -> tuple[bool, str | None]:
    """Extra "verify" (requests' convention, also "verify_ssl"): a boolean, or the path of a CA bundle."""
    try:
        return parse_bool(value, f"connection {conn_id!r}: extra 'verify'"), None
    except ConfigError:
        if isinstance(value, str) and value.strip():
            return True, value
        raise


async def _resolve(conn_id: str) -> ServerTarget:
    config = await HttpAsyncHook(method="GET", http_conn_id=conn_id).config()
    options = config.extra_options or {}
    raw_headers = dict(config.headers or {})
    own = {key: raw_headers.pop(key, None) for key in OWN_EXTRAS}
    # The hook passes unknown extras through as headers; headers must be strings on the wire.
    headers = {str(k): str(v) for k, v in raw_headers.items()}
    verify_ssl, ca_bundle = _verify(conn_id, options.get("verify_ssl", True))
    try:
        return ServerTarget(
            name=conn_id,
            base_url=config.base_url,
            headers=headers,
            auth=config.auth,
            verify_ssl=verify_ssl,
            ca_bundle=ca_bundle,
            timeout_s=_seconds(conn_id, "timeout", options.get("timeout")),
            connect_timeout_s=_seconds(conn_id, "connect_timeout", own["connect_timeout"]),
        )
    except ValueError as exc:
        raise ConfigError(f"connection {conn_id!r}: {exc}") from None


async def _resolve_all(conn_ids: Sequence[str]) -> list[ServerTarget]:
    return [await _resolve(conn_id) for conn_id in conn_ids]


def resolve_targets(conn_ids: Sequence[str]) -> list[ServerTarget]:
    """Resolve connection ids (in order) into server targets; a missing connection names itself."""
    return asyncio.run(_resolve_all(conn_ids))
