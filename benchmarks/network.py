"""The network scenarios' common shape: clients against one simulator, their rows checked against
the dataset, and the computed floor no client with the default concurrency can beat."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING

from benchmarks.bench import CUTOFF_MS, DATE, DEFAULT_CONCURRENCY, Bench, Client, Scenario
from benchmarks.harness import FleetSpec
from benchmarks.tables import Row

if TYPE_CHECKING:
    from esl_operators.simulator.dataset import Fleet

NETWORK_COLUMNS = ("wall_s", "requests", "req_per_s", "cpu_per_1000", "peak_rss_mb", "rows")


def served_fleet(spec: FleetSpec) -> Fleet:
    """The dataset the simulator serves for ``spec`` on the benchmarks' date, built again here (the
    simulator builds it deterministically from the same arguments and seed)."""
    from esl_operators.simulator import build_fleet, reference_ms_for

    return build_fleet(
        servers=spec.servers,
        stores=spec.stores,
        esls=spec.esls,
        page_size=spec.page_size,
        seed=spec.seed,
        reference_ms=reference_ms_for(datetime.strptime(DATE, "%Y-%m-%d").date()),
    )


def fleet_facts(spec: FleetSpec) -> tuple[int, int] | None:
    """(requests a complete export needs, rows it must publish), from the very dataset served.

    users once per server; per real store, its pages (an empty store still answers page 1) and one
    detail per label. None for fleets too large to build twice cheaply.
    """
    if spec.servers * spec.esls > 100_000:
        return None
    fleet = served_fleet(spec)
    needed = rows = 0
    for server in fleet.servers:
        needed += 1
        for esls in server.real_stores.values():
            needed += max(1, math.ceil(len(esls) / spec.page_size)) + len(esls)
            rows += sum(1 for esl in esls if esl["last_hb_time"] >= CUTOFF_MS)
    return needed, rows


def floor_row(spec: FleetSpec, needed: int, concurrency: int = DEFAULT_CONCURRENCY) -> Row:
    label = "floor (computed)"
    if not spec.latency_ms:
        return Row(label, computed={"requests": needed}, note="no floor without latency")
    in_flight = spec.servers * (min(spec.capacity, concurrency) if spec.capacity else concurrency)
    rate = in_flight / (spec.latency_ms / 1000)
    note = (
        f"{needed:,} requests / ({spec.servers} servers × min(capacity {spec.capacity or '∞'}, "
        f"concurrency {concurrency}) / {spec.latency_ms:g} ms)"
    )
    return Row(label, computed={"wall_s": needed / rate, "requests": needed, "req_per_s": rate}, note=note)


def check_rows(rows: list[Row], expected: int | None) -> None:
    """Flag any client whose row count differs from what the dataset says must be published."""
    if expected is None:
        return
    for row in rows:
        got = {r.rows for r in row.runs if r.ok}
        if got and got != {expected}:
            extra = f"rows {sorted(got)} != expected {expected:,}"
            row.note = f"{row.note}; {extra}" if row.note else extra


def network_scenario(bench: Bench, spec: FleetSpec, clients: list[Client], title: str, text: str) -> Scenario:
    facts = fleet_facts(spec)
    rows = bench.clients(spec, clients)
    if facts is not None:
        check_rows(rows, facts[1])
        rows.append(floor_row(spec, facts[0]))
    return {
        "title": title,
        "description": text,
        "spec": spec,
        "columns": NETWORK_COLUMNS,
        "expected_rows": facts[1] if facts else None,
        "rows": rows,
    }
