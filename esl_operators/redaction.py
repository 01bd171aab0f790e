"""Strip credentials from URLs before they reach a log line, a manifest or an exception."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Return ``url`` without user info and with its query string masked.

    >>> redact_url("https://bob:secret@esl.example:9000/api3/users?token=abc")
    'https://esl.example:9000/api3/users?***'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
