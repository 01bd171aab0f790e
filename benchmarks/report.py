"""BENCHMARKS.md: machine facts, one table per scenario, and the targets of issue 6 with verdicts."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from importlib import metadata
from typing import Any

from benchmarks.scenarios import bounded_memory, busy, cpu_bound, fleet_scale, floor, startup
from benchmarks.tables import find, markdown_table

Summaries = dict[str, dict[str, Any]]
BUDGET_S = 15 * 60

METHOD = """\
How each number is measured (`benchmarks/harness.py`):

* **wall s**: `time.perf_counter()` from spawning the client process to reaping it, so interpreter
  start and imports are included (what a user waits for).
* **requests**: the simulator's own counters (`GET /_stats`, summed over servers) before and after a
  run; retries and refused (503) requests count too. The simulator runs in a separate process.
* **CPU s**: `ru_utime + ru_stime` of the client process, from `os.wait4` on its pid (never the
  simulator's or the harness's CPU); **CPU s / 1000 req** = CPU s / requests × 1000.
* **peak RSS MB**: `ru_maxrss` of the same `os.wait4` (the client process alone). The `wait4` is
  done by `benchmarks/launcher.py`, a stdlib-only interpreter (about 10 MB) that forks the client:
  Linux carries the forking process's peak RSS across `exec`, so clients spawned by the runner
  itself (about 95 MB) never showed less than the runner's size (until 2026-12-02).
* **rows**: data rows of the CSVs the client wrote, counted with `csv.reader` (for our fetch step
  alone: the `rows` of its batch manifests, as its part file is an intermediate format).
* Medians over the successful repetitions (repetitions are interleaved across clients);
  **requests/s** is median requests / median wall, so requests/s × wall = requests.
* The simulator shares the machine's cores with the client (it is one process, one event loop).
* **floor**: `requests / (servers × min(capacity, concurrency) / latency)` with the number of requests a
  complete export needs (computed from the same dataset), concurrency 4 (ours' default and the
  legacy semaphore): the wall time no client with that concurrency can beat.
"""


def _machine() -> list[str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model
            )
    except OSError:
        model = platform.processor() or model
    versions = []
    for package in ("apache-airflow", "aiohttp", "pandas", "pyarrow", "requests"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return [
        f"* CPU: {model}, {os.cpu_count()} cores",
        f"* OS: {platform.platform()}",
        f"* Python {platform.python_version()} ({platform.python_implementation()})",
        f"* {', '.join(versions)}",
    ]


def _value(s: Summaries, scenario: str, label: str, key: str) -> float | None:
    rows = s.get(scenario, {}).get("rows", [])
    row = find(rows, label)
    return None if row is None else row.get(key)


def _target_latency(s: Summaries) -> dict[str, Any]:
    ours, floor = _value(s, "latency", "ours (defaults)", "wall_s"), _value(s, "latency", "floor", "wall_s")
    if ours is None or floor is None:
        return {"ratio": None, "measured": "not measured"}
    legacy = _value(s, "latency", "legacy-style, sleep", "wall_s")
    together = _value(s, "latency", "ours, all", "wall_s")
    text = f"floor {floor:.2f} s / ours {ours:.2f} s"
    imports = _value(s, "memory", "imports only", "wall_s")
    if imports is not None and ours > imports:
        # Our process start and imports are a fixed cost, large next to a run of a few seconds.
        text += f" ({floor / (ours - imports):.0%} without ours' {imports:.2f} s of imports)"
    if together:
        text += f"; all servers at once: {floor / together:.0%} of the floor"
    if legacy:
        text += f"; the floor is {legacy / floor:.1f}× faster than legacy-style"
    return {"ratio": floor / ours, "measured": text, "met": floor / ours >= 0.85, "format": "{:.0%} of floor"}


def _target_cpu(s: Summaries) -> dict[str, Any]:
    ours = _value(s, "cpu", "ours (defaults)", "cpu_per_1000")
    plain = _value(s, "cpu", "requests + threads", "cpu_per_1000")
    if not ours or not plain:
        return {"ratio": None, "measured": "not measured"}
    text = f"CPU s per 1000 requests: ours {ours:.3f}, requests + threads {plain:.3f}"
    return {"ratio": plain / ours, "measured": text, "met": plain / ours >= 2, "format": "{:.2f}×"}


def _target_memory(s: Summaries) -> dict[str, Any]:
    rows = [r for r in s.get("memory", {}).get("rows", []) if r["label"].startswith("ours, fetch step")]
    if len(rows) != 2 or not all(r.get("peak_rss_mb") for r in rows):
        return {"ratio": None, "measured": "not measured"}
    small, large = rows
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    text = "; ".join(f"{r['label'].split(', ')[-1]}: {r['peak_rss_mb']:.0f} MB" for r in rows)
    return {"ratio": ratio, "measured": text, "met": ratio <= 1.2, "format": "{:+.0%}", "offset": -1}


def _target_aggregation(s: Summaries) -> dict[str, Any]:
    ours, naive = (
        _value(s, "aggregation", "ours, partitions", "wall_s"),
        _value(s, "aggregation", "naive pandas", "wall_s"),
    )
    if not ours or not naive:
        return {"ratio": None, "measured": "not measured"}
    rss_ours = _value(s, "aggregation", "ours, partitions", "peak_rss_mb") or 0
    rss_naive = _value(s, "aggregation", "naive pandas", "peak_rss_mb") or 0
    text = f"pandas {naive:.2f} s / ours {ours:.2f} s"
    text += f"; peak RSS ours {rss_ours:.0f} MB, pandas {rss_naive:.0f} MB"
    return {"ratio": naive / ours, "measured": text, "met": naive / ours >= 3, "format": "{:.2f}×"}


def _target_e2e(s: Summaries) -> dict[str, Any]:
    dag = _value(s, "e2e", "airflow dags test", "wall_s")
    cli = _value(s, "e2e", "standalone", "wall_s")
    if dag is None or cli is None:
        return {"ratio": None, "measured": "not measured"}
    text = f"dags test {dag:.2f} s, standalone {cli:.2f} s"
    return {"ratio": dag - cli, "measured": text, "met": dag - cli < 10, "format": "{:+.2f} s"}


def _target_adaptive(s: Summaries) -> dict[str, Any]:
    if "capacity" not in s:
        return {"ratio": None, "measured": "not measured"}
    if not s["capacity"].get("adaptive_available"):
        return {
            "ratio": None,
            "measured": "not measured: `fetch` has no `--no-adaptive-concurrency` flag yet",
        }
    walls = {k: _value(s, "capacity", f"ours, {k}", "wall_s") for k in ("fixed 1", "fixed 16", "adaptive")}
    if None in walls.values():
        return {"ratio": None, "measured": "not measured (a run failed, see the table)"}
    best_fixed = min(walls["fixed 1"], walls["fixed 16"])  # type: ignore[type-var]
    text = ", ".join(f"{k} {v:.2f} s" for k, v in walls.items())
    ratio = best_fixed / walls["adaptive"]  # type: ignore[operator]
    return {"ratio": ratio, "measured": text, "met": ratio > 1, "format": "{:.2f}× the better fixed"}


def _target_runtime(meta: dict[str, Any], complete: bool) -> dict[str, Any]:
    minutes = meta["total_s"] / 60
    if meta["quick"] or not complete:
        return {"ratio": None, "measured": f"{minutes:.1f} min (partial or quick run: no verdict)"}
    return {
        "ratio": minutes,
        "measured": f"{minutes:.1f} min",
        "met": meta["total_s"] < BUDGET_S,
        "format": "{:.1f} min",
    }


TARGETS: list[tuple[str, Callable[[Summaries], dict[str, Any]]]] = [
    ("Latency-bound: ours (defaults) at least 85% of the floor", _target_latency),
    ("CPU-bound: at least 2× more requests per CPU-second than requests + threads", _target_cpu),
    ("Memory: peak RSS of a fetch within 20% from 20k to 200k ESLs per task", _target_memory),
    ("Aggregation: 1M rows at least 3× faster than naive pandas", _target_aggregation),
    ("End to end: `airflow dags test` adds less than 10 s over the standalone command", _target_e2e),
    ("Capacity-limited: adaptive concurrency beats fixed 1 and fixed 16", _target_adaptive),
    *bounded_memory.TARGETS,  # issue 11, target 1
    *cpu_bound.TARGETS,  # issue 11, target 2
    *startup.TARGETS,  # issue 11, target 3
    *floor.TARGETS,  # issue 11, target 4
    *busy.TARGETS,  # issue 11, target 5
    *fleet_scale.TARGETS,  # issue 11, target 6
]


def evaluate(s: Summaries, meta: dict[str, Any]) -> list[dict[str, Any]]:
    results = [{"target": name, **check(s)} for name, check in TARGETS]
    complete = {"latency", "cpu", "capacity", "memory", "aggregation", "e2e"} <= set(s)
    results.append({"target": "`make bench` runs in under 15 minutes", **_target_runtime(meta, complete)})
    return results


def _verdict(target: dict[str, Any]) -> tuple[str, str]:
    if target.get("ratio") is None:
        return "—", "not measured"
    ratio = target["ratio"] + target.get("offset", 0)
    return target["format"].format(ratio), "**met**" if target["met"] else "**not met**"


def render(s: Summaries, meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The whole BENCHMARKS.md, and the evaluated targets (for the JSON output)."""
    targets = evaluate(s, meta)
    lines = ["# Benchmarks", "", "Generated by `make bench` (`benchmarks/run.py`); do not edit by hand.", ""]
    lines += [
        f"* Date: {meta['date']}; repetitions: {meta['repetitions']} (medians)"
        + ("; **quick mode** (tiny sizes)" if meta["quick"] else ""),
        f"* Total runtime: {meta['total_s'] / 60:.1f} min; 1-minute load average at start / end: "
        f"{meta['load_average'][0]:.2f} / {meta['load_average'][1]:.2f}",
        *_machine(),
        "",
    ]
    lines += ["## Targets (issue 6)", "", "| target | measured | ratio | verdict |", "|---|---|---|---|"]
    for target in targets:
        ratio, verdict = _verdict(target)
        lines.append(f"| {target['target']} | {target['measured']} | {ratio} | {verdict} |")
    lines += ["", "## Method", "", METHOD]
    for scenario in s.values():
        lines += [f"## {scenario['title']}", "", scenario["description"], ""]
        if scenario.get("expected_rows") is not None:
            lines += [
                f"Rows a correct export publishes (from the dataset): {scenario['expected_rows']:,}.",
                "",
            ]
        if scenario["rows"]:
            lines += [markdown_table(scenario["rows"], scenario["columns"]), ""]
    return "\n".join(lines), targets
