"""CLI: ``python -m esl_operators.simulator --servers N --base-port P ...``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys

from .dataset import build_fleet, reference_ms_for
from .server import start_fleet, stop_fleet


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
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--reference-date",
        type=dt.date.fromisoformat,
        default=None,
        help="YYYY-MM-DD; timestamps are relative to its midnight UTC (default: today, UTC)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed first: a signal arriving while the (possibly large) fleet is built or the
    # sockets open must still end in a clean exit, not the default handler's non-zero status.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    day = args.reference_date or dt.datetime.now(dt.UTC).date()
    try:
        fleet = build_fleet(
            servers=args.servers,
            stores=args.stores,
            esls=args.esls,
            page_size=args.page_size,
            seed=args.seed,
            reference_ms=reference_ms_for(day),
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if stop.is_set():  # signalled while building: never start listening
        return
    servers = await start_fleet(
        fleet, host=args.host, base_port=args.base_port, latency_ms=args.latency_ms, capacity=args.capacity
    )
    try:
        for running in servers:
            print(f"server {running.index} listening on {running.url}", flush=True)
        await stop.wait()
    finally:
        await stop_fleet(servers)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
