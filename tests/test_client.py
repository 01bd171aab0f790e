"""EslClient and iter_pages against the simulator (and tiny hostile servers) over real HTTP on 127.0.0.1.

Every test runs its own ``asyncio.run`` loop with its own session and semaphore, as the engine does in
each worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from esl_operators.client import EslClient, Page, ServerTarget, TransportSettings, segment, unwrap
from esl_operators.exceptions import EnvelopeError, EslApiError
from esl_operators.limiter import AdaptiveLimiter
from esl_operators.pagination import iter_pages
from esl_operators.retry import RetryPolicy
from esl_operators.simulator import DEFAULT_STORE, Fleet, SimulatorThread, envelope
from tests.support import BASIC_AUTH_WARNINGS, fast_transport, serve, sim_target

pytestmark = [pytest.mark.timeout(60), *BASIC_AUTH_WARNINGS]

T = TypeVar("T")
TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
FAST = fast_transport()
# No store in any test has more pages than this: a pagination loop that never ends fails instead.
MAX_PAGES = 50


def with_client(target: ServerTarget, work: Callable[[EslClient], Awaitable[T]], *, limit: int = 4) -> T:
    """Run ``work`` in a fresh loop with a session and semaphore created inside that loop."""

    async def main() -> T:
        limiter = AdaptiveLimiter(limit, adaptive=False)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            client = EslClient(session, target, limiter, transport=FAST)
            return await asyncio.wait_for(work(client), timeout=30)

    return asyncio.run(main())


async def collect_pages(client: EslClient, store: str) -> list[Page]:
    pages: list[Page] = []
    async with contextlib.aclosing(iter_pages(client, store)) as walk:
        async for page in walk:
            pages.append(page)
            assert len(pages) <= MAX_PAGES, f"store {store!r} never stops paginating"
    return pages


def ids_of(pages: list[Page]) -> list[str]:
    return [entry["esl_id"] for page in pages for entry in page.entries]


def dataset_ids(fleet: Fleet, index: int, store: str) -> list[str]:
    return [esl["esl_id"] for esl in fleet.servers[index].stores[store]]


def store_with(fleet: Fleet, index: int, predicate: Callable[[int], bool]) -> str:
    """The first real store of server ``index`` (users order) whose ESL count satisfies ``predicate``."""
    for code, esls in fleet.servers[index].real_stores.items():
        if predicate(len(esls)):
            return code
    raise AssertionError(f"the fleet has no such store on server {index}")


# --- list_stores ---------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2])
def test_list_stores_in_users_order_without_default(
    simulator: SimulatorThread, small_fleet: Fleet, index: int
) -> None:
    users = [u["user"] for u in small_fleet.servers[index].users]
    assert DEFAULT_STORE in users  # the filter is really exercised
    stores = with_client(sim_target(simulator, index), lambda c: c.list_stores())
    assert stores == [code for code in users if code != DEFAULT_STORE]
    assert len(stores) == 6


# --- pagination edges ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_empty_store_is_exactly_one_empty_page(
    simulator: SimulatorThread, small_fleet: Fleet, index: int
) -> None:
    store = store_with(small_fleet, index, lambda n: n == 0)
    pages = with_client(sim_target(simulator, index), lambda c: collect_pages(c, store))
    assert pages == [Page(store=store, number=1, total_pages=0, entries=[])]


def test_store_with_exact_multiple_of_page_size_has_two_full_pages(
    simulator: SimulatorThread, small_fleet: Fleet
) -> None:
    expected = dataset_ids(small_fleet, 0, "Store 12")
    assert len(expected) == 2 * small_fleet.page_size
    pages = with_client(sim_target(simulator, 0), lambda c: collect_pages(c, "Store 12"))
    assert [(p.store, p.number, p.total_pages, len(p.entries)) for p in pages] == [
        ("Store 12", 1, 2, 50),
        ("Store 12", 2, 2, 50),
    ]
    assert ids_of(pages) == expected


def test_store_with_partial_last_page(simulator: SimulatorThread, small_fleet: Fleet) -> None:
    size = small_fleet.page_size
    store = store_with(small_fleet, 0, lambda n: n > size and n % size != 0)
    expected = dataset_ids(small_fleet, 0, store)
    full, rest = divmod(len(expected), size)
    pages = with_client(sim_target(simulator, 0), lambda c: collect_pages(c, store))
    assert [p.number for p in pages] == list(range(1, full + 2))
    assert {p.total_pages for p in pages} == {full + 1}
    assert [len(p.entries) for p in pages] == [size] * full + [rest]
    assert ids_of(pages) == expected


@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_store_pages_through_dataset_order_exactly_once(
    simulator: SimulatorThread, small_fleet: Fleet, index: int
) -> None:
    async def walk_all(client: EslClient) -> dict[str, list[str]]:
        stores = await client.list_stores()
        walked = await asyncio.gather(*(collect_pages(client, s) for s in stores))
        return {store: ids_of(pages) for store, pages in zip(stores, walked, strict=True)}

    got = with_client(sim_target(simulator, index), walk_all)
    expected = {
        code: [e["esl_id"] for e in esls] for code, esls in small_fleet.servers[index].real_stores.items()
    }
    assert got == expected
    every_id = [i for ids in got.values() for i in ids]
    assert len(every_id) == len(set(every_id)) == 260


# --- percent-encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("Store 12", "Store%2012"),
        ("上海.001", "%E4%B8%8A%E6%B5%B7.001"),
        ("50%off", "50%25off"),
        ("A%20B", "A%2520B"),
        ("a/b", "a%2Fb"),
        ("../users", "..%2Fusers"),
        ("Zürich?x=1#y", "Z%C3%BCrich%3Fx%3D1%23y"),
        ("plain-id_1.2~3", "plain-id_1.2~3"),
    ],
)
def test_segment_encodes_one_path_segment(raw: str, encoded: str) -> None:
    assert segment(raw) == encoded


@pytest.mark.parametrize("store", ["上海.001", "Store 12", "50%off", "A%20B"])
@pytest.mark.parametrize("index", [0, 1])
def test_awkward_store_codes_are_reached_through_encoding(
    simulator: SimulatorThread, small_fleet: Fleet, index: int, store: str
) -> None:
    expected = dataset_ids(small_fleet, index, store)
    assert expected  # a non-empty store: reaching the wrong (or no) store cannot pass
    pages = with_client(sim_target(simulator, index), lambda c: collect_pages(c, store))
    assert {p.store for p in pages} == {store}
    assert ids_of(pages) == expected


# --- details and server errors -------------------------------------------------------------------


def test_get_detail_returns_dataset_dict_exactly(simulator: SimulatorThread, small_fleet: Fleet) -> None:
    server = small_fleet.servers[1]
    wanted = [esl for esls in server.stores.values() for esl in esls]  # "default" included

    async def fetch_all(client: EslClient) -> list[Any]:
        return list(await asyncio.gather(*(client.get_detail(e["esl_id"]) for e in wanted)))

    got = with_client(sim_target(simulator, 1), fetch_all)
    assert len(got) == 263
    assert got == wanted


@pytest.mark.parametrize("index", [0, 1])
def test_unknown_esl_id_is_http_404_naming_the_id(simulator: SimulatorThread, index: int) -> None:
    with pytest.raises(EslApiError) as caught:
        with_client(sim_target(simulator, index), lambda c: c.get_detail("FF-00-00-00"))
    assert caught.value.status == 404
    assert caught.value.server == f"esl_sim_{index}"
    assert caught.value.what == "ESL 'FF-00-00-00'"
    assert str(caught.value).startswith(f"esl_sim_{index}: ESL 'FF-00-00-00': HTTP 404: ")
    assert "esl not found" in str(caught.value)


@pytest.mark.parametrize(("index", "code_key"), [(0, "error_code"), (1, "status_no")])
def test_unknown_store_raises_envelope_error_with_server_message(
    simulator: SimulatorThread, index: int, code_key: str
) -> None:
    # An error envelope may be a busy server: it is retried, then reported with the server's words.
    with pytest.raises(EslApiError) as caught:
        with_client(sim_target(simulator, index), lambda c: c.get_page("Nowhere 9", 1))
    assert str(caught.value) == (
        f"esl_sim_{index}: store 'Nowhere 9' page 1: server error {code_key}=2: store not found"
        " (gave up after 3 attempts)"
    )
    assert caught.value.status is None  # HTTP 200: the envelope carries the error


# --- unwrap --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"status_no": 0, "message": "success", "data": [1, 2]},
        {"error_code": 0, "error_msg": "success", "data": [1, 2]},
        {"status_no": 0, "error_code": 0, "data": [1, 2]},
        {"status_no": "0", "message": "success", "data": [1, 2]},
        {"error_code": "0", "error_msg": "ok", "data": [1, 2]},
        {"data": [1, 2]},
    ],
)
def test_unwrap_success_returns_data(payload: dict[str, Any]) -> None:
    assert unwrap(payload, "srv", "list stores") == [1, 2]


def test_unwrap_keeps_null_data() -> None:
    assert unwrap({"status_no": 0, "data": None}, "srv", "x") is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"status_no": 5, "message": "boom", "data": None}, "status_no=5: boom"),
        ({"error_code": 7, "error_msg": "no such store", "data": {}}, "error_code=7: no such store"),
        ({"status_no": 0, "error_code": 9, "error_msg": "late", "data": 1}, "error_code=9: late"),
        ({"status_no": "3", "data": 1}, "status_no=3: no message"),
        ({"error_code": -1, "error_msg": "", "data": 1}, "error_code=-1: no message"),
    ],
)
def test_unwrap_error_codes_raise_envelope_error(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        unwrap(payload, "srv", "what")
    assert str(caught.value) == f"srv: what: server error {reason}"
    assert caught.value.server == "srv"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"status_no": 0, "message": "success"}, "srv: what: response has no 'data'"),
        ([{"data": 1}], "srv: what: response is a JSON list, not an object"),
        ("data", "srv: what: response is a JSON str, not an object"),
        (None, "srv: what: response is a JSON NoneType, not an object"),
        (3, "srv: what: response is a JSON int, not an object"),
    ],
)
def test_unwrap_malformed_payload_raises_api_error(payload: Any, message: str) -> None:
    with pytest.raises(EslApiError) as caught:
        unwrap(payload, "srv", "what")
    assert type(caught.value) is EslApiError  # not an EnvelopeError: the server reported no error
    assert str(caught.value) == message


# --- transport failures --------------------------------------------------------------------------


@pytest.mark.parametrize("credentials_in_url", [False, True])
def test_refused_connection_names_server_and_hides_credentials(
    refused_port: int, credentials_in_url: bool
) -> None:
    if credentials_in_url:
        target = ServerTarget(name="esl_down", base_url=f"http://user:s3cret@127.0.0.1:{refused_port}")
    else:
        target = ServerTarget(
            name="esl_down",
            base_url=f"http://127.0.0.1:{refused_port}",
            auth=aiohttp.BasicAuth("user", "s3cret"),
        )
    with pytest.raises(EslApiError) as caught:
        with_client(target, lambda c: c.list_stores())
    message = str(caught.value)
    assert message.startswith(
        "esl_down: list stores: request failed (ClientConnectorError: "
        f"Cannot connect to host 127.0.0.1:{refused_port}"
    )
    assert caught.value.status is None
    assert "s3cret" not in message
    assert "s3cret" not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- a hostile server of our own -----------------------------------------------------------------

HTML_502 = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
    "<hr><center>nginx/1.18.0</center></body></html>\n"
)


async def hostile_users(request: web.Request) -> web.Response:
    return web.Response(status=502, text=HTML_502, content_type="text/html")


async def hostile_page(request: web.Request) -> web.StreamResponse:
    store = request.match_info["store"]
    if store == "plain":
        return web.Response(status=200, text="Service temporarily unavailable", content_type="text/plain")
    if store == "binary":
        return web.Response(status=200, body=b"\xff\xfe\xfa garbage", content_type="application/json")
    data: Any = {
        "stringy": {"total_page": "3", "esls": []},
        "boolean": {"total_page": True, "esls": []},
        "negative": {"total_page": -1, "esls": []},
        "missing": {"esls": []},
        "esls-dict": {"total_page": 1, "esls": {"esl_id": "X"}},
        "data-list": [],
    }[store]
    return web.json_response(envelope(1, data))


def hostile_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api3/users", hostile_users)
    app.router.add_get("/api3/{store}/esls/page/{n}", hostile_page)
    return app


def against_hostile(call: Callable[[EslClient], Awaitable[Any]]) -> EslApiError:
    """Run ``call`` against the hostile server (same loop) and return the EslApiError it raised."""

    async def main() -> EslApiError:
        async with serve(hostile_app()) as url:
            limiter = AdaptiveLimiter(2, adaptive=False)
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                client = EslClient(session, ServerTarget("hostile", url), limiter, transport=FAST)
                try:
                    await asyncio.wait_for(call(client), timeout=30)
                except EslApiError as exc:
                    return exc
        raise AssertionError("no EslApiError raised")

    return asyncio.run(main())


def test_html_502_page_is_an_http_error_with_a_snippet() -> None:
    error = against_hostile(lambda c: c.list_stores())
    assert error.status == 502
    assert str(error) == (
        "hostile: list stores: HTTP 502: " + repr(HTML_502[:120]) + "... (gave up after 3 attempts)"
    )


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ("plain", "body is not valid JSON: 'Service temporarily unavailable' (gave up after 3 attempts)"),
        ("binary", "body is not valid JSON: '\ufffd\ufffd\ufffd garbage' (gave up after 3 attempts)"),
        ("stringy", "total_page is not a count: '3'"),
        ("boolean", "total_page is not a count: True"),
        ("negative", "total_page is not a count: -1"),
        ("missing", "total_page is not a count: None"),
        ("esls-dict", "'esls' is a dict, not a list"),
        ("data-list", "'data' is a list, not an object"),
    ],
)
def test_malformed_page_responses_raise_with_a_clear_reason(store: str, reason: str) -> None:
    error = against_hostile(lambda c: c.get_page(store, 1))
    assert str(error) == f"hostile: store {store!r} page 1: {reason}"
    assert error.status is None
    assert type(error) is EslApiError


def test_users_entries_without_store_code_are_rejected() -> None:
    async def users(request: web.Request) -> web.Response:
        return web.json_response(envelope(1, [{"user": "S1"}, {"name": "nameless"}]))

    async def main() -> EslApiError:
        app = web.Application()
        app.router.add_get("/api3/users", users)
        async with serve(app) as url, aiohttp.ClientSession(timeout=TIMEOUT) as session:
            client = EslClient(
                session, ServerTarget("odd", url), AdaptiveLimiter(1, adaptive=False), transport=FAST
            )
            with pytest.raises(EslApiError) as caught:
                await asyncio.wait_for(client.list_stores(), timeout=30)
            return caught.value

    error = asyncio.run(main())
    assert str(error) == "odd: list stores: entry without a store code: {'name': 'nameless'}"


def test_retry_after_of_a_retried_answer_is_honoured() -> None:
    """The client reads ``Retry-After`` only from answers it retries; there it still waits for it
    (backoff off, so the wait between the two requests the server saw is the header's alone)."""
    seen: list[float] = []

    async def users(request: web.Request) -> web.Response:
        seen.append(asyncio.get_running_loop().time())
        if len(seen) == 1:
            return web.Response(status=503, text="busy", headers={"Retry-After": "0.4"})
        return web.json_response(envelope(1, [{"user": "S1"}]), headers={"Retry-After": "30"})

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/api3/users", users)
        transport = TransportSettings(retry=RetryPolicy(attempts=2, base_delay_s=0, max_delay_s=0))
        async with serve(app) as url, aiohttp.ClientSession(timeout=TIMEOUT) as session:
            limiter = AdaptiveLimiter(1, adaptive=False)
            client = EslClient(session, ServerTarget("busy", url), limiter, transport=transport)
            return await asyncio.wait_for(client.list_stores(), timeout=30)

    assert asyncio.run(main()) == ["S1"]
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.4
