"""``esl-export fetch``: the same engine and file layout as the DAG, without Airflow.

Useful on bastion hosts and for benchmarks::

    esl-export fetch --server http://10.0.0.5:9000 --date 2024-05-10 --out ./data/esl_export

writes ``OUT/2024-05-10/esl_id_part_N.csv`` and ``_manifest.json``; the ``server`` column holds the
server URL with any credentials stripped (credentials in the URL are sent as basic auth).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from esl_operators import __version__, install
from esl_operators.exceptions import ConfigError, EslError
from esl_operators.settings import add_cli_options, for_task

if TYPE_CHECKING:
    from esl_operators.client import ServerTarget
    from esl_operators.engine import FetchSettings

# Imports are deferred to where they are needed (issue 11, target 3): the fetch path (aiohttp, the
# engine) inside ``fetch``, the aggregate step (pyarrow, numpy) after the fetch; ``--help`` and
# ``install-dag`` load neither, and ``import esl_operators.cli`` loads no pyarrow, numpy or pandas
# (tests/test_parts.py, the import checks).

log = logging.getLogger("esl_operators")
# A bastion host is not an Airflow cluster: however many batches, at most this many servers at once.
MAX_TOTAL_THREADS = 32


# ``NAME=URL``: a URL has "://" before any "=", so a name made of these characters cannot be a URL.
_NAMED_SERVER = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)


def target_from_url(url: str) -> ServerTarget:
    """A server given as a URL, or as ``NAME=URL`` (rows then name it NAME, as the DAG names a server
    by its connection id); ``user:password@`` becomes basic auth and leaves the name."""
    import aiohttp

    from esl_operators.client import ServerTarget
    from esl_operators.redaction import split_credentials

    named = _NAMED_SERVER.fullmatch(url)
    name, url = (named.group(1), named.group(2)) if named else (None, url)
    clean, credentials = split_credentials(url)
    auth = aiohttp.BasicAuth(*credentials) if credentials else None
    try:
        return ServerTarget(name=name or clean, base_url=clean, auth=auth)
    except ValueError as exc:
        raise ConfigError(f"--server {clean!r}: {exc}") from None


def _asked(target: ServerTarget) -> str:
    """A server as the manifest records it: as given, credentials left out."""
    return target.base_url if target.name == target.base_url else f"{target.name}={target.base_url}"


def _date(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """Bad input ends the command with one line naming the option and the problem, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="esl-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    install.add_parser(commands)
    fetch = commands.add_parser(
        "fetch",
        help="export a fleet for one date",
        description="Export a fleet for one date. Every value is checked before the first request; "
        "the options are the DAG's params, with the same defaults and limits.",
    )
    fetch.add_argument(
        "--server",
        action="append",
        required=True,
        help="server base URL, or NAME=URL to name it NAME in the rows (as the DAG's connection id "
        "would); repeatable",
    )
    fetch.add_argument("--date", required=True, type=_date, help="run date, YYYY-MM-DD")
    fetch.add_argument("--report", action="store_true", help="also write report.html (charts; slower)")
    add_cli_options(fetch, required=("output_root",))
    return parser


def fetch(args: argparse.Namespace) -> int:
    from esl_operators.config import split_batches
    from esl_operators.engine import make_settings
    from esl_operators.lease import Lease, command_holder
    from esl_operators.publish import remove_stale_stagings
    from esl_operators.records import heartbeat_cutoff_ms
    from esl_operators.storage import as_local_root, run_dir

    anchor = datetime(args.date.year, args.date.month, args.date.day, tzinfo=UTC)
    ds = anchor.strftime("%Y-%m-%d")
    root = as_local_root(args.output_root)
    targets = {t.name: t for t in map(target_from_url, args.server)}
    if len(targets) != len(args.server):
        raise ConfigError("the same --server is given twice")
    options = {s.name: getattr(args, s.name) for s in for_task("fetch") if s.name != "output_root"}
    cutoff = heartbeat_cutoff_ms(anchor, options.pop("lookback_days"))
    on_error = options.pop("on_server_error")
    max_threads = options.pop("max_threads")
    settings = make_settings(cutoff_ms=cutoff, **options)
    # All batches through one pool: the machine does what Airflow's parallel mapped tasks would.
    batches = [[targets[n] for n in names] for names in split_batches(list(targets), args.servers_per_batch)]
    # Like Airflow's mapped tasks, each batch gets up to --max-threads threads, side by side.
    threads = min(sum(min(max_threads, len(batch)) for batch in batches), MAX_TOTAL_THREADS)
    # One writer per date (esl_operators.lease): taken before the first request, since this command's
    # fetch writes the same _parts/ files as the DAG's; a date another writer holds fails here.
    with Lease(run_dir(root, ds), command_holder()):
        # A commit an earlier attempt left half done is finished now, even if this run's fetch fails.
        remove_stale_stagings(run_dir(root, ds))
        return _fetch_and_publish(args, root, ds, anchor, targets, batches, settings, threads, on_error)


def _fetch_and_publish(
    args: argparse.Namespace,
    root: Path,
    ds: str,
    anchor: datetime,
    targets: dict[str, ServerTarget],
    batches: list[list[ServerTarget]],
    settings: FetchSettings,
    threads: int,
    on_error: str,
) -> int:
    from esl_operators.batch import error_summary, run_batches

    manifests = run_batches(batches, settings, output_root=root, ds=ds, anchor=anchor, max_threads=threads)
    for manifest in manifests:
        log.info("batch %d: %d rows, %d errors", manifest["batch"], manifest["rows"], len(manifest["errors"]))
    failed = [m for m in manifests if m["errors"]]
    for manifest in failed:
        print(error_summary(manifest, limit=len(manifest["errors"])), file=sys.stderr)
    if failed and on_error == "fail":
        print("not published: fix the servers or use --on-server-error skip", file=sys.stderr)
        return 1
    params = {k: v for k, v in vars(args).items() if k != "command"}
    # The manifest records what was asked, but never credentials given in a server URL.
    params.update(date=ds, server=[_asked(t) for t in targets.values()], output_root=str(root))
    from esl_operators.aggregate import aggregate_run  # pyarrow and numpy: only once the fetch is done

    aggregate_options = {
        s.name: getattr(args, s.name) for s in for_task("aggregate") if s.name != "output_root"
    }
    summary = aggregate_run(
        manifests, output_root=root, ds=ds, params=params, report=args.report, **aggregate_options
    )
    for name, rows in summary["partitions"].items():
        print(f"{root / ds / name}\t{rows} rows")
    skipped = f" (skipped: {summary['errors']}, listed above)" if failed else ""
    print(f"{summary['manifest']}\terrors: {summary['errors']}{skipped}")
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


def run() -> NoReturn:
    """The ``esl-export`` process (console script and ``python -m esl_operators``): :func:`main`,
    with what only a process that owns itself may tune (issue 11, target 2).

    The cyclic garbage collector runs after 10,000 new container objects instead of 700: the fetch
    allocates a few hundred per request, almost all freed by reference counting (measured: about 350
    collections and 0.16 s of CPU in the CPU-bound scenario's command, 36 and 0.08-0.1 s after). The
    interpreter's teardown is skipped once the command is done: freeing every object and module one
    by one, pyarrow's and pandas' included, costs 0.1-0.5 s; the OS reclaims the memory at once.
    Output and log handlers are flushed first; every file the command writes is closed by then.
    In-process callers (tests, other tools) call :func:`main`, which does neither.
    """
    gc.set_threshold(10_000, 10, 10)
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
