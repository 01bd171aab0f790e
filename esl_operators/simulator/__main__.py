"""CLI: ``python -m esl_operators.simulator --servers N --base-port P ...``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from dataclasses import replace

from .dataset import build_fleet, reference_ms_for
from .faults import GROW_ENDS, TRANSIENT_KINDS, FaultProfile
from .server import check_overload, start_fleet, stop_fleet


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _index_list(text: str) -> list[int]:
    try:
        return [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated server indexes, got {text!r}") from None


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m esl_operators.simulator",
        description="Serve deterministic simulated Hanshow ESL-Working servers (HTTP API v3).",
    )
    parser.add_argument("--servers", type=int, default=3, help="number of servers (default 3)")
    parser.add_argument("--base-port", type=int, default=18080, help="server i listens on base+i; 0 = free")
    parser.add_argument("--stores", type=int, default=6, help="stores per server, 'default' excluded")
    parser.add_argument("--esls", type=int, default=300, help="ESLs per server, 'default' excluded")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every response")
    parser.add_argument("--capacity", type=int, default=0, help="concurrent requests per server; 0 = any")
    parser.add_argument(
        "--overload-status",
        type=int,
        default=None,
        help="e.g. 503: answer requests beyond --capacity at once with this status and Retry-After: 0 "
        "instead of queueing them (default: queue)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    day = parser.add_mutually_exclusive_group()
    day.add_argument(
        "--as-of",
        type=_day,
        default=None,
        help="YYYY-MM-DD: the fleet as it is on that day, heartbeats relative to its midnight UTC: batteries "
        "drain, labels go silent and come back, are added, removed and moved, stores get firmware "
        "upgrades (default: today, UTC)",
    )
    day.add_argument(
        "--reference-date",
        type=_day,
        default=None,
        help="YYYY-MM-DD: the static fleet (the same on every day) relative to its midnight UTC",
    )
    faults = parser.add_argument_group("deterministic fault injection (see faults.py)")
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of fault selection")
    faults.add_argument("--fault-rate", type=float, default=0.0, help="share of paths failing once")
    faults.add_argument(
        "--fault-kinds",
        type=_comma_list,
        default=list(TRANSIENT_KINDS),
        help=f"kinds of first-attempt faults (default {','.join(TRANSIENT_KINDS)})",
    )
    faults.add_argument("--retry-after", type=float, default=0.0, help="Retry-After of 429/503, seconds")
    faults.add_argument("--slow-rate", type=float, default=0.0, help="share of paths slow once")
    faults.add_argument("--slow-ms", type=float, default=0.0, help="delay of a slow first attempt")
    faults.add_argument("--removed-rate", type=float, default=0.0, help="share of ESL ids answering 404")
    faults.add_argument("--wrong-types-rate", type=float, default=0.0, help="share of ESL ids mangled")
    faults.add_argument(
        "--grow-while-paged",
        type=int,
        default=0,
        metavar="N",
        help="add N labels to every store right after its page --grow-after-page is first served "
        "(negative: remove -N); see --grow-at",
    )
    faults.add_argument(
        "--grow-at", choices=GROW_ENDS, default="end", help="front: shift later labels; end: append (default)"
    )
    faults.add_argument("--grow-after-page", type=int, default=1, metavar="K", help="default 1")
    faults.add_argument("--down-servers", type=_index_list, default=[], help="e.g. 1,2: refuse connections")
    faults.add_argument("--unauthorized-servers", type=_index_list, default=[], help="e.g. 0: answer 401")
    return parser.parse_args(argv)


def _fault_profiles(args: argparse.Namespace) -> dict[int, FaultProfile] | None:
    """Profiles by server index, or None when no fault flag is given (plain serving)."""
    base = FaultProfile(
        seed=args.fault_seed,
        transient_rate=args.fault_rate,
        transient_kinds=tuple(args.fault_kinds),
        retry_after_s=args.retry_after,
        slow_rate=args.slow_rate,
        slow_ms=args.slow_ms,
        removed_rate=args.removed_rate,
        wrong_types_rate=args.wrong_types_rate,
        grow_while_paged=args.grow_while_paged,
        grow_at=args.grow_at,
        grow_after_page=args.grow_after_page,
    )
    down, unauthorized = set(args.down_servers), set(args.unauthorized_servers)
    outside = sorted(i for i in down | unauthorized if not 0 <= i < args.servers)
    if outside:
        raise ValueError(f"server indexes {outside} outside 0..{args.servers - 1}")
    if base.injects_nothing and not down and not unauthorized:
        return None
    return {i: replace(base, down=i in down, unauthorized=i in unauthorized) for i in range(args.servers)}


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed first: a signal arriving while the (possibly large) fleet is built or the
    # sockets open must still end in a clean exit, not the default handler's non-zero status.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    as_of = None if args.reference_date else args.as_of or dt.datetime.now(dt.UTC).date()
    try:
        check_overload(args.overload_status, args.capacity)
        faults = _fault_profiles(args)
        fleet = build_fleet(
            servers=args.servers,
            stores=args.stores,
            esls=args.esls,
            page_size=args.page_size,
            seed=args.seed,
            reference_ms=reference_ms_for(args.reference_date) if args.reference_date else None,
            as_of=as_of,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if stop.is_set():  # signalled while building: never start listening
        return
    servers = await start_fleet(
        fleet,
        host=args.host,
        base_port=args.base_port,
        latency_ms=args.latency_ms,
        capacity=args.capacity,
        faults=faults,
        overload_status=args.overload_status,
    )
    try:
        for running in servers:
            state = "down (refusing connections)" if running.down else "listening"
            print(f"server {running.index} {state} on {running.url}", flush=True)
        await stop.wait()
    finally:
        await stop_fleet(servers)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
