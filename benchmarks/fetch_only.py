"""Our fetch step alone (``run_batch``: servers -> part file + batch manifest), without aggregation.

The memory target is about a fetch task; the standalone command also aggregates in the same
process, whose memory is measured by the aggregation scenario instead.

    python -m benchmarks.fetch_only --server URL --date YYYY-MM-DD --out DIR [--max-records-per-store N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from esl_operators.batch import run_batch
from esl_operators.cli import target_from_url
from esl_operators.engine import make_settings
from esl_operators.records import heartbeat_cutoff_ms
from esl_operators.storage import as_local_root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--date", required=True, type=lambda t: datetime.strptime(t, "%Y-%m-%d").date())
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-records-per-store", type=int, default=50_000)
    args = parser.parse_args(argv)
    anchor = datetime(args.date.year, args.date.month, args.date.day, tzinfo=UTC)
    settings = make_settings(
        cutoff_ms=heartbeat_cutoff_ms(anchor, 7), max_records_per_store=args.max_records_per_store
    )
    manifest = run_batch(
        [target_from_url(url) for url in args.server],
        settings,
        output_root=as_local_root(args.out),
        ds=anchor.strftime("%Y-%m-%d"),
        batch=0,
        anchor=anchor,
        max_threads=3,
    )
    print(f"{manifest['part']}\t{manifest['rows']} rows\terrors: {len(manifest['errors'])}")
    return 1 if manifest["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
