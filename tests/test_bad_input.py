"""A catalogue of malformed server responses, each checked against its row of RELIABILITY.md.

One tiny API v3 server on 127.0.0.1 (its own loop in a background thread) serves a fixed fixture:

* ``alpha``: A-1, A-2 on page 1 and A-3 alone on page 2 (all fresh);
* ``beta``: B-1 (fresh) and B-2 (stale) on one page;
* ``default``: listed by ``/api3/users`` and never fetched.

The fault-free fetch writes 4 rows with 9 requests. Each catalogue case overrides ONE response (status,
headers, raw body) and states the exact outcome: the rows written, the store results with all counters
and the exact error text, ``retries`` and the requests the server saw. Detail faults hit A-3, which is
alone on the last page of its store, so even a failing detail cancels nothing and counts stay exact.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from esl_operators.aggregate import AggregateError, aggregate_run
from esl_operators.batch import run_batch
from esl_operators.client import ServerTarget
from esl_operators.engine import ServerResult, StoreResult, fetch_servers
from esl_operators.exceptions import RecordError
from esl_operators.parts import PartWriter, read_part
from esl_operators.records import MAX_EPOCH_MS, PART_COLUMNS, to_part_row
from tests.support import (
    ANCHOR,
    ANCHOR_MS,
    BASIC_AUTH_WARNINGS,
    CUTOFF_MS,
    DAY_MS,
    DS,
    ListSink,
    fast_transport,
    fetch_settings,
)

pytestmark = [pytest.mark.timeout(60), *BASIC_AUTH_WARNINGS]

FRESH = ANCHOR_MS - DAY_MS
STALE = CUTOFF_MS - DAY_MS
CREATED = FRESH - 30 * DAY_MS  # 30 whole days before the heartbeat: frequency = 30 / 30 = 1.0
FAR_FUTURE = 4_102_444_800_000  # 2100-01-01: far more than a day past any fetch time
PAGE_SIZE = 2
ATTEMPTS = 3  # fast_transport(): 3 tries per request
SERVER = "srv"
PASSWORD = "s3cret-pw"
COL = {name: index for index, name in enumerate(PART_COLUMNS)}
DROP = object()  # in a detail override: remove the field


# --- the fixture ---------------------------------------------------------------------------------


def make_detail(esl_id: str, store: str, last_hb: int) -> dict[str, Any]:
    return {
        "esl_id": esl_id,
        "user": store,
        "create_time": CREATED,
        "last_hb_time": last_hb,
        "battery": 80,
        "screen_size": "2.13",
        "description": f"shelf {esl_id}",
        "refresh_times": 30,
        "led_times": 2,
        "firmware": "1.2.3",
        "rom": "r1",
        "extesl_id": f"X-{esl_id}",
        "product_id": 0xBEEF,
        "set_wor": 1,
        "temperature": 21.5,
    }


STORES: dict[str, list[dict[str, Any]]] = {
    "default": [make_detail("D-1", "default", FRESH)],
    "alpha": [make_detail(i, "alpha", FRESH) for i in ("A-1", "A-2", "A-3")],
    "beta": [make_detail("B-1", "beta", FRESH), make_detail("B-2", "beta", STALE)],
}
DETAILS = {d["esl_id"]: d for esls in STORES.values() for d in esls}
BASE_WRITTEN = {"alpha": ["A-1", "A-2", "A-3"], "beta": ["B-1"]}
BASE_REQUESTS = 9  # users, alpha pages 1-2, beta page 1, five details


def base_row(esl_id: str) -> tuple[str, ...]:
    d = DETAILS[esl_id]
    return (
        esl_id,
        d["user"],
        SERVER,
        str(CREATED),
        str(d["last_hb_time"]),
        "80",
        "2.13",
        f"shelf {esl_id}",
        "30",
        "2",
        "1.2.3",
        "r1",
        f"X-{esl_id}",
        "48879",
        "nebular",  # 0xBEEF: first byte 0xBE, (0xBE >> 1) & 3 == 3
        "1",
        "21.5",
        "1.0",
    )


def users_data() -> list[dict[str, str]]:
    return [{"user": code} for code in STORES]


def page_data(store: str, number: int) -> dict[str, Any]:
    esls = STORES[store]
    chunk = esls[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
    return {"total_page": -(-len(esls) // PAGE_SIZE), "esls": [{"esl_id": e["esl_id"]} for e in chunk]}


# --- scripted replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One raw HTTP response: status, headers and body bytes exactly as sent."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    chunked: bool = False  # no Content-Length: the size is only known by reading

    async def send(self, request: web.Request) -> web.StreamResponse:
        if not self.chunked:
            return web.Response(
                status=self.status, body=self.body, content_type=self.content_type, headers=self.headers
            )
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.content_type = self.content_type
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(self.body), 512):
            await response.write(self.body[start : start + 512])
        await response.write_eof()
        return response


def ok(data: Any, **envelope: Any) -> Reply:
    return Reply(json.dumps({"status_no": 0, "message": "success", **envelope, "data": data}).encode())


def raw(body: bytes | str, status: int = 200, content_type: str = "text/plain", **headers: str) -> Reply:
    data = body.encode() if isinstance(body, str) else body
    return Reply(data, status=status, content_type=content_type, headers=headers)


def page_with(store: str, number: int, **changes: Any) -> Reply:
    data = page_data(store, number)
    data.update(changes)
    return ok({k: v for k, v in data.items() if v is not DROP})


def detail_with(base: str, /, **changes: Any) -> Reply:
    data = {**DETAILS[base], **changes}
    return ok({k: v for k, v in data.items() if v is not DROP})


@dataclass(frozen=True)
class Script:
    """Replies for the first hits of one route; afterwards the fixture's own (``forever``: the last)."""

    replies: tuple[Reply, ...]
    forever: bool = False

    def reply_for(self, hit: int) -> Reply | None:
        if hit <= len(self.replies):
            return self.replies[hit - 1]
        return self.replies[-1] if self.forever else None


def always(reply: Reply) -> Script:
    return Script((reply,), forever=True)


def once(reply: Reply) -> Script:
    return Script((reply,))


# --- the server ----------------------------------------------------------------------------------


class FixtureServer:
    """The fixture over real HTTP, in a loop of its own thread; routes are keyed ``users``,
    ``page:{store}:{n}`` and ``detail:{esl_id}`` for scripts and hit counts."""

    def __init__(self) -> None:
        self.script: dict[str, Script] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bad-input-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_get("/api3/users", self._users)
        app.router.add_get("/api3/esls/{esl_id}", self._detail)
        app.router.add_get("/api3/{store}/esls/page/{n}", self._page)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def reset(self, script: Mapping[str, Script]) -> None:
        with self._lock:
            self.script = dict(script)
            self.hits = Counter()

    def total(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    async def _answer(self, request: web.Request, key: str, default: Reply) -> web.StreamResponse:
        with self._lock:
            self.hits[key] += 1
            scripted = self.script.get(key)
            reply = scripted.reply_for(self.hits[key]) if scripted else None
        return await (reply or default).send(request)

    async def _users(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "users", ok(users_data()))

    async def _page(self, request: web.Request) -> web.StreamResponse:
        store, number = request.match_info["store"], int(request.match_info["n"])
        default = ok(page_data(store, number)) if store in STORES else raw("no such store", 404)
        return await self._answer(request, f"page:{store}:{number}", default)

    async def _detail(self, request: web.Request) -> web.StreamResponse:
        esl_id = request.match_info["esl_id"]
        default = ok(DETAILS[esl_id]) if esl_id in DETAILS else raw("esl not found", 404)
        return await self._answer(request, f"detail:{esl_id}", default)


@pytest.fixture(scope="module")
def server() -> Iterator[FixtureServer]:
    with FixtureServer() as running:
        yield running


def target(url: str) -> ServerTarget:
    return ServerTarget(name=SERVER, base_url=url, auth=aiohttp.BasicAuth("api", PASSWORD))


# --- expected outcomes ---------------------------------------------------------------------------


def alpha(**changes: Any) -> StoreResult:
    return dataclasses.replace(
        StoreResult("alpha", rows=3, seen=3, pages_announced_first=2, pages_walked=2), **changes
    )


def beta(**changes: Any) -> StoreResult:
    return dataclasses.replace(
        StoreResult("beta", rows=1, seen=2, stale=1, pages_announced_first=1, pages_walked=1), **changes
    )


@dataclass(frozen=True)
class Expect:
    error: str | None = None  # the server's error, exact
    stores: tuple[StoreResult, ...] = (alpha(), beta())  # exact, counters and errors included
    written: Mapping[str, list[str]] = field(default_factory=lambda: BASE_WRITTEN)
    retries: int = 0
    requests: int = BASE_REQUESTS  # what the server saw (and the client counted)
    hits: Mapping[str, int] = field(default_factory=dict)  # per route, where it matters
    a3: Mapping[str, str] | None = None  # cells of A-3's row that differ from the fault-free row


@dataclass(frozen=True)
class Case:
    id: str
    override: Mapping[str, Script]
    expect: Expect
    settings: Mapping[str, Any] = field(default_factory=dict)
    xfail: str | None = None  # the code disagrees with RELIABILITY.md (reported)


def server_down(error: str, requests: int = 1, retries: int = 0) -> Expect:
    return Expect(error=f"{SERVER}: list stores: {error}", stores=(), written={}, retries=retries,
                  requests=requests, hits={"users": requests})  # fmt: skip


def alpha_failed(error: str, *, requests: int = 5, hits: int = 1, announced: int = 0) -> Expect:
    """alpha fails on page 1 (which ``announced`` pages, if it got that far): nothing of it is fetched
    further, no page counts as walked; beta is complete."""
    failed = alpha(
        rows=0, seen=0, error=f"{SERVER}: store 'alpha' page 1: {error}", pages_announced_first=announced
    )
    return Expect(
        stores=(dataclasses.replace(failed, pages_walked=0), beta()),
        written={"beta": ["B-1"]},
        requests=requests,
        hits={"page:alpha:1": hits, "page:alpha:2": 0, "detail:A-1": 0},
    )


def a3_invalid(reason: str) -> Expect:
    return Expect(
        stores=(alpha(rows=2, invalid=1, invalid_samples=[{"esl_id": "A-3", "reason": reason}]), beta()),
        written={"alpha": ["A-1", "A-2"], "beta": ["B-1"]},
        hits={"detail:A-3": 1},
    )


def a3_blanked(name: str, **cells: str) -> Expect:
    return Expect(stores=(alpha(blanked_fields={name: 1}), beta()), a3=cells, hits={"detail:A-3": 1})


def a3_kept(**cells: str) -> Expect:
    return Expect(a3=cells, hits={"detail:A-3": 1})


def bad_a3(**changes: Any) -> dict[str, Script]:
    """Every detail answer for A-3 carries ``changes``."""
    return {"detail:A-3": always(detail_with("A-3", **changes))}


def bad_p1(**changes: Any) -> dict[str, Script]:
    """Every answer for alpha's page 1 carries ``changes``."""
    return {"page:alpha:1": always(page_with("alpha", 1, **changes))}


def complete_after_retry(key: str) -> Expect:
    return Expect(retries=1, requests=BASE_REQUESTS + 1, hits={key: 2})


HTML_200 = "<html><body><h1>Maintenance</h1></body></html>"
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
GAVE_UP_500 = "HTTP 500: 'boom' (gave up after 3 attempts)"
PAST = "Wed, 21 Oct 2015 07:28:00 GMT"
P1 = page_data("alpha", 1)["esls"]
BIG = json.dumps({"status_no": 0, "data": {"total_page": 2, "esls": P1, "pad": "x" * 4000}}).encode()

CASES: list[Case] = [
    # --- /api3/users: any failure is the whole server's ------------------------------------------
    Case("users-data-not-a-list", {"users": always(ok({"user": "alpha"}))},
         server_down("'data' is a dict, not a list")),
    Case("users-entry-without-user", {"users": always(ok([{"user": "alpha"}, {"name": "x"}]))},
         server_down("entry without a store code: {'name': 'x'}")),
    Case("users-entry-empty-code", {"users": always(ok([{"user": ""}]))},
         server_down("entry without a store code: {'user': ''}")),
    Case("users-html-page-with-200", {"users": always(raw(HTML_200, content_type="text/html"))},
         server_down(f"body is not valid JSON: {HTML_200!r} (gave up after 3 attempts)", 3, 2)),
    Case("users-empty-body", {"users": always(raw(b"", content_type="application/json"))},
         server_down("body is not valid JSON: '' (gave up after 3 attempts)", 3, 2)),
    Case("users-json-not-an-object", {"users": always(raw(b"[]", content_type="application/json"))},
         server_down("response is a JSON list, not an object")),
    Case("users-data-missing", {"users": always(raw(b'{"status_no": 0}', content_type="application/json"))},
         server_down("response has no 'data'")),
    Case("users-status-no", {"users": always(ok(None, status_no=3, message="server busy"))},
         server_down("server error status_no=3: server busy (gave up after 3 attempts)", 3, 2)),
    Case("users-error-code", {"users": always(ok(None, error_code=17, error_msg="license expired"))},
         server_down("server error error_code=17: license expired (gave up after 3 attempts)", 3, 2)),
    Case("users-401", {"users": always(raw("unauthorized", 401))},
         server_down("HTTP 401: credentials of connection 'srv' refused")),
    Case("users-403", {"users": always(raw("forbidden", 403))},
         server_down("HTTP 403: credentials of connection 'srv' refused")),
    Case("users-404", {"users": always(raw("no api3 here", 404))}, server_down("HTTP 404: 'no api3 here'")),
    Case("users-500-every-time", {"users": always(raw("boom", 500))},
         server_down("HTTP 500: 'boom' (gave up after 3 attempts)", 3, 2)),
    Case("users-429-retry-after-0-then-ok", {"users": once(raw("slow down", 429, **{"Retry-After": "0"}))},
         complete_after_retry("users")),
    Case("users-503-retry-after-past-date-then-ok",
         {"users": once(raw("busy", 503, **{"Retry-After": PAST}))},
         complete_after_retry("users")),
    Case("users-status-no-once-then-ok", {"users": once(ok(None, status_no=9, message="busy"))},
         complete_after_retry("users")),
    # --- store pages: a failure is the store's ---------------------------------------------------
    Case("page-total-page-string", bad_p1(total_page="2"),
         alpha_failed("total_page is not a count: '2'")),
    Case("page-total-page-negative", bad_p1(total_page=-1),
         alpha_failed("total_page is not a count: -1")),
    Case("page-total-page-bool", bad_p1(total_page=True),
         alpha_failed("total_page is not a count: True")),
    Case("page-total-page-missing", bad_p1(total_page=DROP),
         alpha_failed("total_page is not a count: None")),
    Case("page-total-page-above-max-pages",
         bad_p1(total_page=1_000_000_000),
         alpha_failed("total_page 1000000000 exceeds the cap of 5 pages", announced=1_000_000_000),
         settings={"max_pages": 5}),
    Case("page-data-not-an-object", {"page:alpha:1": always(ok([1, 2]))},
         alpha_failed("'data' is a list, not an object")),
    Case("page-esls-a-dict", bad_p1(esls={"esl_id": "A-1"}),
         alpha_failed("'esls' is a dict, not a list")),
    Case("page-esls-null", bad_p1(esls=None),
         alpha_failed("'esls' is a NoneType, not a list", requests=5)),
    Case("page-2-repeats-page-1", {"page:alpha:2": always(page_with("alpha", 2, esls=P1))},
         Expect(stores=(alpha(rows=2, seen=2, error="srv: store 'alpha' page 2: repeats page 1"
                              " (a pagination loop on the server)", pages_walked=1), beta()),
                written={"alpha": ["A-1", "A-2"], "beta": ["B-1"]}, requests=8,
                hits={"page:alpha:2": 1, "detail:A-3": 0})),
    # page 2 says the store grew onto a 3rd page; page 3 then says 2 again (and is empty): followed both ways
    Case("page-2-announces-a-page-more", {"page:alpha:2": always(page_with("alpha", 2, total_page=3))},
         Expect(requests=BASE_REQUESTS + 1, hits={"page:alpha:2": 1, "page:alpha:3": 1})),
    Case("page-entry-without-esl-id", bad_p1(esls=[*P1, {"n": 1}]),
         Expect(stores=(alpha(invalid=1, invalid_samples=[{"esl_id": "None", "reason":
                "page 1: esl_id is missing or not a string ({'n': 1})"}]), beta()))),
    Case("page-entry-a-string", bad_p1(esls=[*P1, "A-9"]),
         Expect(stores=(alpha(invalid=1, invalid_samples=[{"esl_id": "None", "reason":
                "page 1: esl_id is missing or not a string ('A-9')"}]), beta()))),
    Case("page-entry-empty-esl-id", bad_p1(esls=[*P1, {"esl_id": ""}]),
         Expect(stores=(alpha(invalid=1, invalid_samples=[{"esl_id": "", "reason":
                "page 1: esl_id is missing or not a string ({'esl_id': ''})"}]), beta()))),
    Case("page-truncated-json-once", {"page:alpha:1": once(raw(b'{"status_no":0,"data":{"total_page":2,"es',
                                                             content_type="application/json"))},
         complete_after_retry("page:alpha:1")),
    Case("page-error-code-once", {"page:alpha:2": once(ok(None, error_code=5, error_msg="busy"))},
         complete_after_retry("page:alpha:2")),
    Case("page-404", {"page:alpha:1": always(raw("store not found", 404))},
         alpha_failed("HTTP 404: 'store not found'")),
    Case("page-400", {"page:alpha:1": always(raw("bad page", 400))}, alpha_failed("HTTP 400: 'bad page'")),
    Case("page-500-every-time", {"page:alpha:1": always(raw("boom", 500))},
         dataclasses.replace(alpha_failed("HTTP 500: 'boom' (gave up after 3 attempts)", requests=7, hits=3),
                             retries=2)),
    Case("page-body-over-cap", {"page:alpha:1": always(Reply(BIG))},
         alpha_failed(f"response of {len(BIG)} bytes exceeds the 2048-byte cap"),
         settings={"transport": dataclasses.replace(fast_transport(ATTEMPTS), max_body_bytes=2048)}),
    Case("page-body-over-cap-chunked", {"page:alpha:1": always(Reply(BIG, chunked=True))},
         alpha_failed("response exceeds the 2048-byte cap"),
         settings={"transport": dataclasses.replace(fast_transport(ATTEMPTS), max_body_bytes=2048)}),
    # --- ESL details: a bad detail is the label's, never the store's -----------------------------
    Case("detail-data-a-list", {"detail:A-3": always(ok([DETAILS["A-3"]]))},
         a3_invalid("detail 'data' is a list, not an object")),
    Case("detail-data-null", {"detail:A-3": always(ok(None))},
         a3_invalid("detail 'data' is a NoneType, not an object")),
    Case("detail-for-another-id", bad_a3(esl_id="Z-9"),
         a3_invalid("detail answered for esl_id 'Z-9'")),
    Case("detail-404-removed", {"detail:A-3": always(raw("esl not found", 404))},
         Expect(stores=(alpha(rows=2, removed=1, removed_ids=["A-3"]), beta()),
                written={"alpha": ["A-1", "A-2"], "beta": ["B-1"]}, hits={"detail:A-3": 1})),
    Case("detail-last-hb-string", bad_a3(last_hb_time="yesterday"),
         a3_invalid("last_hb_time: 'yesterday' is not an integer")),
    Case("detail-last-hb-missing", bad_a3(last_hb_time=DROP),
         a3_invalid("last_hb_time is missing")),
    Case("detail-last-hb-negative", bad_a3(last_hb_time=-5),
         a3_invalid("last_hb_time -5 is negative or in the far future")),
    Case("detail-last-hb-far-future", bad_a3(last_hb_time=FAR_FUTURE),
         a3_invalid(f"last_hb_time {FAR_FUTURE} is negative or in the far future")),
    Case("detail-battery-150", bad_a3(battery=150),
         a3_blanked("battery", battery="")),
    Case("detail-battery-n/a", bad_a3(battery="n/a"),
         a3_blanked("battery", battery="")),
    Case("detail-battery-87.0", bad_a3(battery=87.0), a3_kept(battery="87")),
    Case("detail-battery-'87'", bad_a3(battery="87"), a3_kept(battery="87")),
    Case("detail-refresh-times-12x", bad_a3(refresh_times="12x"),
         a3_blanked("refresh_times", refresh_times="", frequency="0.0")),
    Case("detail-led-times-negative", bad_a3(led_times=-2),
         a3_blanked("led_times", led_times="")),
    Case("detail-product-id-zz", bad_a3(product_id="zz"),
         a3_blanked("product_id", product_id="", chip_family="")),
    Case("detail-product-id-negative", bad_a3(product_id=-1),
         a3_blanked("product_id", product_id="", chip_family="")),
    Case("detail-product-id-beyond-2**53", bad_a3(product_id="9007199254740993"),
         a3_kept(product_id="9007199254740993", chip_family="stellarPro")),
    Case("detail-create-time-negative", bad_a3(create_time=-5),
         a3_blanked("create_time", create_time="", frequency="0.0")),
    Case("detail-temperature-dict", bad_a3(temperature={"c": 21}),
         a3_blanked("temperature", temperature="")),
    Case("detail-temperature-nan-literal",
         {"detail:A-3": always(raw(ok(DETAILS["A-3"]).body.replace(b"21.5", b"NaN"),
                                   content_type="application/json"))},
         a3_blanked("temperature", temperature="")),
    Case("detail-extra-unknown-fields", bad_a3(colour="red", x={"y": [1]}),
         a3_kept()),
    Case("detail-html-502-once", {"detail:A-3": once(raw(HTML_502, 502, content_type="text/html"))},
         complete_after_retry("detail:A-3")),
    Case("detail-500-every-time", {"detail:A-3": always(raw("boom", 500))},
         Expect(stores=(alpha(rows=2, seen=2, error=f"srv: ESL 'A-3': {GAVE_UP_500}"), beta()),
                written={"alpha": ["A-1", "A-2"], "beta": ["B-1"]}, retries=2, requests=11,
                hits={"detail:A-3": 3})),
]  # fmt: skip


def params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [],
        )
        for case in cases
    ]


def test_catalogue_ids_are_unique_and_large_enough() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 25


@pytest.mark.parametrize("case", params(CASES))
def test_malformed_response(server: FixtureServer, case: Case) -> None:
    server.reset(case.override)
    sink = ListSink()
    [result] = fetch_servers([target(server.url)], fetch_settings(**case.settings), sink, max_threads=1)
    expect = case.expect

    assert result.error == expect.error
    assert result.stores == list(expect.stores)
    assert sink.by_store() == expect.written
    assert len(sink.rows) == result.rows
    assert result.retries == expect.retries
    assert (server.total(), result.requests) == (expect.requests, expect.requests)
    assert {key: server.hits[key] for key in expect.hits} == dict(expect.hits)
    assert result.errors() == (
        [{"server": SERVER, "store": "", "error": expect.error}] * (expect.error is not None)
        + [{"server": SERVER, "store": s.store, "error": s.error} for s in expect.stores if s.error]
    )
    assert PASSWORD not in json.dumps(result.to_manifest())
    # Every row written is the fault-free row, except A-3's cells the case names.
    for row in sink.rows:
        expected = list(base_row(row[COL["esl_id"]]))
        if row[COL["esl_id"]] == "A-3":
            for name, value in (expect.a3 or {}).items():
                expected[COL[name]] = value
        assert list(row) == expected


# --- pure record rules: to_part_row --------------------------------------------------------------


@dataclass(frozen=True)
class RecordCase:
    id: str
    changes: Mapping[str, Any]
    cells: Mapping[str, str]  # cells that differ from the fault-free row
    issues: list[tuple[str, str]]
    xfail: str | None = None


RECORD_CASES: list[RecordCase] = [
    RecordCase("battery-150", {"battery": 150}, {"battery": ""}, [("battery", "150 is outside 0..100")]),
    RecordCase("battery-negative", {"battery": -1}, {"battery": ""}, [("battery", "-1 is outside 0..100")]),
    RecordCase("battery-n/a", {"battery": "n/a"}, {"battery": ""}, [("battery", "'n/a' is not an integer")]),
    RecordCase("battery-87.5", {"battery": 87.5}, {"battery": ""}, [("battery", "87.5 is not an integer")]),
    RecordCase("battery-true", {"battery": True}, {"battery": ""},
               [("battery", "True is a boolean, not an integer")]),
    RecordCase("battery-87.0", {"battery": 87.0}, {"battery": "87"}, []),
    RecordCase("battery-'87'", {"battery": "87"}, {"battery": "87"}, []),
    RecordCase("battery-missing", {"battery": DROP}, {"battery": ""}, []),
    RecordCase("refresh-times-12x", {"refresh_times": "12x"}, {"refresh_times": "", "frequency": "0.0"},
               [("refresh_times", "'12x' is not an integer")]),
    RecordCase("refresh-times-'45'", {"refresh_times": "45"}, {"refresh_times": "45", "frequency": "1.5"},
               []),
    RecordCase("product-id-zz", {"product_id": "zz"}, {"product_id": "", "chip_family": ""},
               [("product_id", "'zz' is not an integer")]),
    RecordCase("product-id-negative", {"product_id": -1}, {"product_id": "", "chip_family": ""},
               [("product_id", "-1 is outside 0..")]),
    RecordCase("product-id-zero", {"product_id": 0}, {"product_id": "0", "chip_family": ""}, []),
    RecordCase("create-time-negative", {"create_time": -5}, {"create_time": "", "frequency": "0.0"},
               [("create_time", f"-5 is outside 0..{MAX_EPOCH_MS}")]),
    RecordCase("create-time-far-future", {"create_time": MAX_EPOCH_MS + 1},
               {"create_time": "", "frequency": "0.0"},
               [("create_time", f"{MAX_EPOCH_MS + 1} is outside 0..{MAX_EPOCH_MS}")]),
    RecordCase("temperature-dict", {"temperature": {"c": 21}}, {"temperature": ""},
               [("temperature", "{'c': 21} is not a number")]),
    RecordCase("temperature-'warm'", {"temperature": "warm"}, {"temperature": ""},
               [("temperature", "'warm' is not a number")]),
    RecordCase("temperature-' 19.5 '", {"temperature": " 19.5 "}, {"temperature": "19.5"}, []),
    RecordCase("temperature-nan-float", {"temperature": float("nan")}, {"temperature": ""},
               [("temperature", "nan is not a number")]),
    RecordCase("unknown-fields", {"colour": "red", "nested": {"a": 1}}, {}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in RECORD_CASES
    ],
)
def test_record_field_rules(case: RecordCase) -> None:
    detail = {k: v for k, v in {**DETAILS["A-3"], **case.changes}.items() if v is not DROP}
    row, issues = to_part_row(detail, store="alpha", server=SERVER)
    expected = list(base_row("A-3"))
    for name, value in case.cells.items():
        expected[COL[name]] = value
    assert (list(row), issues) == (expected, case.issues)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"last_hb_time": DROP}, "last_hb_time is missing"),
        ({"last_hb_time": "soon"}, "last_hb_time: 'soon' is not an integer"),
        ({"last_hb_time": 1.5}, "last_hb_time: 1.5 is not an integer"),
        ({"last_hb_time": True}, "last_hb_time: True is a boolean, not an integer"),
        ({"last_hb_time": -1}, "last_hb_time -1 is negative or in the far future"),
        (
            {"last_hb_time": MAX_EPOCH_MS + 1},
            f"last_hb_time {MAX_EPOCH_MS + 1} is negative or in the far future",
        ),
    ],
    ids=["hb-missing", "hb-string", "hb-fraction", "hb-bool", "hb-negative", "hb-beyond-9999"],
)
def test_record_without_a_trustworthy_heartbeat_is_rejected(changes: dict[str, Any], reason: str) -> None:
    detail = {k: v for k, v in {**DETAILS["A-3"], **changes}.items() if v is not DROP}
    with pytest.raises(RecordError) as caught:
        to_part_row(detail, store="alpha", server=SERVER)
    assert (caught.value.esl_id, caught.value.reason) == ("A-3", reason)


# --- the aggregate step: what is published -------------------------------------------------------


def fetch_batch(server: FixtureServer, root: Path, script: Mapping[str, Script]) -> dict[str, Any]:
    server.reset(script)
    return run_batch(
        [target(server.url)], fetch_settings(), output_root=root, ds=DS, batch=0, anchor=ANCHOR, max_threads=1
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def beta_also_lists_a1() -> Script:
    esls = [{"esl_id": "B-1"}, {"esl_id": "B-2"}, {"esl_id": "A-1"}]
    return always(ok({"total_page": 1, "esls": esls}))


def test_same_esl_in_two_stores_keeps_the_latest_heartbeat(server: FixtureServer, tmp_path: Path) -> None:
    earlier = FRESH - 3_600_000
    # The label heartbeats between the two detail requests: whichever store asked first saw it older.
    script = {
        "page:beta:1": beta_also_lists_a1(),
        "detail:A-1": once(detail_with("A-1", last_hb_time=earlier)),
    }
    manifest = fetch_batch(server, tmp_path, script)
    assert (manifest["errors"], manifest["rows"]) == ([], 5)
    part = read_part(tmp_path / DS / "_parts" / "batch-0.arrow").to_pylist()
    a1 = {r["store"]: int(r["last_hb_time"]) for r in part if r["esl_id"] == "A-1"}
    assert sorted(a1.values()) == [earlier, FRESH]
    latest_store = max(a1, key=lambda store: a1[store])

    summary = aggregate_run([manifest], output_root=tmp_path, ds=DS)

    rows = read_csv(tmp_path / DS / "esl_id_part_1.csv")
    assert sorted((r["esl_id"], r["store"]) for r in rows) == [
        ("A-1", latest_store),
        ("A-2", "alpha"),
        ("A-3", "alpha"),
        ("B-1", "beta"),
    ]
    assert [r["last_heartbeat_at"] for r in rows if r["esl_id"] == "A-1"] == [iso(FRESH)]
    run = json.loads((tmp_path / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert (run["duplicates_dropped"], run["failed_store_rows_dropped"], run["rows"]) == (1, 0, 4)
    assert run["partitions"][0]["dropped_duplicate_rows"] == 1
    assert summary["rows"] == 4
    assert (tmp_path / DS / "_SUCCESS").exists()


def test_same_esl_in_two_stores_with_equal_heartbeat_keeps_the_first_store_by_name(
    server: FixtureServer, tmp_path: Path
) -> None:
    manifest = fetch_batch(server, tmp_path, {"page:beta:1": beta_also_lists_a1()})
    assert (manifest["errors"], manifest["rows"]) == ([], 5)
    aggregate_run([manifest], output_root=tmp_path, ds=DS)
    rows = read_csv(tmp_path / DS / "esl_id_part_1.csv")
    assert [(r["esl_id"], r["store"]) for r in rows if r["esl_id"] == "A-1"] == [("A-1", "alpha")]
    run = json.loads((tmp_path / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert (run["duplicates_dropped"], run["rows"], run["rows_by_store"]) == (
        1,
        4,
        {SERVER: {"alpha": 3, "beta": 1}},
    )


def test_failed_store_partial_rows_are_not_published(server: FixtureServer, tmp_path: Path) -> None:
    error = "srv: store 'alpha' page 2: HTTP 500: 'boom' (gave up after 3 attempts)"
    manifest = fetch_batch(server, tmp_path, {"page:alpha:2": always(raw("boom", 500))})
    # The part holds alpha's page 1 and B-1; the manifest names alpha's failure.
    assert manifest["rows"] == 3
    assert manifest["errors"] == [{"server": SERVER, "store": "alpha", "error": error}]
    assert manifest["servers"][SERVER]["retries"] == 2

    # on_server_error=skip: the aggregate runs with the manifest that carries the error.
    summary = aggregate_run([manifest], output_root=tmp_path, ds=DS)

    rows = read_csv(tmp_path / DS / "esl_id_part_1.csv")
    assert [(r["esl_id"], r["store"]) for r in rows] == [("B-1", "beta")]
    run = json.loads((tmp_path / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert (run["failed_store_rows_dropped"], run["duplicates_dropped"], run["rows"]) == (2, 0, 1)
    assert run["partitions"][0]["dropped_failed_store_rows"] == 2
    assert run["errors"] == [{"server": SERVER, "store": "alpha", "error": error}]
    assert run["rows_by_store"] == {SERVER: {"beta": 1}}
    assert run["retries"] == 2
    assert summary["errors"] == 1
    assert (tmp_path / DS / "_SUCCESS").exists()


def test_removed_blanked_and_stale_reach_the_run_manifest(server: FixtureServer, tmp_path: Path) -> None:
    script = {
        "detail:A-3": always(raw("esl not found", 404)),
        "detail:A-2": always(detail_with("A-2", battery=150)),
    }
    manifest = fetch_batch(server, tmp_path, script)
    aggregate_run([manifest], output_root=tmp_path, ds=DS)
    run = json.loads((tmp_path / DS / "_manifest.json").read_text(encoding="utf-8"))
    assert run["removed_labels"] == {
        "count": 1,
        "listed": [{"server": SERVER, "store": "alpha", "esl_id": "A-3"}],
    }
    assert run["blanked_fields"] == {"battery": 1}
    assert (run["stale_labels"], run["invalid_records"], run["rows"]) == (1, {"count": 0, "listed": []}, 3)
    rows = read_csv(tmp_path / DS / "esl_id_part_1.csv")
    assert {r["esl_id"]: r["battery"] for r in rows} == {"A-1": "80", "A-2": "", "B-1": "80"}


def test_part_missing_a_row_fails_the_aggregate_and_publishes_nothing_new(
    server: FixtureServer, tmp_path: Path
) -> None:
    manifest = fetch_batch(server, tmp_path, {})
    aggregate_run([manifest], output_root=tmp_path, ds=DS)
    folder = tmp_path / DS
    published = (folder / "esl_id_part_1.csv").read_bytes()
    run_manifest = (folder / "_manifest.json").read_bytes()
    assert (folder / "_SUCCESS").exists()
    part = folder / "_parts" / "batch-0.arrow"
    rows = read_part(part)
    assert rows.num_rows == 4
    with PartWriter(part) as writer:  # the same part, one row short
        writer.write_rows([tuple(r.values()) for r in rows.slice(0, 3).to_pylist()])

    with pytest.raises(AggregateError) as caught:
        aggregate_run([manifest], output_root=tmp_path, ds=DS)

    assert str(caught.value) == "batch 0: part file has 3 rows, its fetch task reported 4"
    assert not (folder / "_SUCCESS").exists()  # withdrawn when the run started
    assert (folder / "esl_id_part_1.csv").read_bytes() == published
    assert (folder / "_manifest.json").read_bytes() == run_manifest


def test_fixture_is_fault_free(server: FixtureServer) -> None:
    """The baseline every case deviates from: 4 rows, 9 requests, no retries."""
    server.reset({})
    sink = ListSink()
    [result] = fetch_servers([target(server.url)], fetch_settings(), sink, max_threads=1)
    assert isinstance(result, ServerResult)
    assert (result.error, result.stores, result.retries, result.requests) == (
        None,
        [alpha(), beta()],
        0,
        BASE_REQUESTS,
    )
    assert sorted(sink.rows) == [base_row(i) for i in ("A-1", "A-2", "A-3", "B-1")]
