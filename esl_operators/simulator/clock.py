"""The simulator's clock: a fleet as it is on one day (``build_fleet(..., as_of=day)``).

The static fleet of :mod:`.dataset` is one snapshot relative to a reference instant, so every day would
look the same. With a clock, a base fleet is built once at the fixed :data:`CLOCK_EPOCH` and every label
gets a life around it, evaluated on the asked day:

* battery: drains at the label's own rate (a few fast drainers lose 5-15 points a day), and is replaced
  (back to 100) when empty;
* heartbeats: a live label's last heartbeat is in the hours before the day's midnight UTC; dead labels
  stopped long ago; flaky labels go silent for a while (their ``last_hb_time`` stops moving, so after 7
  days they leave the heartbeat window) and come back; a silent label reports the battery and refresh
  count of its last heartbeat; two labels sit exactly on and 1 ms past the 7-day boundary;
* labels are removed and others added: churn slots swap their label for one with a new id every few
  weeks, sometimes after a few days with no label;
* movers go back and forth between two stores;
* firmware: every :data:`UPGRADE_EVERY_DAYS` days one store of the fleet is upgraded (all its labels
  report the new version from that day on).

Everything is a pure function of (seed, sizes, day): no state carries from one day to the next, so days
can be asked for in any order, and a run for date D against the fleet as of D sees what that day's
scheduled run would (heartbeats relative to midnight UTC of D, the run's anchor).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: The day the base fleet is built at; the clock is meant for days after it.
CLOCK_EPOCH = dt.date(2020, 1, 1)
UPGRADE_EVERY_DAYS = 10
#: Ids a churn slot cycles through (a label id comes back after this many replacements).
CHURN_GENERATIONS = 64
FULL_BATTERY = 100.0

_MASK = (1 << 64) - 1


def day_number(day: dt.date) -> int:
    """Days from :data:`CLOCK_EPOCH` to ``day``."""
    return (day - CLOCK_EPOCH).days


def midnight_ms(n: int) -> int:
    """Epoch milliseconds of midnight UTC starting day number ``n``."""
    epoch = dt.datetime(CLOCK_EPOCH.year, CLOCK_EPOCH.month, CLOCK_EPOCH.day, tzinfo=dt.UTC)
    return int(epoch.timestamp()) * 1000 + n * DAY_MS


def churn_slots(real_labels: int) -> int:
    """How many of a server's labels are churn slots (each needs :data:`CHURN_GENERATIONS` ids)."""
    return max(1, real_labels * 4 // 100) if real_labels else 0


def _mix(salt: int, a: int, b: int) -> int:
    """A 64-bit hash of (salt, a, b) (splitmix64 finaliser): per-day values without an RNG per label."""
    x = (salt ^ (a * 0x9E3779B97F4A7C15) ^ (b * 0xD1B54A32D192ED03)) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class _Life:
    rate: float  # battery points per day
    phase: float  # days into the battery's life at day 0
    refresh_rate: int  # screen refreshes per day
    kind: str  # "live", "dead", "boundary_in", "boundary_out"
    skewed: bool = False  # clock skew: heartbeats up to a day in the future
    flaky: tuple[int, int, int] | None = None  # (period, phase, silent days)
    mover: tuple[int, int, str] | None = None  # (period, phase, other store)
    churn: tuple[int, int, int, int] | None = None  # (period, phase, days empty, slot number)


def _draw_lives(rng: random.Random, slots: Sequence[tuple[str, dict[str, Any]]]) -> list[_Life]:
    """Each label's life, drawn once per server in slot order (so the same for every day)."""
    n = len(slots)
    stores = sorted({code for code, _ in slots})
    perm = list(range(n))
    rng.shuffle(perm)
    cuts = [churn_slots(n), n * 20 // 100, 2, max(1, n * 15 // 100), max(1, n * 2 // 100), n // 100]
    groups: list[set[int]] = []
    start = 0
    for size in cuts:
        groups.append(set(perm[start : start + size]))
        start += size
    churn, dead, boundary, flaky, movers, skewed = groups
    fast = set(rng.sample(range(n), min(n, max(1, n * 3 // 100)))) if n else set()
    lives: list[_Life] = []
    churned = 0
    boundary_kinds = iter(("boundary_in", "boundary_out"))
    for k, (code, _) in enumerate(slots):
        rate = rng.uniform(5.0, 15.0) if k in fast else rng.uniform(0.05, 0.6)
        phase = rng.uniform(0.0, FULL_BATTERY / rate)
        kind = "dead" if k in dead else next(boundary_kinds) if k in boundary else "live"
        life = _Life(rate, phase, rng.randrange(40), kind, skewed=k in skewed)
        if k in flaky:
            period = rng.randrange(15, 46)
            life = replace(life, flaky=(period, rng.randrange(period), rng.randrange(2, period - 4)))
        others = [s for s in stores if s != code]
        if k in movers and others:
            period = rng.randrange(16, 61)
            life = replace(life, mover=(period, rng.randrange(period), rng.choice(others)))
        if k in churn:
            # Numbered in slot order: churn slot j owns the ids j * CHURN_GENERATIONS onwards.
            period = rng.randrange(20, 61)
            life = replace(life, churn=(period, rng.randrange(period), rng.randrange(6), churned))
            churned += 1
        lives.append(life)
    return lives


def firmware_versions(candidates: Sequence[tuple[int, str]], salt: int, n: int) -> dict[tuple[int, str], str]:
    """The firmware of every upgraded (server index, store) on day ``n``: the latest upgrade wins."""
    versions: dict[tuple[int, str], str] = {}
    if not candidates:
        return versions
    for k in range(n // UPGRADE_EVERY_DAYS + 1) if n >= 0 else ():
        versions[candidates[_mix(salt, k, 0) % len(candidates)]] = f"7.0.{k}"
    return versions


def servers_as_of(
    bases: Sequence[tuple[dict[str, list[dict[str, Any]]], Callable[[int], str]]],
    *,
    as_of: dt.date,
    seed: int,
    first_churn_id: int,
    default_store: str,
) -> list[dict[str, list[dict[str, Any]]]]:
    """Every server's stores on day ``as_of``, from the base servers' stores and label-id functions."""
    candidates = sorted(
        (i, code)
        for i, (stores, _) in enumerate(bases)
        for code, labels in stores.items()
        if code != default_store and labels
    )
    n = day_number(as_of)
    versions = firmware_versions(candidates, random.Random(f"{seed}-clock-firmware").getrandbits(64), n)
    return [
        server_as_of(
            i,
            stores,
            rng=random.Random(f"{seed}-{i}-clock"),
            id_of=id_of,
            first_churn_id=first_churn_id,
            versions=versions,
            n=n,
            default_store=default_store,
        )
        for i, (stores, id_of) in enumerate(bases)
    ]


def server_as_of(
    index: int,
    stores: dict[str, list[dict[str, Any]]],
    *,
    rng: random.Random,
    id_of: Callable[[int], str],
    first_churn_id: int,
    versions: dict[tuple[int, str], str],
    n: int,
    default_store: str,
) -> dict[str, list[dict[str, Any]]]:
    """One server's stores (code -> labels in page order) on day number ``n``, from its base stores."""
    slots = [(code, esl) for code, esls in stores.items() if code != default_store for esl in esls]
    lives = _draw_lives(rng, slots)
    salt = rng.getrandbits(64)
    now = midnight_ms(n)
    out: dict[str, list[dict[str, Any]]] = {code: [] for code in stores}
    out[default_store] = [dict(esl) for esl in stores.get(default_store, [])]
    for k, ((home, base), life) in enumerate(zip(slots, lives, strict=True)):
        esl = dict(base)
        born = None  # day a churn label was installed
        if life.churn is not None:
            period, phase, empty_days, slot = life.churn
            pos = (n + phase) % period
            if pos < empty_days:  # removed, the replacement not installed yet
                continue
            generation = (n + phase) // period
            born = n - pos + empty_days
            esl["esl_id"] = id_of(first_churn_id + slot * CHURN_GENERATIONS + generation % CHURN_GENERATIONS)

        def beat(day: int, life: _Life = life, k: int = k) -> int:
            jitter = 60_000 + _mix(salt, k, day) % (12 * HOUR_MS)
            return midnight_ms(day) + (jitter if life.skewed else -jitter)

        seen = n  # the day of the label's last heartbeat
        if life.kind == "dead" and born is None:
            last_hb = min(base["last_hb_time"], now - 8 * DAY_MS)
            seen = (last_hb - midnight_ms(0)) // DAY_MS
        elif life.kind.startswith("boundary"):
            last_hb = now - 7 * DAY_MS - (1 if life.kind == "boundary_out" else 0)
            seen = n - 7
        else:
            last_hb = beat(n)
            if life.flaky is not None:
                period, phase, silent_days = life.flaky
                pos = (n + phase) % period
                if 1 <= pos <= silent_days and (born is None or n - pos >= born):
                    seen = n - pos
                    last_hb = beat(seen)
        if born is not None:
            created = beat(born) - 60_000 - _mix(salt, k, born + 1) % (6 * HOUR_MS)
            used = (seen - born) % (FULL_BATTERY / life.rate)
            refreshes = life.refresh_rate * (seen - born)
        else:
            created = base["create_time"]
            used = (seen + life.phase) % (FULL_BATTERY / life.rate)
            refreshes = base["refresh_times"] + life.refresh_rate * max(0, seen)
        battery = max(0, min(100, int(FULL_BATTERY - life.rate * used)))
        store = home
        if life.mover is not None:
            period, phase, other = life.mover
            store = other if (n + phase) % period >= period // 2 else home
        esl.update(
            user=store,
            last_hb_time=last_hb,
            create_time=min(created, last_hb),
            battery=str(battery) if isinstance(base["battery"], str) else battery,
            refresh_times=refreshes,
            firmware=versions.get((index, store), base["firmware"]),
        )
        out[store].append(esl)
    return out
