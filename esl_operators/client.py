"""Async client for one ESL-Working server (HTTP API v3).

One :class:`EslClient` per server per thread: it owns no event loop and no session of its own, the
caller passes the ``aiohttp.ClientSession`` and the semaphore created in that thread's loop, so nothing
asyncio-bound is ever shared across threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from esl_operators.exceptions import (
    AuthError,
    EnvelopeError,
    EslApiError,
    NotFoundError,
    RetryableError,
)
from esl_operators.limiter import AdaptiveLimiter
from esl_operators.redaction import redact_url, redact_url_text
from esl_operators.retry import RetryPolicy, parse_retry_after
from esl_operators.settings import default

DEFAULT_STORE = "default"
# Answers that mean "too much at once": the adaptive limiter backs off on these (and on timeouts).
OVERLOAD_STATUSES = frozenset({429, 503, 504})
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportSettings:
    """Timeouts, body cap and retry policy shared by every request of a run.

    :param timeout_s: total time for one attempt (connect, send, read the whole body).
    :param connect_timeout_s: time to establish the connection.
    :param max_body_bytes: a larger response is refused (memory safety on small workers).
    """

    timeout_s: float = float(default("request_timeout_s"))
    connect_timeout_s: float = float(default("connect_timeout_s"))
    max_body_bytes: int = int(default("max_body_mb") * 1024 * 1024)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")


@dataclass(frozen=True)
class ServerTarget:
    """Where and how to reach one server. ``name`` is what rows and manifests call it.

    ``timeout_s``/``connect_timeout_s`` override the run's transport settings for this server
    (connection extras ``timeout`` and ``connect_timeout``); ``ca_bundle`` verifies TLS against a
    private CA; ``verify_ssl=False`` turns verification off (logged as a warning).
    """

    name: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth: aiohttp.BasicAuth | None = field(default=None, repr=False)
    verify_ssl: bool = True
    ca_bundle: str | None = None
    timeout_s: float | None = None
    connect_timeout_s: float | None = None

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

    def timeout(self, transport: TransportSettings) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.timeout_s or transport.timeout_s,
            connect=self.connect_timeout_s or transport.connect_timeout_s,
        )

    def ssl(self) -> ssl.SSLContext | bool:
        """What aiohttp's connector should do about TLS for this server."""
        if not self.verify_ssl:
            log.warning("%s: TLS certificate verification is OFF (connection extra)", self.display)
            return False
        if self.ca_bundle:
            return ssl.create_default_context(cafile=self.ca_bundle)
        return True


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
    """The three API calls the export needs, each under the server's concurrency limit, with retries.

    Retried: connection errors and resets, timeouts, HTTP 5xx and 429, 200 bodies that are not valid
    JSON (truncated), and error envelopes (busy servers answer 200 with a non-zero ``status_no``).
    Not retried: 400, 401/403 (:class:`AuthError`), 404 (:class:`NotFoundError`), oversized bodies.
    A slot of the server's limiter is held only while a request is on the wire, never while backing off.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: ServerTarget,
        limiter: AdaptiveLimiter,
        *,
        transport: TransportSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._target = target
        self._limiter = limiter
        self._transport = transport or TransportSettings()
        self._timeout = target.timeout(self._transport)
        self._rng = rng or random.Random()
        self._base = target.base_url.rstrip("/")
        # aiohttp deprecates auth=; the header carries the same credentials and is never logged.
        headers = dict(target.headers)
        if target.auth is not None:
            headers["Authorization"] = target.auth.encode()
        self._headers = headers or None  # no per-request header merge when there is nothing to add
        self.requests = 0
        self.retries = 0

    @property
    def server(self) -> str:
        return self._target.name

    async def get_data(self, path: str, what: str) -> Any:
        """GET ``path`` (already encoded) and return the envelope's ``data``, retrying what is transient."""
        policy = self._transport.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return await self._attempt(path, what)
            except RetryableError as exc:  # the exception tree decides what is retried (exceptions.py)
                if attempt == policy.attempts:
                    raise EslApiError(
                        self.server,
                        what,
                        f"{exc.reason} (gave up after {attempt} attempts)",
                        status=exc.status,
                    ) from None
                delay = policy.delay_s(attempt, exc.retry_after_s, self._rng)
                log.debug("%s: %s: %s; retry %d in %.2fs", self.server, what, exc.reason, attempt, delay)
                self.retries += 1
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(self, path: str, what: str) -> Any:
        url = URL(self._base + path, encoded=True)
        async with self._limiter.slot() as outcome:
            self.requests += 1
            try:
                async with self._session.get(url, headers=self._headers, timeout=self._timeout) as response:
                    status = response.status
                    body = await self._read_capped(response, what)
                    retried = status == 429 or status >= 500
                    # Read only from an answer that will be retried: a 200 needs no Retry-After.
                    retry_header = response.headers.get("Retry-After") if retried else None
            except TimeoutError:
                outcome.overloaded, outcome.reason = True, "timeout"
                raise RetryableError(self.server, what, "request timed out") from None
            except aiohttp.ClientError as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                reason = redact_url_text(reason)
                raise RetryableError(self.server, what, f"request failed ({reason})") from None
            outcome.answered = True
            outcome.overloaded = status in OVERLOAD_STATUSES
            outcome.reason = f"HTTP {status}"
        if status == 200:
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise RetryableError(self.server, what, f"body is not valid JSON: {_snippet(body)}") from None
            return unwrap(payload, self.server, what)
        if status in (401, 403):
            raise AuthError(
                self.server,
                what,
                f"HTTP {status}: credentials of connection {self.server!r} refused",
                status=status,
            )
        if status == 404:
            raise NotFoundError(self.server, what, f"HTTP 404: {_snippet(body)}", status=status)
        if retried:
            raise RetryableError(
                self.server,
                what,
                f"HTTP {status}: {_snippet(body)}",
                status=status,
                retry_after_s=parse_retry_after(retry_header),
            )
        raise EslApiError(self.server, what, f"HTTP {status}: {_snippet(body)}", status=status)

    async def _read_capped(self, response: aiohttp.ClientResponse, what: str) -> bytes:
        cap = self._transport.max_body_bytes
        announced = response.content_length
        if announced is not None:
            if announced > cap:
                raise EslApiError(
                    self.server, what, f"response of {announced} bytes exceeds the {cap}-byte cap"
                )
            # A known length within the cap: one read (the parser stops at Content-Length bytes).
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise EslApiError(self.server, what, f"response exceeds the {cap}-byte cap")
            chunks.append(chunk)
        return b"".join(chunks)

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
        if entries is None and total == 0:
            entries = []  # some builds send null for an empty store; with pages announced it is a bug
        if not isinstance(entries, list):
            raise EslApiError(self.server, what, f"'esls' is a {type(entries).__name__}, not a list")
        return Page(store=store, number=number, total_pages=total, entries=entries)

    async def get_detail(self, esl_id: str) -> Any:
        return await self.get_data(f"/api3/esls/{segment(esl_id)}", f"ESL {esl_id!r}")


def _snippet(body: bytes, limit: int = 120) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ")
    return repr(text) + ("..." if len(body) > limit else "")
