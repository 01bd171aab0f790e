"""What the report's "Needs attention" and "Housekeeping" boxes show, read from named manifest fields.

Each run-manifest field (``aggregate._run_manifest``) is classified here by name:

* :data:`ATTENTION`: labels, rows or stores missing from the export or cut short;
* :data:`HOUSEKEEPING`: worth knowing, nothing lost (retries, files of earlier runs cleaned up);
* :data:`SHOWN_ELSEWHERE`: rendered by their own sections, or settings and identifiers.

A field this version does not know (written by a newer aggregate step, or added by hand) is shown
under "Needs attention" when it is not empty: a false alarm is cheaper than a loss nobody sees.
Values are understood by shape: ``{"count": n, "listed": [...]}``, a list (of dicts or values), a
mapping of counts (``{"battery": 3}``) and a plain number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esl_operators.report.blocks import Table, table
from esl_operators.report.formats import thousands, title

ATTENTION = frozenset(
    {
        "errors",  # failed servers and stores, with the reason
        "capped_stores",  # stores cut short at max_labels_per_store
        "invalid_records",  # labels rejected by the record rules
        "removed_labels",  # labels the servers listed but no longer had
        "blanked_fields",  # fields emptied because their values were impossible
        "duplicates_dropped",  # rows dropped: an id twice on one server
        "failed_store_rows_dropped",  # rows of failed stores, dropped so no store is half-published
    }
)
HOUSEKEEPING = frozenset(
    {
        "retries",
        "removed_stale_files",  # partitions and parts an earlier run of the date left behind
        "removed_stale_partitions",  # the same, as older manifests named it
    }
)
SHOWN_ELSEWHERE = frozenset(
    {
        "history",  # the counts of the "Since {P}" section (report.history)
        "date",
        "anchor",
        "anchor_source",  # beside the anchor in the page's header
        "heartbeat_cutoff",
        "header_style",
        "columns",
        "spreadsheet_safe",
        "rows",
        "partitions",
        "rows_by_server",
        "rows_by_store",
        "stale_labels",  # labels outside the heartbeat window: by design, shown per server
        "params",
        "durations_s",
        "servers",
    }
)
LIST_LIMIT = 200  # rows shown per list; the manifest keeps them all


@dataclass(frozen=True)
class Finding:
    """One non-empty manifest field: a heading, its entries, and whether it needs attention."""

    title: str
    table: Table | None
    attention: bool


def needs_attention(key: str) -> bool:
    return key not in HOUSEKEEPING


def findings(manifest: Mapping[str, Any]) -> list[Finding]:
    """Every non-empty field not shown elsewhere, in key order."""
    found = []
    for key in sorted(manifest):
        value = manifest[key]
        if key in SHOWN_ELSEWHERE or isinstance(value, bool):
            continue
        heading, entries = _entries(key, value)
        if heading:
            found.append(Finding(heading, _entries_table(entries), needs_attention(key)))
    return found


def _entries(key: str, value: Any) -> tuple[str, list[Any]]:
    """(heading, entries) of one field; no heading when the field is empty or has no known shape."""
    if isinstance(value, Mapping) and isinstance(value.get("listed"), list):
        entries = value["listed"]
        count = value.get("count", len(entries))
        return (f"{title(key)} ({thousands(int(count))})", entries) if entries or count else ("", [])
    if isinstance(value, list) and value:
        return f"{title(key)} ({thousands(len(value))})", value
    if isinstance(value, Mapping) and value:
        entries = [{"name": k, "value": v} for k, v in value.items()]
        return f"{title(key)} ({thousands(len(entries))})", entries
    if isinstance(value, int | float) and value:
        return f"{title(key)}: {value:,}", []
    return "", []


def _entries_table(entries: list[Any]) -> Table | None:
    if not entries:
        return None
    shown = entries[:LIST_LIMIT]
    more = thousands(len(entries) - LIST_LIMIT) if len(entries) > LIST_LIMIT else ""
    if all(isinstance(e, Mapping) for e in shown):
        columns: list[str] = []
        for entry in shown:
            columns.extend(k for k in entry if k not in columns)
        rows = [[e.get(c) for c in columns] for e in shown]
    else:
        columns, rows = ["value"], [[e] for e in shown]
    found = table(columns, rows)
    return Table(found.headers, found.rows, more=more)


def row_mismatch(manifest: Mapping[str, Any], counted: int) -> str:
    """A sentence when the manifest's row count differs from what the report counted, else ''."""
    reported = manifest.get("rows")
    if isinstance(reported, int) and reported != counted:
        return f"The manifest reports {thousands(reported)} rows but the report counted {thousands(counted)}."
    return ""
