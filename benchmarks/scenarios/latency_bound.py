"""Latency-bound: servers that answer slowly and admit a few requests at once; the floor is the bound."""

from __future__ import annotations

from benchmarks.bench import Bench, Scenario, baselines, describe, ours
from benchmarks.harness import FleetSpec
from benchmarks.network import network_scenario

# 20 ms, capacity 8, 4 servers; stores small enough that 1 s per page stays bounded.
FULL = FleetSpec(servers=4, stores=6, esls=400, latency_ms=20, capacity=8, seed=1)
QUICK = FleetSpec(servers=2, stores=3, esls=60, page_size=20, latency_ms=5, capacity=8, seed=1)


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
    n = str(spec.servers)
    clients = [
        ours("ours (defaults)"),
        ours(
            f"ours, all {n} servers at once (--servers-per-batch {n} --max-threads {n})",
            "--servers-per-batch",
            n,
            "--max-threads",
            n,
        ),
        *baselines(bench),
    ]
    return network_scenario(bench, spec, clients, "Latency-bound", describe(spec))
