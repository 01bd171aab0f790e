"""Deterministic fault injection for the simulated ESL-Working servers.

Every decision is a pure function of the profile's ``seed`` and a key (a request path or an
ESL id), so tests can compute from the dataset alone exactly which requests fail and how, and
two runs with the same profile fail identically (independent of ``PYTHONHASHSEED``).

Request paths are keyed by ``request.path`` as the server sees it: percent-decoded exactly
once, without the query string, e.g. ``/api3/Store 12/esls/page/2`` or ``/api3/esls/51-0A-1B-2C``.
A retry of the same resource therefore maps to the same key, which is what makes
"fails on its first attempt only" work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataset import ServerData

TRANSIENT_KINDS = ("503", "429", "reset", "truncated", "envelope")
# Where a store changed while paged gains (or loses) its labels.
GROW_ENDS = ("front", "end")
# Keys of ``Stats.injected``: one counter per fault class the server can inject.
INJECTED_KINDS = (*TRANSIENT_KINDS, "slow", "removed", "wrong_types", "unauthorized", "grown")

# One salt per fault class, so the classes are selected independently of each other.
_SALT_TRANSIENT = "transient"
_SALT_KIND = "kind"
_SALT_SLOW = "slow"
_SALT_REMOVED = "removed"
_SALT_WRONG_TYPES = "wrong-types"


def _unit(seed: int, salt: str, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (no dependency on ``hash()``)."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def retry_after_text(seconds: float) -> str:
    """``Retry-After`` header value: whole seconds as an integer ("2"), otherwise "0.5"."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


@dataclass(frozen=True)
class FaultProfile:
    """Which faults one simulated server injects. The default profile injects nothing."""

    seed: int = 0
    # Fraction of request paths that fail on their first attempt only.
    transient_rate: float = 0.0
    # The kind of a failing path is chosen deterministically per path among these.
    transient_kinds: tuple[str, ...] = TRANSIENT_KINDS
    # Retry-After header value sent with 429 and 503 faults.
    retry_after_s: float = 0.0
    # Fraction of paths whose first attempt is delayed by slow_ms.
    slow_rate: float = 0.0
    slow_ms: float = 0.0
    # Fraction of ESL ids (still listed in pages) whose detail is always 404.
    removed_rate: float = 0.0
    # Fraction of ESL ids whose detail always has wrong field types (see mangle).
    wrong_types_rate: float = 0.0
    # Every request answers 401.
    unauthorized: bool = False
    # (login, password): requests without exactly this HTTP basic auth answer 401, like a server
    # with an API account. None: no authentication, as most in-store servers.
    credentials: tuple[str, str] | None = None
    # The server does not accept connections at all.
    down: bool = False
    # A store that changes while it is paged: right after page ``grow_after_page`` of a store is served
    # for the first time, ``grow_while_paged`` labels are added to it (negative: removed from it), at the
    # ``grow_at`` end of its list. "front" shifts every later label by that many positions (offset
    # pagination then serves some labels twice and, when removing, skips some); "end" appends. The
    # labels added are :func:`grown_store`'s, so tests know them; removed labels' details answer 404.
    grow_while_paged: int = 0
    grow_at: str = "end"
    grow_after_page: int = 1

    def __post_init__(self) -> None:
        # Accept any iterable of kinds (a list from a CLI parser), but store a hashable tuple.
        object.__setattr__(self, "transient_kinds", tuple(self.transient_kinds))
        unknown = set(self.transient_kinds) - set(TRANSIENT_KINDS)
        if unknown:
            raise ValueError(f"unknown transient fault kinds {sorted(unknown)}; known: {TRANSIENT_KINDS}")
        for name in ("transient_rate", "slow_rate", "removed_rate", "wrong_types_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in 0..1")
        if self.slow_ms < 0 or self.retry_after_s < 0:
            raise ValueError("slow_ms and retry_after_s must be >= 0")
        if self.grow_at not in GROW_ENDS:
            raise ValueError(f"grow_at must be one of {GROW_ENDS}, got {self.grow_at!r}")
        if self.grow_after_page < 1:
            raise ValueError("grow_after_page must be >= 1")

    @property
    def injects_nothing(self) -> bool:
        """True when serving with this profile is identical to serving without one."""
        plain = FaultProfile(
            seed=self.seed,
            transient_kinds=self.transient_kinds,
            grow_at=self.grow_at,
            grow_after_page=self.grow_after_page,
        )
        return self == plain

    def refuses(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header answers 401."""
        if self.unauthorized:
            return True
        if self.credentials is None:
            return False
        login, password = self.credentials
        token = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
        return not hmac.compare_digest(authorization or "", f"Basic {token}")

    def transient_kind(self, path: str) -> str | None:
        """The fault of the first attempt at ``path`` (a ``TRANSIENT_KINDS`` value), or None."""
        if not self.transient_kinds or not _selected(self.seed, _SALT_TRANSIENT, path, self.transient_rate):
            return None
        pick = int(_unit(self.seed, _SALT_KIND, path) * len(self.transient_kinds))
        return self.transient_kinds[pick]

    def is_slow(self, path: str) -> bool:
        """Whether the first attempt at ``path`` is delayed by ``slow_ms``."""
        return self.slow_ms > 0 and _selected(self.seed, _SALT_SLOW, path, self.slow_rate)

    def is_removed(self, esl_id: str) -> bool:
        """Whether the detail of ``esl_id`` always answers 404 (the id stays listed in pages)."""
        return _selected(self.seed, _SALT_REMOVED, esl_id, self.removed_rate)

    def is_wrong_typed(self, esl_id: str) -> bool:
        """Whether the detail of ``esl_id`` is always served as ``mangle(detail)``."""
        return _selected(self.seed, _SALT_WRONG_TYPES, esl_id, self.wrong_types_rate)

    def mangle(self, detail: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``detail`` whose fields have the wrong JSON type or an impossible value.

        The five fields are set even when absent (``temperature`` is optional), so the result
        never depends on the dataset. ``esl_id`` and ``last_hb_time`` stay intact so a client
        can still identify and order the record it has to reject or repair.
        """
        wrong = {"battery": "n/a", "refresh_times": "12x", "create_time": -5, "product_id": "zz"}
        # A fresh dict per call: callers may mutate the result.
        return {**detail, **wrong, "temperature": {"c": 21}}


def grown_store(profile: FaultProfile, server: ServerData, store: str) -> list[dict[str, Any]]:
    """The detail dicts of ``store`` in page order after it changed while paged (pure: the same
    profile, server and store give the same labels).

    Added labels are copies of the server's most recently seen label (so they are inside any heartbeat
    window the dataset's are), with ids ``{server prefix}N{store slot:03d}-{k:04d}`` (e.g.
    ``51-N002-0001``, a shape the dataset's ``51-0A-1B-2C`` ids never have), ``user`` set to the
    store and ``refresh_times`` raised by ``k``, so each added row is distinct.
    """
    labels = list(server.stores[store])
    count = profile.grow_while_paged
    if count < 0:
        keep = max(0, len(labels) + count)
        return labels[len(labels) - keep :] if profile.grow_at == "front" else labels[:keep]
    template = _freshest(server)
    if count == 0 or template is None:
        return labels
    slot = list(server.stores).index(store)
    prefix = template["esl_id"].split("-", 1)[0]
    added = [
        {
            **template,
            "esl_id": f"{prefix}-N{slot:03d}-{k:04d}",
            "user": store,
            "refresh_times": template["refresh_times"] + k,
        }
        for k in range(1, count + 1)
    ]
    return added + labels if profile.grow_at == "front" else labels + added


def _freshest(server: ServerData) -> dict[str, Any] | None:
    real = [d for details in server.real_stores.values() for d in details]
    return max(real, key=lambda d: (d["last_hb_time"], d["esl_id"])) if real else None


def _selected(seed: int, salt: str, key: str, rate: float) -> bool:
    # Skipping the hash at rate 0 keeps fault-free serving as cheap as before.
    return rate > 0 and _unit(seed, salt, key) < rate
