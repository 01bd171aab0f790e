"""CPU-bound: latency 0, so the client's own CPU per request is what is measured."""

from __future__ import annotations

from typing import Any

from benchmarks.bench import Bench, Scenario, baselines, describe, ours
from benchmarks.harness import FleetSpec
from benchmarks.network import network_scenario
from benchmarks.tables import find

FULL = FleetSpec(servers=2, stores=40, esls=3000, seed=2)
QUICK = FleetSpec(servers=1, stores=3, esls=100, page_size=20, seed=2)
OURS = "ours (defaults)"
BARE = "legacy-style, no sleep"

# Where the whole command's CPU goes (issue 11, target 2): measured by hand with py-spy and cProfile
# on this scenario's fleet; see the report of the session that wrote it for the method.
PROFILE = "PROFILE_PLACEHOLDER"


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
    clients = [ours(OURS), *baselines(bench)]
    text = describe(spec) + " The simulator serves from its own process; CPU is the client's alone."
    scenario = network_scenario(bench, spec, clients, "CPU-bound", text)
    scenario["description"] += "\n\n" + PROFILE
    return scenario


def target_cpu_vs_bare(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = s.get("cpu", {}).get("rows", [])
    ours_row, bare = find(rows, OURS), find(rows, BARE)
    if not ours_row or not bare or not ours_row.get("cpu_per_1000") or not bare.get("cpu_per_1000"):
        return {"ratio": None, "measured": "not measured"}
    mine, theirs = ours_row["cpu_per_1000"], bare["cpu_per_1000"]
    text = (
        f"CPU s per 1000 requests, whole command (imports, fetch, aggregate): ours {mine:.3f}, "
        f"bare legacy-structure client {theirs:.3f}"
    )
    return {"ratio": theirs / mine, "measured": text, "met": mine <= theirs, "format": "{:.2f}×"}


TARGETS = [
    ("CPU-bound: whole-command CPU per request <= the bare legacy-structure client's", target_cpu_vs_bare)
]
