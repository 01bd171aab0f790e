"""Every error this package raises on purpose, in one tree.

Every error names the server (connection id or redacted URL) and, where it applies, the store or ESL id,
so an operator reading a task log knows exactly what failed without a stack trace::

    EslError                     anything raised on purpose
    ├── ConfigError              a setting, Variable, connection or command-line value is unusable
    ├── RecordError              one ESL detail cannot become a row (the label is counted as invalid)
    ├── StorageError             a file could not be written, moved or removed (full disk, I/O error, a
    │                            failing object store); names the file and the cause; also an OSError
    ├── LeaseError               another writer holds the date's lease (``_lease.json``); names it
    └── EslApiError              a request failed for good: bad status, bad body, body too large
        ├── RetryableError       worth another try: transport errors, timeouts, 5xx, 429, broken JSON
        │   └── EnvelopeError    HTTP 200 with a non-zero ``status_no``/``error_code`` (a busy server)
        ├── AuthError            401/403: never retried, fails the whole server
        └── NotFoundError        404: for a detail, the label was removed since it was listed

Whether a failure is retried is decided by its class alone: :class:`RetryableError` and its subclasses
are, nothing else is (``EslClient.get_data``).
"""

from __future__ import annotations


class EslError(Exception):
    """Base class for everything this package raises on purpose."""


class ConfigError(EslError):
    """A parameter, Variable, connection or option is unusable."""


class StorageError(EslError, OSError):
    """A file of the output could not be written, moved or removed: names the file and the cause.

    Also an :class:`OSError` with the cause's ``errno`` (``ENOSPC``, ``EIO``, ...), so code that handles
    storage failures by errno keeps working; the original error is its ``__cause__``.
    """

    def __init__(self, action: str, path: object, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.action = action
        self.path = path
        self.cause = cause
        self.filename = str(path)

    def __str__(self) -> str:
        return f"cannot {self.action} {self.path}: {self.cause}"

    def __reduce__(self) -> tuple[object, ...]:  # pickled by Airflow and by worker threads' futures
        return (type(self), (self.action, self.path, self.cause))


class LeaseError(EslError):
    """Another writer holds the lease of the date's folder: this run must not write there now.

    The message names the holder (run, host, process) and when its lease expires; a retry later finds the
    date free (the holder released it, or it expired because the holder died).
    """


class RecordError(EslError):
    """An ESL detail cannot be turned into a row (missing or malformed field)."""

    def __init__(self, esl_id: object, reason: str) -> None:
        self.esl_id = esl_id
        self.reason = reason
        super().__init__(f"ESL {esl_id!r}: {reason}")


class EslApiError(EslError):
    """A request failed: transport error, bad HTTP status, bad body or an error envelope."""

    def __init__(self, server: str, what: str, reason: str, *, status: int | None = None) -> None:
        self.server = server
        self.what = what
        self.reason = reason
        self.status = status
        super().__init__(f"{server}: {what}: {reason}")


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


class EnvelopeError(RetryableError):
    """The server answered with a non-zero ``status_no`` or ``error_code`` (busy builds do, then recover)."""


class AuthError(EslApiError):
    """401/403: the connection's credentials are refused. Never retried; fails the whole server."""


class NotFoundError(EslApiError):
    """404: the resource does not exist (for an ESL detail: removed since it was listed)."""
