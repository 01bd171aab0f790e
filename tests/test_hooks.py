"""Airflow http connections (``AIRFLOW_CONN_*`` env vars) -> ServerTarget, and the server-list settings.

Stored connections (``airflow connections add``) under ``airflow dags test``: test_stored_connections.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from esl_operators.client import EslClient
from esl_operators.config import split_batches
from esl_operators.exceptions import ConfigError
from esl_operators.hooks import MissingConnectionError, resolve_targets
from esl_operators.limiter import AdaptiveLimiter
from esl_operators.settings import parse_server_list
from esl_operators.simulator import envelope
from tests.support import BASIC_AUTH_WARNINGS, fast_transport, serve

pytestmark = [pytest.mark.timeout(60), *BASIC_AUTH_WARNINGS]

PORT = 18_123  # only ever formatted into URLs here, never connected to


def define(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    conn = {"conn_type": "http", **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


# --- resolve_targets -----------------------------------------------------------------------------


def test_host_port_and_schema_make_the_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    define(monkeypatch, "esl_plain", host="127.0.0.1", port=PORT, schema="http")
    [target] = resolve_targets(["esl_plain"])
    assert target.name == "esl_plain"
    assert target.base_url == f"http://127.0.0.1:{PORT}"
    assert (dict(target.headers), target.auth, target.verify_ssl) == ({}, None, True)


def test_https_schema_and_no_port(monkeypatch: pytest.MonkeyPatch) -> None:
    define(monkeypatch, "esl_tls", host="esl.example.com", schema="https")
    [target] = resolve_targets(["esl_tls"])
    assert target.base_url == "https://esl.example.com"


def test_targets_keep_the_order_of_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (3, 1, 2):
        define(monkeypatch, f"esl_{n}", host=f"10.0.0.{n}", port=PORT)
    targets = resolve_targets(["esl_3", "esl_1", "esl_2"])
    assert [(t.name, t.base_url) for t in targets] == [
        ("esl_3", f"http://10.0.0.3:{PORT}"),
        ("esl_1", f"http://10.0.0.1:{PORT}"),
        ("esl_2", f"http://10.0.0.2:{PORT}"),
    ]


def test_login_and_password_become_basic_auth_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    define(monkeypatch, "esl_auth", host="127.0.0.1", port=PORT, login="user", password="s3cret")
    [target] = resolve_targets(["esl_auth"])
    assert target.auth == aiohttp.BasicAuth("user", "s3cret")
    assert target.base_url == f"http://127.0.0.1:{PORT}"
    assert "s3cret" not in repr(target)
    assert "s3cret" not in str(target)
    assert "s3cret" not in target.display
    assert target.display == f"esl_auth (http://127.0.0.1:{PORT})"


def test_extras_become_string_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    define(monkeypatch, "esl_hdr", host="127.0.0.1", port=PORT, extra={"X-Tenant": "eu", "X-Shard": 3})
    [target] = resolve_targets(["esl_hdr"])
    assert dict(target.headers) == {"X-Tenant": "eu", "X-Shard": "3"}
    assert target.verify_ssl is True


@pytest.mark.parametrize(
    ("extra", "verify"),
    [
        ({"verify_ssl": False}, False),
        ({"verify_ssl": "false"}, False),
        ({"verify_ssl": "False"}, False),
        ({"verify": False}, False),
        ({"verify_ssl": True}, True),
        ({"verify_ssl": "true"}, True),
        ({}, True),
    ],
)
def test_verify_ssl_extra(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], verify: bool) -> None:
    define(monkeypatch, "esl_tls", host="esl.example.com", schema="https", extra={**extra, "X-Tenant": "eu"})
    [target] = resolve_targets(["esl_tls"])
    assert target.verify_ssl is verify
    assert dict(target.headers) == {"X-Tenant": "eu"}  # request options never leak into headers


def test_missing_connection_fails_without_retry_naming_the_id_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    define(monkeypatch, "esl_here", host="127.0.0.1", port=PORT)
    with pytest.raises(MissingConnectionError) as caught:
        resolve_targets(["esl_gone", "esl_here", "esl_nowhere"])
    assert isinstance(caught.value, AirflowFailException)  # the task runner does not retry these
    assert isinstance(caught.value, ConfigError)
    assert caught.value.conn_ids == ["esl_gone", "esl_nowhere"]  # every missing id, in order
    assert str(caught.value).splitlines() == [
        f"Airflow connection {name!r} is not defined (looked up in AIRFLOW_CONN_{name.upper()}, the "
        "secrets backends and the metadata database); create it with: airflow connections add "
        f"{name} --conn-type http --conn-host HOST --conn-port PORT [--conn-login USER "
        "--conn-password PASSWORD]"
        for name in ("esl_gone", "esl_nowhere")
    ]


def test_a_full_url_host_is_the_base_url_and_the_port_is_appended(monkeypatch: pytest.MonkeyPatch) -> None:
    define(monkeypatch, "esl_url", host="https://esl.example.com", schema="http", port=8443)
    define(monkeypatch, "esl_url_only", host="https://esl.example.com/prefix")
    first, second = resolve_targets(["esl_url", "esl_url_only"])
    assert first.base_url == "https://esl.example.com:8443"  # the URL's scheme wins over schema
    assert second.base_url == "https://esl.example.com/prefix"


def test_login_without_password_is_basic_auth_with_an_empty_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    define(monkeypatch, "esl_user", host="127.0.0.1", port=PORT, login="reader")
    [target] = resolve_targets(["esl_user"])
    assert target.auth == aiohttp.BasicAuth("reader", "")


def test_timeouts_and_a_ca_bundle_come_from_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"timeout": "12.5", "connect_timeout": 3, "verify": "/etc/esl/ca.pem", "X-Tenant": "eu"}
    define(monkeypatch, "esl_opts", host="esl.example.com", schema="https", extra=extra)
    [target] = resolve_targets(["esl_opts"])
    assert (target.timeout_s, target.connect_timeout_s) == (12.5, 3.0)
    assert (target.verify_ssl, target.ca_bundle) == (True, "/etc/esl/ca.pem")
    assert dict(target.headers) == {"X-Tenant": "eu"}


def test_verify_wins_over_verify_ssl_and_no_options_means_run_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    define(monkeypatch, "esl_both", host="h", extra={"verify": False, "verify_ssl": True})
    define(monkeypatch, "esl_plain", host="h")
    both, plain = resolve_targets(["esl_both", "esl_plain"])
    assert both.verify_ssl is False and dict(both.headers) == {}
    assert (plain.timeout_s, plain.connect_timeout_s, plain.ca_bundle) == (None, None, None)


def test_request_options_we_do_not_apply_are_named_and_never_sent_as_headers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    extra = {"proxy": "http://proxy:3128", "allow_redirects": False, "X-Tenant": "eu"}
    define(monkeypatch, "esl_proxy", host="h", extra=extra)
    with caplog.at_level("WARNING", logger="esl_operators.hooks"):
        [target] = resolve_targets(["esl_proxy"])
    assert dict(target.headers) == {"X-Tenant": "eu"}
    assert [r.getMessage() for r in caplog.records] == [
        "connection 'esl_proxy': extra ['allow_redirects', 'proxy'] not applied by esl-export, ignored"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": "soon"}, "connection 'esl_bad': extra 'timeout' must be a number of seconds"),
        ({"connect_timeout": 0}, "connection 'esl_bad': extra 'connect_timeout' must be positive"),
        ({"timeout": -1}, "connection 'esl_bad': extra 'timeout' must be positive"),
    ],
)
def test_unusable_timeout_extras_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], message: str
) -> None:
    define(monkeypatch, "esl_bad", host="h", extra=extra)
    with pytest.raises(ConfigError) as caught:
        resolve_targets(["esl_bad"])
    assert str(caught.value) == message


def test_an_extra_that_is_no_json_object_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "http", "host": "h", "extra": "[1]"}
    monkeypatch.setenv("AIRFLOW_CONN_ESL_LIST", json.dumps(conn))
    with pytest.raises(ConfigError) as caught:
        resolve_targets(["esl_list"])
    assert str(caught.value) == "connection 'esl_list': extra must be a JSON object, got list"


def test_non_http_base_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    define(monkeypatch, "esl_ftp", host="ftp://files.example.com")
    with pytest.raises(ConfigError) as caught:
        resolve_targets(["esl_ftp"])
    assert str(caught.value) == (
        "connection 'esl_ftp': server 'esl_ftp': base URL must start with http:// or https://"
    )


def test_resolved_headers_and_auth_reach_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: connection -> target -> EslClient -> a loopback server that records what it got."""
    seen: list[tuple[str | None, str | None]] = []

    async def users(request: web.Request) -> web.Response:
        seen.append((request.headers.get("X-Tenant"), request.headers.get("Authorization")))
        return web.json_response(envelope(0, [{"user": "S1"}, {"user": "default"}]))

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/api3/users", users)
        async with serve(app) as url:
            port = urlsplit(url).port
            define(
                monkeypatch, "esl_wire", host="127.0.0.1", port=port, login="user", password="s3cret",
                extra={"X-Tenant": "eu"},
            )  # fmt: skip
            # As in a task: connections are resolved synchronously, outside the event loop.
            [target] = await asyncio.to_thread(resolve_targets, ["esl_wire"])
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                client = EslClient(
                    session, target, AdaptiveLimiter(1, adaptive=False), transport=fast_transport()
                )
                return await asyncio.wait_for(client.list_stores(), timeout=30)

    assert asyncio.run(main()) == ["S1"]
    token = base64.b64encode(b"user:s3cret").decode()
    assert seen == [("eu", f"Basic {token}")]


# --- parse_server_list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["esl_a", "esl_b"]', ["esl_a", "esl_b"]),
        (["esl_b", "esl_a"], ["esl_b", "esl_a"]),
        ("[]", []),
        ([], []),
    ],
)
def test_parse_server_list_accepts_json_text_and_lists(value: Any, expected: list[str]) -> None:
    assert parse_server_list(value, "param 'servers'") == expected


def test_parse_server_list_returns_a_copy() -> None:
    value = ["esl_a"]
    parsed = parse_server_list(value, "x")
    parsed.append("esl_b")
    assert value == ["esl_a"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "Variable 'esl_servers' is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("", "Variable 'esl_servers' is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ('["a", ', "Variable 'esl_servers' is not valid JSON: Expecting value: line 1 column 7 (char 6)"),
        ('{"a": 1}', "Variable 'esl_servers' must be a JSON list of connection ids, got dict"),
        ('"esl_a"', "Variable 'esl_servers' must be a JSON list of connection ids, got str"),
        ("3", "Variable 'esl_servers' must be a JSON list of connection ids, got int"),
        (None, "Variable 'esl_servers' must be a JSON list of connection ids, got NoneType"),
        (("esl_a",), "Variable 'esl_servers' must be a JSON list of connection ids, got tuple"),
        ('["esl_a", ""]', "Variable 'esl_servers' holds '', which is not a connection id"),
        (["esl_a", "   "], "Variable 'esl_servers' holds '   ', which is not a connection id"),
        (["esl_a", 7], "Variable 'esl_servers' holds 7, which is not a connection id"),
        ('["esl_a", null]', "Variable 'esl_servers' holds None, which is not a connection id"),
        ('["b", "a", "b", "c", "a"]', "Variable 'esl_servers' lists ['a', 'b'] more than once"),
        (["x", "x"], "Variable 'esl_servers' lists ['x'] more than once"),
    ],
)
def test_parse_server_list_rejects_with_exact_messages(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_server_list(value, "Variable 'esl_servers'")
    assert str(caught.value) == message


# --- split_batches -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "batches"),
    [
        (1, [["s1"], ["s2"], ["s3"], ["s4"], ["s5"]]),
        (2, [["s1", "s2"], ["s3", "s4"], ["s5"]]),
        (3, [["s1", "s2", "s3"], ["s4", "s5"]]),
        (5, [["s1", "s2", "s3", "s4", "s5"]]),
        (9, [["s1", "s2", "s3", "s4", "s5"]]),
    ],
)
def test_split_batches_in_list_order(size: int, batches: list[list[str]]) -> None:
    servers = ["s1", "s2", "s3", "s4", "s5"]
    assert split_batches(servers, size) == batches
    assert servers == ["s1", "s2", "s3", "s4", "s5"]


def test_split_batches_of_nothing_is_no_batch() -> None:
    assert split_batches([], 3) == []


@pytest.mark.parametrize("size", [0, -2])
def test_split_batches_rejects_sizes_below_one(size: int) -> None:
    with pytest.raises(ConfigError) as caught:
        split_batches(["s1"], size)
    assert str(caught.value) == f"servers_per_batch must be >= 1, got {size}"
