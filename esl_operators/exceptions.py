"""Typed errors raised while talking to ESL-Working servers.

Every error names the server (connection id or redacted URL) and, where it applies, the store or ESL id,
so an operator reading a task log knows exactly what failed without a stack trace.
"""

from __future__ import annotations


class EslError(Exception):
    """Base class for everything this package raises on purpose."""


class EslApiError(EslError):
    """A request failed: transport error, bad HTTP status, bad body or an error envelope."""

    def __init__(self, server: str, what: str, reason: str, *, status: int | None = None) -> None:
        self.server = server
        self.what = what
        self.reason = reason
        self.status = status
        super().__init__(f"{server}: {what}: {reason}")


class EnvelopeError(EslApiError):
    """The server answered with a non-zero ``status_no`` or ``error_code``."""


class RecordError(EslError):
    """An ESL detail cannot be turned into a row (missing or malformed field)."""

    def __init__(self, esl_id: object, reason: str) -> None:
        self.esl_id = esl_id
        self.reason = reason
        super().__init__(f"ESL {esl_id!r}: {reason}")


class ConfigError(EslError):
    """A parameter, Variable or connection is unusable."""


class RetryableError(EslApiError):
    """A failure worth another try: transport errors, timeouts, 5xx, 429, broken bodies, busy envelopes."""

    def __init__(
        self,
        server: str,
        what: str,
        reason: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(server, what, reason, status=status)
        self.retry_after_s = retry_after_s


class AuthError(EslApiError):
    """401/403: the connection's credentials are refused. Never retried; fails the whole server."""


class NotFoundError(EslApiError):
    """404: the resource does not exist (for an ESL detail: removed since it was listed)."""
