"""Deterministic synthetic data for simulated Hanshow ESL-Working servers (the clock: :mod:`.clock`).

Everything here is pure data: tests and benchmarks compute the expected export from a
:class:`Fleet` directly, while :mod:`.server` serves the very same objects over HTTP.
The data deliberately contains the awkward cases seen on real servers (odd store codes,
mixed value types, missing keys, time-zone boundary timestamps) so clients are exercised
against them. Longer than most modules: the store layout, the label generator and their
checks are one set of rules that tests rely on together.

Longer than most modules: the static fleet and the per-seed rules that the clock builds on stay
together so that expected rows (tests/expected.py) have one source to be checked against.
"""

from __future__ import annotations

import datetime as dt
import gc
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import clock

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# Always present on real servers; holds a few labels but is not a real store, so clients
# must skip it.
DEFAULT_STORE = "default"
DEFAULT_STORE_ESLS = 3

# Store codes that break clients which forget to percent-encode path segments exactly once:
# a space, non-ASCII, a literal "%" and a literal "%20" sequence.
AWKWARD_STORE_CODES = ("Store 12", "上海.001", "50%off", "A%20B")

# ESL ids are 4 hex bytes: 1 byte for the server, 3 bytes (scrambled counter) per ESL. The server
# byte wraps after 256 servers, so in a larger fleet an id is unique per server only, as on real
# fleets (a label is a (server, esl_id) pair; the aggregate step de-duplicates on that pair).
MAX_SERVERS = 4096
MAX_ESLS_PER_SERVER = (1 << 24) - DEFAULT_STORE_ESLS

# Pools are indexed with random bits, so their lengths are powers of two.
_SCREEN_SIZES = ("1.54", "2.13", "2.13", "2.13", "2.9", "2.9", "4.2", "7.5")
_FIRMWARES = ("5.3.12", "5.3.12", "5.4.0", "5.4.1", "6.0.3", "4.9.27", "5.3.12", "6.1.0")
_ROMS = ("HS-ROM-1.7", "HS-ROM-1.8", "HS-ROM-2.0", "HS-ROM-2.0b")
_SET_WOR = (0, 0, 1, 2)
_CITIES = ("Berlin", "Lyon", "Milano", "Shanghai", "Wien", "Porto", "Zürich", "Kraków")
# Descriptions include CSV-hostile characters (commas, quotes) and non-ASCII text.
_DESCRIPTION_TEMPLATES = (
    "Aisle {a} bay {b}",
    "Shelf {a}/{b}",
    'Promo "2 for 1", aisle {a}',
    "Kühlregal {a}-{b}",
    "冷藏 {a} 号",
    "Endcap {a}",
    "Bakery, counter {b}",
    "Fruit & veg {a}.{b}",
)
_DESCRIPTION_POOL_SIZE = 512


def reference_ms_for(day: dt.date) -> int:
    """Epoch milliseconds of midnight UTC starting ``day`` (the CLI's reference instant)."""
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int(midnight.timestamp()) * 1000


def envelope(
    server_index: int, data: Any = None, *, code: int = 0, message: str = "success"
) -> dict[str, Any]:
    """Response envelope in the style of one server.

    Real deployments run different ESL-Working versions: even-indexed simulated servers use
    ``error_code``/``error_msg``, odd ones ``status_no``/``message``.
    """
    if server_index % 2 == 0:
        return {"error_code": code, "error_msg": message, "data": data}
    return {"status_no": code, "message": message, "data": data}


@dataclass(frozen=True)
class ServerData:
    """All data of one simulated server.

    ``stores`` maps store code -> ESL detail dicts in page order; the dict's insertion order
    is the order of ``users`` (including the ``default`` store).
    """

    index: int
    stores: dict[str, list[dict[str, Any]]]
    users: list[dict[str, Any]]
    _by_id: dict[str, dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once so detail look-ups by id are O(1) on the hot request path.
        index = {esl["esl_id"]: esl for esls in self.stores.values() for esl in esls}
        object.__setattr__(self, "_by_id", index)

    def detail(self, esl_id: str) -> dict[str, Any] | None:
        """The detail dict of ``esl_id``, or ``None`` if this server does not have it."""
        return self._by_id.get(esl_id)

    @property
    def esl_count(self) -> int:
        """Number of ESLs on the server, the ``default`` store included."""
        return len(self._by_id)

    @property
    def real_stores(self) -> dict[str, list[dict[str, Any]]]:
        """All stores except ``default`` (what a correct client exports)."""
        return {code: esls for code, esls in self.stores.items() if code != DEFAULT_STORE}


@dataclass(frozen=True)
class Fleet:
    servers: list[ServerData]
    page_size: int
    reference_ms: int
    #: The clock's day (see :mod:`.clock`), or None for the static fleet.
    as_of: dt.date | None = None


def max_esls(as_of: dt.date | None) -> int:
    """The most ESLs per server: a fleet with a clock needs spare ids for the labels it adds."""
    if as_of is None:
        return MAX_ESLS_PER_SERVER
    # esls + churn_slots(esls) * CHURN_GENERATIONS ids must fit beside the default store's.
    limit = MAX_ESLS_PER_SERVER * 100 // (100 + 4 * clock.CHURN_GENERATIONS)
    assert limit + clock.churn_slots(limit) * clock.CHURN_GENERATIONS <= MAX_ESLS_PER_SERVER
    return limit


def build_fleet(
    *,
    servers: int,
    stores: int,
    esls: int,
    page_size: int = 50,
    seed: int = 1,
    reference_ms: int | None = None,
    as_of: dt.date | None = None,
) -> Fleet:
    """Build a deterministic fleet: same arguments, same data (independent of PYTHONHASHSEED).

    ``stores`` and ``esls`` are per server and do not count the ``default`` store. Give either
    ``reference_ms`` (the static fleet: timestamps relative to that instant, the same every day) or
    ``as_of`` (the fleet as it is on that day, see :mod:`.clock`; ``reference_ms`` is then its
    midnight UTC).
    """
    if as_of is not None:
        if reference_ms is not None and reference_ms != reference_ms_for(as_of):
            raise ValueError("reference_ms must be midnight UTC of as_of when both are given")
        reference_ms = reference_ms_for(as_of)
    if reference_ms is None:
        raise ValueError("give reference_ms (a static fleet) or as_of (a fleet on that day)")
    if not 0 < servers <= MAX_SERVERS:
        raise ValueError(f"servers must be in 1..{MAX_SERVERS}")
    if not 0 <= esls <= max_esls(as_of):
        suffix = " with as_of" if as_of is not None else ""
        raise ValueError(f"esls must be in 0..{max_esls(as_of)}{suffix}")
    if stores < 0 or (stores == 0 and esls > 0):
        raise ValueError("stores must be >= 0, and > 0 when esls > 0")
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    # Millions of fresh acyclic dicts would trigger many useless GC passes (~20% of the time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if as_of is None:
            built = []
            for i in range(servers):
                rng = random.Random(f"{seed}-{i}")
                store_map, users, _ = _build_server(i, rng, stores, esls, page_size, reference_ms)
                built.append(ServerData(index=i, stores=store_map, users=users))
        else:
            # The base fleet is built at the clock's epoch, then lived forward to as_of.
            epoch_ms = reference_ms_for(clock.CLOCK_EPOCH)
            bases = [
                _build_server(i, random.Random(f"{seed}-{i}"), stores, esls, page_size, epoch_ms)
                for i in range(servers)
            ]
            lived = clock.servers_as_of(
                [(store_map, id_of) for store_map, _, id_of in bases],
                as_of=as_of,
                seed=seed,
                first_churn_id=esls + DEFAULT_STORE_ESLS,
                default_store=DEFAULT_STORE,
            )
            built = [
                ServerData(index=i, stores=store_map, users=users)
                for i, (store_map, (_, users, _)) in enumerate(zip(lived, bases, strict=True))
            ]
    finally:
        if gc_was_enabled:
            gc.enable()
    return Fleet(servers=built, page_size=page_size, reference_ms=reference_ms, as_of=as_of)


def _store_plan(stores: int, esls: int, page_size: int, rng: random.Random) -> list[tuple[str, int]]:
    """(code, esl count) per store, in slot order, before shuffling."""
    if stores == 0:
        return []
    # One store is empty whenever there are at least two; with 5+ stores all awkward codes
    # exist too. Slot 0 gets an exact multiple of page_size when that leaves every other
    # store at least one ESL.
    empty_slot = min(len(AWKWARD_STORE_CODES), stores - 1) if stores >= 2 else None
    codes = [
        AWKWARD_STORE_CODES[k] if k < len(AWKWARD_STORE_CODES) and k != empty_slot else f"S{k + 1:04d}"
        for k in range(stores)
    ]
    others = [k for k in range(1, stores) if k != empty_slot]
    counts = [0] * stores
    if not others:
        counts[0] = esls
    else:
        first = 0
        for pages in (2, 1):
            if esls >= pages * page_size + len(others):
                first = pages * page_size
                break
        if first == 0:
            first = min(esls, 1 + rng.randrange(max(1, esls // (len(others) + 1))))
        counts[0] = first
        for k, n in zip(others, _uneven_split(esls - first, len(others), rng), strict=True):
            counts[k] = n
    return list(zip(codes, counts, strict=True))


def _uneven_split(total: int, parts: int, rng: random.Random) -> list[int]:
    """Split ``total`` into ``parts`` deliberately uneven counts (each >= 1 if possible)."""
    base = 1 if total >= parts else 0
    rest = total - base * parts
    # Squared uniforms give a skewed size distribution, like real store sizes.
    weights = [rng.random() ** 2 + 0.02 for _ in range(parts)]
    scale = rest / sum(weights)
    counts = [base + int(w * scale) for w in weights]
    for _ in range(total - sum(counts)):
        counts[rng.randrange(parts)] += 1
    return counts


def _build_server(
    index: int, rng: random.Random, stores: int, esls: int, page_size: int, reference_ms: int
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], Callable[[int], str]]:
    """A server's stores and users, and the id of counter value n (the clock adds labels with it)."""
    plan = _store_plan(stores, esls, page_size, rng)
    plan.append((DEFAULT_STORE, DEFAULT_STORE_ESLS))
    # Real servers list stores in no particular order; "default" is not always first.
    rng.shuffle(plan)

    # Scramble the per-server counter bijectively (odd multiplier mod 2**24) so page order
    # is not id order: clients must sort themselves.
    multiplier = rng.getrandbits(24) | 1
    offset = rng.getrandbits(24)
    prefix = f"{(0x51 + index) & 0xFF:02X}-"
    descriptions = [
        rng.choice(_DESCRIPTION_TEMPLATES).format(a=rng.randrange(1, 40), b=rng.randrange(1, 99))
        for _ in range(_DESCRIPTION_POOL_SIZE)
    ]

    def id_of(n: int) -> str:
        m = (n * multiplier + offset) & 0xFFFFFF
        return f"{prefix}{m >> 16:02X}-{(m >> 8) & 0xFF:02X}-{m & 0xFF:02X}"

    counter = 0
    store_map: dict[str, list[dict[str, Any]]] = {}
    users: list[dict[str, Any]] = []
    for code, count in plan:
        esl_ids = []
        for n in range(counter, counter + count):  # id_of inlined: millions of labels in benchmarks
            m = (n * multiplier + offset) & 0xFFFFFF
            esl_ids.append(f"{prefix}{m >> 16:02X}-{(m >> 8) & 0xFF:02X}-{m & 0xFF:02X}")
        counter += count
        store_map[code] = [_make_esl(rng, esl_id, code, reference_ms, descriptions) for esl_id in esl_ids]
        users.append(_make_user(rng, code, reference_ms))

    _plant_lookback_boundary(rng, store_map, reference_ms)
    return store_map, users, id_of


def _make_user(rng: random.Random, code: str, reference_ms: int) -> dict[str, Any]:
    name = "Default" if code == DEFAULT_STORE else f"{rng.choice(_CITIES)} {code}"
    return {"user": code, "name": name, "create_time": reference_ms - rng.randrange(30, 2000) * DAY_MS}


def _make_esl(
    rng: random.Random, esl_id: str, store: str, reference_ms: int, descriptions: list[str]
) -> dict[str, Any]:
    # Hot path (millions of calls in benchmarks): categorical fields are cut from one 64-bit
    # draw instead of many rng calls.
    bits = rng.getrandbits(64)
    battery: int | str = (bits & 0x7F) % 101
    if (bits >> 7) & 0xFF < 13:  # ~5%: some firmware reports the battery as a string
        battery = str(battery)
    description = None if (bits >> 15) & 0xFF < 26 else descriptions[(bits >> 23) & 0x1FF]

    product_roll = (bits >> 32) & 0xFF
    product_id: int | None
    if product_roll < 13:
        product_id = 0
    elif product_roll < 26:
        product_id = None
    else:
        # Hex width 1..4 digits, so "%X" of it varies in length (5 -> "5", 0xBEEF -> "BEEF").
        digits = 1 + ((bits >> 40) & 0x3)
        low = 1 if digits == 1 else 16 ** (digits - 1)
        product_id = low + int(rng.random() * (16**digits - low))

    # Heartbeats from 1 day in the future (clock skew) to 20 days ago.
    last_hb = reference_ms - int(rng.random() * 21 * DAY_MS) + DAY_MS
    if (bits >> 42) & 0xFF < 13:  # ~5%: created a few hours earlier on the same UTC day
        create = last_hb - int(rng.random() * min(last_hb % DAY_MS, 6 * HOUR_MS))
    else:
        create = last_hb - int(rng.random() * 400 * DAY_MS)

    # Second draw for the remaining fields, so no two fields share bits (no correlations).
    more = rng.getrandbits(64)
    esl: dict[str, Any] = {
        "esl_id": esl_id,
        "user": store,
        "last_hb_time": last_hb,
        "create_time": create,
        "battery": battery,
        "screen_size": _SCREEN_SIZES[(bits >> 50) & 0x7],
        "description": description,
        "refresh_times": (more >> 47) & 0x1FFF,
        "led_times": 0 if (bits >> 53) & 0x1 else (bits >> 54) & 0x3FF,
        "firmware": _FIRMWARES[more & 0x7],
        "rom": _ROMS[(more >> 3) & 0x3],
        "extesl_id": f"EXT{(more >> 7) & 0xFFFFFF:06X}" if (more >> 5) & 0x3 == 0 else "",
        "product_id": product_id,
        "set_wor": _SET_WOR[(more >> 31) & 0x3],
    }
    if (more >> 33) & 0xFF >= 26:  # ~10% of labels do not report a temperature at all
        esl["temperature"] = ((more >> 41) & 0x3F) % 41 - 5
    return esl


def _plant_lookback_boundary(
    rng: random.Random, store_map: dict[str, list[dict[str, Any]]], reference_ms: int
) -> None:
    """Put one ESL exactly on a 7-day lookback boundary and one 1 ms past it."""
    candidates = [esl for code, esls in store_map.items() if code != DEFAULT_STORE for esl in esls]
    if not candidates:
        return
    boundary = reference_ms - 7 * DAY_MS
    picked = rng.sample(candidates, min(2, len(candidates)))
    for esl, last_hb in zip(picked, (boundary, boundary - 1), strict=False):
        esl["last_hb_time"] = last_hb
        esl["create_time"] = last_hb - int(rng.random() * 400 * DAY_MS)
