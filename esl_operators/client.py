"""Async client for one ESL-Working server (HTTP API v3).

One :class:`EslClient` per server per thread: it owns no event loop and no session of its own, the
caller passes the ``aiohttp.ClientSession`` and the semaphore created in that thread's loop, so nothing
asyncio-bound is ever shared across threads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from esl_operators.exceptions import EnvelopeError, EslApiError
from esl_operators.redaction import redact_url

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)
DEFAULT_STORE = "default"


@dataclass(frozen=True)
class ServerTarget:
    """Where and how to reach one server. ``name`` is what rows and manifests call it."""

    name: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: aiohttp.BasicAuth | None = field(default=None, repr=False)
    verify_ssl: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"server {self.name!r}: base URL must start with http:// or https://")
        try:
            url = URL(self.base_url)
            _ = url.port  # yarl validates the port lazily; a bad one must fail here, not mid-fetch
        except ValueError as exc:
            raise ValueError(f"server {self.name!r}: unusable base URL ({exc})") from None
        if not url.host:
            raise ValueError(f"server {self.name!r}: base URL has no host")

    @property
    def display(self) -> str:
        """A name safe for logs: the connection id plus the redacted URL."""
        return f"{self.name} ({redact_url(self.base_url)})"


@dataclass(frozen=True)
class Page:
    store: str
    number: int
    total_pages: int
    entries: list[Any]


def segment(value: str) -> str:
    """Percent-encode one path segment taken from server data (store code, ESL id)."""
    return quote(value, safe="")


def unwrap(payload: Any, server: str, what: str) -> Any:
    """Return ``data`` from an API v3 envelope, or raise the server's own error message.

    Builds differ: some signal errors with ``status_no``/``message``, others with
    ``error_code``/``error_msg``. A non-zero value in either is an error.
    """
    if not isinstance(payload, dict):
        raise EslApiError(server, what, f"response is a JSON {type(payload).__name__}, not an object")
    for code_key, message_key in (("status_no", "message"), ("error_code", "error_msg")):
        code = payload.get(code_key)
        if code not in (None, 0, "0"):
            message = payload.get(message_key) or "no message"
            raise EnvelopeError(server, what, f"server error {code_key}={code}: {message}")
    if "data" not in payload:
        raise EslApiError(server, what, "response has no 'data'")
    return payload["data"]


class EslClient:
    """The three API calls the export needs, each under the server's concurrency limit."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: ServerTarget,
        limiter: asyncio.Semaphore,
        *,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._session = session
        self._target = target
        self._limiter = limiter
        self._timeout = timeout
        self._base = target.base_url.rstrip("/")
        # aiohttp deprecates auth=; the header carries the same credentials and is never logged.
        self._headers = dict(target.headers)
        if target.auth is not None:
            self._headers["Authorization"] = target.auth.encode()

    @property
    def server(self) -> str:
        return self._target.name

    async def get_data(self, path: str, what: str) -> Any:
        """GET ``path`` (already encoded) and return the envelope's ``data``."""
        url = URL(self._base + path, encoded=True)
        async with self._limiter:
            try:
                async with self._session.get(
                    url,
                    headers=self._headers,
                    timeout=self._timeout,
                    ssl=None if self._target.verify_ssl else False,
                ) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}".replace(self._target.base_url, "")
                raise EslApiError(self.server, what, f"request failed ({reason})") from None
        if status != 200:
            raise EslApiError(self.server, what, f"HTTP {status}: {_snippet(body)}", status=status)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EslApiError(self.server, what, f"body is not JSON: {_snippet(body)}") from None
        return unwrap(payload, self.server, what)

    async def list_stores(self) -> list[str]:
        """Store codes of the server, in server order, without the ``default`` store."""
        data = await self.get_data("/api3/users", "list stores")
        if not isinstance(data, list):
            raise EslApiError(self.server, "list stores", f"'data' is a {type(data).__name__}, not a list")
        stores: list[str] = []
        for entry in data:
            code = entry.get("user") if isinstance(entry, dict) else None
            if not isinstance(code, str) or not code:
                raise EslApiError(self.server, "list stores", f"entry without a store code: {entry!r:.120}")
            if code != DEFAULT_STORE and code not in stores:
                stores.append(code)
        return stores

    async def get_page(self, store: str, number: int) -> Page:
        what = f"store {store!r} page {number}"
        data = await self.get_data(f"/api3/{segment(store)}/esls/page/{number}", what)
        if not isinstance(data, dict):
            raise EslApiError(self.server, what, f"'data' is a {type(data).__name__}, not an object")
        total = data.get("total_page")
        entries = data.get("esls")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise EslApiError(self.server, what, f"total_page is not a count: {total!r:.60}")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise EslApiError(self.server, what, f"'esls' is a {type(entries).__name__}, not a list")
        return Page(store=store, number=number, total_pages=total, entries=entries)

    async def get_detail(self, esl_id: str) -> Any:
        return await self.get_data(f"/api3/esls/{segment(esl_id)}", f"ESL {esl_id!r}")


def _snippet(body: bytes, limit: int = 120) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ")
    return repr(text) + ("..." if len(body) > limit else "")
