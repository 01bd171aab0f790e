"""Airflow connections of type ``esl_working`` (or ``http``) as server targets, and the ESL-Working hook.

Connections are looked up synchronously with ``BaseHook.get_connection``, once per server, in the
task's main thread before any worker thread starts. That is the Task SDK's path that works everywhere
a task runs: under a worker's supervisor (over its socket) and in-process under ``airflow dags test``,
whose in-process supervisor has no asynchronous channel (``HttpAsyncHook.config()`` cannot see stored
connections there). The fields mean what they mean for providers-http's hooks, for both connection
types: host/schema/port make the base URL (a host with ``://`` is taken as the URL), login/password are
basic auth, request options in the extra are honoured or named, and every other extra key becomes a
request header. An extra key whose value is ``null`` (an empty field of the connection form) is unset.

:class:`EslWorkingHook` is the hook behind the ``esl_working`` connection type
(:mod:`esl_operators.provider`): it resolves one connection into a target and answers the UI's
**Test** button by listing the server's stores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from esl_operators.client import EslClient, ServerTarget, TransportSettings
from esl_operators.exceptions import AuthError, ConfigError, EslApiError
from esl_operators.limiter import AdaptiveLimiter
from esl_operators.provider import CONN_TYPE, HOOK_NAME, python_field_behaviour
from esl_operators.redaction import redact_url
from esl_operators.retry import RetryPolicy
from esl_operators.settings import parse_bool

log = logging.getLogger(__name__)

#: Extra keys that set request options, not headers. ``verify`` wins over ``verify_ssl``, as in
#: providers-http; ``connect_timeout`` is ours.
VERIFY_EXTRAS = ("verify", "verify_ssl")
TIMEOUT_EXTRAS = ("timeout", "connect_timeout")
#: A private CA's PEM file (the form's field; ``"verify": "/path/ca.pem"`` says the same).
CA_BUNDLE_EXTRA = "ca_bundle"
#: providers-http request options this package does not apply: never sent as headers, named in a warning.
IGNORED_EXTRAS = (
    "stream",
    "cert",
    "proxies",
    "proxy",
    "allow_redirects",
    "max_redirects",
    "trust_env",
    "check_response",
    "srv_lookup",
)


class MissingConnectionError(AirflowFailException, ConfigError):
    """Connection ids that no secrets backend knows. Retrying cannot help: the task fails at once."""

    def __init__(self, conn_ids: Sequence[str]) -> None:
        self.conn_ids = list(conn_ids)
        lines = [
            f"Airflow connection {conn_id!r} is not defined (looked up in AIRFLOW_CONN_{conn_id.upper()}, "
            "the secrets backends and the metadata database); create it with: airflow connections add "
            f"{conn_id} --conn-type http --conn-host HOST --conn-port PORT [--conn-login USER "
            "--conn-password PASSWORD]"
            for conn_id in self.conn_ids
        ]
        super().__init__("\n".join(lines))


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


def _base_url(conn: Any) -> str:
    host = conn.host or ""
    base = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    return f"{base}:{conn.port}" if conn.port else base


def _verify(conn_id: str, value: Any, ca_bundle: Any) -> tuple[bool, str | None]:
    """Extra "verify" (requests' convention, also "verify_ssl": a boolean, or the path of a CA bundle)
    and "ca_bundle" (the path, as the connection form's own field): verify or not, and against what."""
    if ca_bundle is not None and (not isinstance(ca_bundle, str) or not ca_bundle.strip()):
        raise ConfigError(f"connection {conn_id!r}: extra {CA_BUNDLE_EXTRA!r} must be the path of a PEM file")
    try:
        verify = parse_bool(value, f"connection {conn_id!r}: extra 'verify'")
        path = None
    except ConfigError:
        if not (isinstance(value, str) and value.strip()):
            raise
        verify, path = True, value
    if ca_bundle is not None and not verify:
        raise ConfigError(
            f"connection {conn_id!r}: extra 'verify' is false but {CA_BUNDLE_EXTRA!r} names a CA bundle; "
            "keep one of them"
        )
    if ca_bundle is not None and path is not None and path != ca_bundle:
        raise ConfigError(
            f"connection {conn_id!r}: extras 'verify' and {CA_BUNDLE_EXTRA!r} name different CA bundles"
        )
    return verify, path or ca_bundle


def target_from_connection(conn_id: str, conn: Any) -> ServerTarget:
    """One connection (anything with the fields of Airflow's ``Connection``) as a server target."""
    extra: Mapping[str, Any] = conn.extra_dejson
    if not isinstance(extra, Mapping):
        raise ConfigError(f"connection {conn_id!r}: extra must be a JSON object, got {type(extra).__name__}")
    # The connection form stores its empty fields as null: unset, never a header saying "None".
    extra = {k: v for k, v in extra.items() if v is not None}
    known = (*VERIFY_EXTRAS, *TIMEOUT_EXTRAS, CA_BUNDLE_EXTRA)
    options = {k: extra[k] for k in known if k in extra}
    ignored = sorted(k for k in extra if k in IGNORED_EXTRAS)
    if ignored:
        log.warning("connection %r: extra %s not applied by esl-export, ignored", conn_id, ignored)
    # Headers must be strings on the wire.
    headers = {str(k): str(v) for k, v in extra.items() if k not in options and k not in IGNORED_EXTRAS}
    verify_ssl, ca_bundle = _verify(
        conn_id,
        next((options[k] for k in VERIFY_EXTRAS if k in options), True),
        options.get(CA_BUNDLE_EXTRA),
    )
    auth = aiohttp.BasicAuth(conn.login, conn.password or "") if conn.login else None
    try:
        return ServerTarget(
            name=conn_id,
            base_url=_base_url(conn),
            headers=headers,
            auth=auth,
            verify_ssl=verify_ssl,
            ca_bundle=ca_bundle,
            timeout_s=_seconds(conn_id, "timeout", options.get("timeout")),
            connect_timeout_s=_seconds(conn_id, "connect_timeout", options.get("connect_timeout")),
        )
    except ValueError as exc:
        raise ConfigError(f"connection {conn_id!r}: {exc}") from None


def resolve_targets(conn_ids: Sequence[str]) -> list[ServerTarget]:
    """Resolve connection ids (in order) into server targets.

    Every id is looked up before anything fails, so one :class:`MissingConnectionError` names all the
    missing ones.
    """
    found: dict[str, Any] = {}
    missing: list[str] = []
    for conn_id in conn_ids:
        try:
            found[conn_id] = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            missing.append(conn_id)
    if missing:
        raise MissingConnectionError(missing)
    return [target_from_connection(conn_id, found[conn_id]) for conn_id in conn_ids]


# --- the hook of the esl_working connection type ---------------------------------------------------

#: The Test button's transport: one retry of a transient failure, short backoff; a connection's own
#: ``timeout`` / ``connect_timeout`` extras still apply.
TEST_TRANSPORT = TransportSettings(
    timeout_s=30.0, connect_timeout_s=10.0, retry=RetryPolicy(attempts=2, max_delay_s=2.0)
)


class EslWorkingHook(BaseHook):
    """One Hanshow ESL-Working server (HTTP API v3), from a connection of type ``esl_working``.

    ``http`` connections mean the same to the operators (:func:`resolve_targets` reads both); this type
    adds a form of its own and a **Test** button that lists the server's stores.

    :param esl_conn_id: the Airflow connection id of the server.
    """

    conn_name_attr = "esl_conn_id"
    default_conn_name = "esl_working_default"
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(self, esl_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.esl_conn_id = esl_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's hidden fields, labels and placeholders, for Airflow 3.0/3.1 (3.2+ reads the
        provider info, :mod:`esl_operators.provider`, the one definition)."""
        return python_field_behaviour()

    def get_conn(self) -> ServerTarget:
        """The connection as a :class:`ServerTarget` (URL, auth, TLS, timeouts, headers)."""
        return target_from_connection(self.esl_conn_id, self.get_connection(self.esl_conn_id))

    def test_connection(self) -> tuple[bool, str]:
        """List the stores: ``(True, "OK: 12 stores (default excluded), API v3")``, or ``(False, why)``
        with the server's own error; the password never appears (URLs are redacted)."""
        try:
            target = self.get_conn()
        except ConfigError as exc:
            return False, str(exc)
        return probe(target)


def probe(target: ServerTarget, transport: TransportSettings = TEST_TRANSPORT) -> tuple[bool, str]:
    """One ``GET /api3/users`` through the export's own client, answered as the Test button shows it."""
    where = f"GET {redact_url(target.base_url.rstrip('/'))}/api3/users"
    try:
        stores = asyncio.run(_list_stores(target, transport))
    except AuthError as exc:
        return False, f"{where}: HTTP {exc.status}: the server refused the login and password"
    except EslApiError as exc:
        return False, f"{where}: {exc.reason}"
    except OSError as exc:  # an unreadable CA bundle, before any request
        return False, f"{where}: TLS setup failed: {exc}"
    return True, f"OK: {len(stores)} store{'' if len(stores) == 1 else 's'} (default excluded), API v3"


async def _list_stores(target: ServerTarget, transport: TransportSettings) -> list[str]:
    connector = aiohttp.TCPConnector(limit=1, ssl=target.ssl())
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        limiter = AdaptiveLimiter(1, name=target.name, adaptive=False)
        return await EslClient(session, target, limiter, transport=transport).list_stores()
