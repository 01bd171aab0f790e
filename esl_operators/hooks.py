"""Turn Airflow ``http`` connections into :class:`~esl_operators.client.ServerTarget` objects.

Connection handling (host/schema/port into a base URL, login/password into basic auth, extras into
headers and request options) is providers-http's ``HttpAsyncHook``; we only read what it resolved.
Resolution happens once, in the task's main thread, before any worker thread starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from airflow.providers.http.hooks.http import HttpAsyncHook

from esl_operators.client import ServerTarget
from esl_operators.exceptions import ConfigError


async def _resolve(conn_id: str) -> ServerTarget:
    config = await HttpAsyncHook(method="GET", http_conn_id=conn_id).config()
    options = config.extra_options or {}
    # The hook passes unknown extras through as headers; headers must be strings on the wire.
    headers = {str(k): str(v) for k, v in (config.headers or {}).items()}
    verify = options.get("verify_ssl", True)
    try:
        return ServerTarget(
            name=conn_id,
            base_url=config.base_url,
            headers=headers,
            auth=config.auth,
            verify_ssl=str(verify).lower() not in ("false", "0", "no"),
        )
    except ValueError as exc:
        raise ConfigError(f"connection {conn_id!r}: {exc}") from None


async def _resolve_all(conn_ids: Sequence[str]) -> list[ServerTarget]:
    return [await _resolve(conn_id) for conn_id in conn_ids]


def resolve_targets(conn_ids: Sequence[str]) -> list[ServerTarget]:
    """Resolve connection ids (in order) into server targets; a missing connection names itself."""
    return asyncio.run(_resolve_all(conn_ids))
