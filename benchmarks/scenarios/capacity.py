"""Capacity-limited: a server refusing what exceeds its capacity (503); adaptive vs fixed limits."""

from __future__ import annotations

import subprocess

from benchmarks.bench import Bench, Client, Scenario, baselines, describe, ours
from benchmarks.harness import PYTHON, REPO, FleetSpec
from benchmarks.network import NETWORK_COLUMNS, network_scenario

FULL = FleetSpec(servers=1, stores=8, esls=300, latency_ms=20, capacity=4, overload_status=503, seed=3)
QUICK = FleetSpec(servers=1, stores=3, esls=60, page_size=20, latency_ms=5, capacity=4, overload_status=503)


def has_adaptive_flag() -> bool:
    help_text = subprocess.run(
        [PYTHON, "-m", "esl_operators", "fetch", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    return "--no-adaptive-concurrency" in help_text


def run(bench: Bench) -> Scenario:
    spec = bench.pick(FULL, QUICK)
    adaptive = has_adaptive_flag()
    fixed = ("--no-adaptive-concurrency",) if adaptive else ()
    clients: list[Client] = [
        ours("ours (defaults)"),
        ours("ours, fixed 1", "--max-concurrency", "1", *fixed),
        ours("ours, fixed 16", "--max-concurrency", "16", *fixed),
    ]
    if adaptive:
        clients.append(ours("ours, adaptive, max 16", "--max-concurrency", "16"))
    clients += baselines(bench, with_sleep=False)
    text = describe(spec) + " Requests beyond the capacity are refused at once with 503 + Retry-After: 0."
    if not adaptive:
        text += (
            " `esl-export fetch --help` has no `--no-adaptive-concurrency` yet: the fixed rows ran"
            " with the engine's default limiter, and the adaptive row is skipped."
        )
    result = network_scenario(bench, spec, clients, "Capacity-limited (overload answers 503)", text)
    result["columns"] = (*NETWORK_COLUMNS, "overloaded")
    result["adaptive_available"] = adaptive
    return result
