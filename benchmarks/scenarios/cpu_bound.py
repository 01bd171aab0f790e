"""CPU-bound: latency 0, so the client's own CPU per request is what is measured."""

from __future__ import annotations

from benchmarks.bench import Bench, Scenario, baselines, describe, ours
from benchmarks.harness import FleetSpec
from benchmarks.network import network_scenario

FULL = FleetSpec(servers=2, stores=40, esls=3000, seed=2)
QUICK = FleetSpec(servers=1, stores=3, esls=100, page_size=20, seed=2)


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
    clients = [ours("ours (defaults)"), *baselines(bench)]
    text = describe(spec) + " The simulator serves from its own process; CPU is the client's alone."
    return network_scenario(bench, spec, clients, "CPU-bound", text)
