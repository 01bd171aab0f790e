"""The report's run summary as data for the template: key figures, partitions, servers and settings.

Read from the run manifest (and the label count of the stats). Each function takes the
:class:`~esl_operators.report.page.ReportView` and returns a mapping ``report.html`` reads by name;
text stays plain here, the template escapes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from esl_operators.report.blocks import Kpi, table
from esl_operators.report.formats import day, seconds, share, thousands, title

if TYPE_CHECKING:
    from esl_operators.report.page import ReportView


def _durations(manifest: Mapping[str, Any]) -> tuple[float | None, str]:
    durations = manifest.get("durations_s") or {}
    batches = [v for v in (durations.get("batches") or {}).values() if isinstance(v, int | float)]
    aggregate = durations.get("aggregate")
    if not batches and not isinstance(aggregate, int | float):
        return None, ""
    fetch = max(batches, default=0.0)
    total = fetch + (aggregate if isinstance(aggregate, int | float) else 0.0)
    return total, f"slowest fetch {seconds(fetch)} + aggregate {seconds(float(aggregate or 0))}"


def totals(view: ReportView) -> dict[str, Any]:
    stats, manifest = view.stats, view.manifest
    listed = manifest.get("rows_by_store") or {}
    stores_listed = sum(len(stores) for stores in listed.values()) if isinstance(listed, Mapping) else 0
    servers = manifest.get("rows_by_server") or {}
    server_count = len(servers) if servers else len({s for s, _ in stats.stores})
    errors = manifest.get("errors") or []
    low = sum(view.low.values())
    at_risk = sum(view.at_risk.values())
    total_s, duration_note = _durations(manifest)
    kpis = [
        Kpi("labels exported", thousands(stats.labels)),
        Kpi(
            "stores with labels",
            thousands(len(stats.stores)),
            f"of {thousands(stores_listed)} listed" if listed else "",
        ),
        Kpi("servers", thousands(server_count)),
        Kpi("run time", seconds(total_s) if total_s is not None else "–", duration_note),
        Kpi(
            f"battery under {view.threshold}%",
            thousands(low),
            share(low, stats.labels) + " of labels",
            "warn" if low else "",
        ),
        Kpi(
            "close to dropping out",
            thousands(at_risk),
            f"last heartbeat on {day(view.cutoff_ms)}",
            "warn" if at_risk else "",
        ),
        Kpi("failures", thousands(len(errors)), "servers or stores", "bad" if errors else "good"),
    ]
    partitions = [p for p in manifest.get("partitions") or [] if isinstance(p, Mapping)]
    # Columns the aggregate task adds later (e.g. rows dropped) are shown as they come.
    extra: list[str] = []
    for p in partitions:
        extra.extend(k for k in p if k not in ("file", "rows", "servers", *extra))
    rows = (
        [
            p.get("file"),
            thousands(int(p.get("rows", 0))),
            ", ".join(map(str, p.get("servers", []))),
            *(thousands(p[k]) if isinstance(p.get(k), int) else p.get(k) for k in extra),
        ]
        for p in partitions
    )
    headers = ["file", "rows", "servers", *(title(k).lower() for k in extra)]
    return {"kpis": kpis, "partitions": table(headers, rows, numeric={1, *range(3, 3 + len(extra))})}


def run(view: ReportView) -> dict[str, Any]:
    manifest = view.manifest
    servers = manifest.get("servers") or {}
    rows_by_server = manifest.get("rows_by_server") or {}
    durations = (manifest.get("durations_s") or {}).get("servers") or {}
    rows = []
    for name in sorted(set(servers) | set(rows_by_server)):
        info = servers.get(name) or {}
        stores = info.get("stores") or {}
        rows.append(
            [
                name,
                thousands(len(stores)),
                thousands(int(rows_by_server.get(name, info.get("rows", 0)) or 0)),
                thousands(sum(int(s.get("stale", 0) or 0) for s in stores.values())),
                seconds(float(durations.get(name, info.get("duration_s", 0)) or 0)),
                info.get("error") or "ok",
            ]
        )
    headers = ["server", "stores", "labels", "outside window", "fetch time", "status"]
    empty = [
        f"{store} ({server})"
        for server, stores in sorted((manifest.get("rows_by_store") or {}).items())
        for store, count in sorted(stores.items())
        if not count
    ]
    params = manifest.get("params") or {}
    return {
        "servers": table(headers, rows, numeric={1, 2, 3, 4}),
        "empty_stores": ", ".join(empty),
        "params": table(
            ["param", "value"],
            ((k, "(default)" if v is None else v) for k, v in sorted(params.items())),
            compact=True,
        ),
    }
