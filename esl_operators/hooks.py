"""Turn Airflow ``http`` connections into :class:`~esl_operators.client.ServerTarget` objects.

Connections are looked up synchronously with ``BaseHook.get_connection``, once per server, in the
task's main thread before any worker thread starts. That is the Task SDK's path that works everywhere
a task runs: under a worker's supervisor (over its socket) and in-process under ``airflow dags test``,
whose in-process supervisor has no asynchronous channel (``HttpAsyncHook.config()`` cannot see stored
connections there). The fields mean what they mean for providers-http's hooks: host/schema/port make
the base URL (a host with ``://`` is taken as the URL), login/password are basic auth, request options
in the extra are honoured or named, and every other extra key becomes a request header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from esl_operators.client import ServerTarget
from esl_operators.exceptions import ConfigError
from esl_operators.settings import parse_bool

log = logging.getLogger(__name__)

#: Extra keys that set request options, not headers. ``verify`` wins over ``verify_ssl``, as in
#: providers-http; ``connect_timeout`` is ours.
VERIFY_EXTRAS = ("verify", "verify_ssl")
TIMEOUT_EXTRAS = ("timeout", "connect_timeout")
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


def _verify(conn_id: str, value: Any) -> tuple[bool, str | None]:
    """Extra "verify" (requests' convention, also "verify_ssl"): a boolean, or the path of a CA bundle."""
    try:
        return parse_bool(value, f"connection {conn_id!r}: extra 'verify'"), None
    except ConfigError:
        if isinstance(value, str) and value.strip():
            return True, value
        raise


def target_from_connection(conn_id: str, conn: Any) -> ServerTarget:
    """One connection (anything with the fields of Airflow's ``Connection``) as a server target."""
    extra: Mapping[str, Any] = conn.extra_dejson
    if not isinstance(extra, Mapping):
        raise ConfigError(f"connection {conn_id!r}: extra must be a JSON object, got {type(extra).__name__}")
    options = {k: extra[k] for k in (*VERIFY_EXTRAS, *TIMEOUT_EXTRAS) if k in extra}
    ignored = sorted(k for k in extra if k in IGNORED_EXTRAS)
    if ignored:
        log.warning("connection %r: extra %s not applied by esl-export, ignored", conn_id, ignored)
    # Headers must be strings on the wire.
    headers = {str(k): str(v) for k, v in extra.items() if k not in options and k not in IGNORED_EXTRAS}
    verify_ssl, ca_bundle = _verify(conn_id, next((options[k] for k in VERIFY_EXTRAS if k in options), True))
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
