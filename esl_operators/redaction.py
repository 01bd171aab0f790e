"""Strip credentials from URLs before they reach a log line, a manifest, an event or an exception.

The one place that knows where secrets hide in a URL (user info, query string) and in error texts
that quote URLs.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def _host_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def redact_url(url: str) -> str:
    """Return ``url`` without user info and with its query string masked.

    >>> redact_url("https://bob:secret@esl.example:9000/api3/users?token=abc")
    'https://esl.example:9000/api3/users?***'
    """
    parts = urlsplit(url)
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, _host_port(parts), parts.path, query, ""))


def redact_url_text(text: str) -> str:
    """Redact any URL inside an error text (aiohttp puts the request URL in some messages)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """A server URL given with ``user:password@``: the URL without them (nor query, fragment or a
    trailing slash), and the decoded ``(user, password)`` if there were any.

    >>> split_credentials("https://api:s%40cret@10.1.2.4:9000/")
    ('https://10.1.2.4:9000', ('api', 's@cret'))
    """
    parts = urlsplit(url)
    clean = urlunsplit((parts.scheme, _host_port(parts), parts.path.rstrip("/"), "", ""))
    if parts.username is None:
        return clean, None
    return clean, (unquote(parts.username), unquote(parts.password or ""))
