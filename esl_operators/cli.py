"""``esl-export fetch``: the same engine and file layout as the DAG, without Airflow.

Useful on bastion hosts and for benchmarks::

    esl-export fetch --server http://10.0.0.5:9000 --date 2024-05-10 --out ./data/esl_export

writes ``OUT/2024-05-10/esl_id_part_N.csv`` and ``_manifest.json``; the ``server`` column holds the
server URL with any credentials stripped (credentials in the URL are sent as basic auth).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from esl_operators import __version__, install
from esl_operators.aggregate import aggregate_run
from esl_operators.batch import error_summary, run_batches
from esl_operators.client import ServerTarget
from esl_operators.config import split_batches
from esl_operators.csvformat import HEADER_STYLES
from esl_operators.engine import make_settings
from esl_operators.exceptions import ConfigError, EslError
from esl_operators.records import heartbeat_cutoff_ms
from esl_operators.storage import as_local_root

log = logging.getLogger("esl_operators")
# A bastion host is not an Airflow cluster: however many batches, at most this many servers at once.
MAX_TOTAL_THREADS = 32


def target_from_url(url: str) -> ServerTarget:
    """A server given as a URL; ``user:password@`` becomes basic auth and leaves the name."""
    parts = urlsplit(url)
    auth = None
    if parts.username is not None:
        auth = aiohttp.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    try:
        return ServerTarget(name=clean, base_url=clean, auth=auth)
    except ValueError as exc:
        raise ConfigError(f"--server {clean!r}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esl-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    install.add_parser(commands)
    fetch = commands.add_parser("fetch", help="export a fleet for one date")
    fetch.add_argument("--server", action="append", required=True, help="server base URL (repeatable)")
    fetch.add_argument("--date", required=True, type=lambda t: datetime.strptime(t, "%Y-%m-%d").date())
    fetch.add_argument("--out", required=True, type=Path, help="output root folder")
    fetch.add_argument("--servers-per-batch", type=int, default=1)
    fetch.add_argument("--lookback-days", type=int, default=7)
    fetch.add_argument("--max-records-per-store", type=int, default=50_000)
    fetch.add_argument("--max-concurrency", type=int, default=4, help="per server (the adaptive ceiling)")
    fetch.add_argument(
        "--no-adaptive-concurrency",
        dest="adaptive_concurrency",
        action="store_false",
        help="keep every server at --max-concurrency instead of adapting to its latency and 503s",
    )
    fetch.add_argument("--max-threads", type=int, default=3, help="servers at once per batch (like a task)")
    fetch.add_argument("--header-style", choices=HEADER_STYLES, default="standard")
    fetch.add_argument("--timezone", default="UTC")
    fetch.add_argument("--on-server-error", choices=("fail", "skip"), default="fail")
    fetch.add_argument("--request-timeout", type=float, default=60.0, help="seconds per attempt")
    fetch.add_argument("--connect-timeout", type=float, default=10.0, help="seconds")
    fetch.add_argument("--retry-attempts", type=int, default=5)
    fetch.add_argument("--report", action="store_true", help="also write report.html (charts; slower)")
    return parser


def fetch(args: argparse.Namespace) -> int:
    anchor = datetime(args.date.year, args.date.month, args.date.day, tzinfo=UTC)
    ds = anchor.strftime("%Y-%m-%d")
    root = as_local_root(str(args.out))
    targets = {t.name: t for t in map(target_from_url, args.server)}
    if len(targets) != len(args.server):
        raise ConfigError("the same --server is given twice")
    settings = make_settings(
        cutoff_ms=heartbeat_cutoff_ms(anchor, args.lookback_days),
        max_concurrency=args.max_concurrency,
        max_records_per_store=args.max_records_per_store,
        request_timeout_s=args.request_timeout,
        connect_timeout_s=args.connect_timeout,
        retry_attempts=args.retry_attempts,
        adaptive_concurrency=args.adaptive_concurrency,
    )
    # All batches through one pool: the machine does what Airflow's parallel mapped tasks would.
    batches = [[targets[n] for n in names] for names in split_batches(list(targets), args.servers_per_batch)]
    # Like Airflow's mapped tasks, each batch gets up to --max-threads threads, side by side.
    threads = min(sum(min(args.max_threads, len(batch)) for batch in batches), MAX_TOTAL_THREADS)
    manifests = run_batches(batches, settings, output_root=root, ds=ds, anchor=anchor, max_threads=threads)
    for manifest in manifests:
        log.info("batch %d: %d rows, %d errors", manifest["batch"], manifest["rows"], len(manifest["errors"]))
    failed = [m for m in manifests if m["errors"]]
    if failed and args.on_server_error == "fail":
        for manifest in failed:
            print(error_summary(manifest), file=sys.stderr)
        print("not published: fix the servers or use --on-server-error skip", file=sys.stderr)
        return 1
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "command"}
    params["date"] = ds
    summary = aggregate_run(
        manifests,
        output_root=root,
        ds=ds,
        header_style=args.header_style,
        timezone=args.timezone,
        params=params,
        report=args.report,
    )
    for name, rows in summary["partitions"].items():
        print(f"{root / ds / name}\t{rows} rows")
    print(f"{summary['manifest']}\terrors: {summary['errors']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "install-dag":
            return install.run(args)
        return fetch(args)
    except EslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
