"""Start-up (issue 11, target 3): how soon after its process starts ``esl-export fetch`` sends its
first request, what importing the command costs, and what parsing the DAG file loads.

* **first request s**: a probe HTTP server in the benchmark process (loopback, a thread) notes
  ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process) when the first request
  line arrives; the harness notes it just before it spawns the client; the difference is the
  first-request latency, interpreter start, imports, argument checks, the date's lease and the
  connection included. The probe answers ``/api3/users`` with no stores, so the command then
  publishes an empty date (wall and CPU are those of that whole short run). Median of
  several runs, the bare legacy-structure client (aiohttp only, ``benchmarks/legacy.py``) beside it.
* **imports**: ``python -c 'import X'`` for the command's module and, for scale, aiohttp alone and
  the bare interpreter; the note lists which heavy modules the import loaded, and its peak RSS is
  the child's own ``VmHWM`` (``/proc/self/status``), which agrees with the launcher's
  ``ru_maxrss`` (``benchmarks/launcher.py``: a client spawned by the runner itself would count the
  runner's 100 MB too).
* **DAG file parse**: ``dags/esl_export.py`` run as the dag-processor would import it (Airflow
  itself included); it must load none of pandas, pyarrow, numpy, aiohttp or tqdm.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.bench import DATE, Bench, Scenario
from benchmarks.harness import PYTHON, REPO, Measurement, measure
from benchmarks.tables import Row, find

TARGET_S = 0.3
NOTES = """\
**Before the first request** (measured by hand, 2026-12-02, CPU s of the process from its start,
load 4 to 7, 4 runs): the interpreter and `import esl_operators.cli` 0.06-0.09 (argparse, the
settings table), the fetch path's imports 0.16-0.18 more (aiohttp about 0.15 of them: it builds two
TLS contexts, loading the system's CA bundle, at import), the arguments, the date's lease and the
stale-staging check 0.01, the thread pool, event loop and session under 0.005: 0.24-0.275 s of CPU
in all, so about 0.25-0.28 s on an idle core, and two to three times that while the machine is
loaded (this table's medians: wall clock, whatever the load). Deferred until after the first request:
pyarrow and numpy (with the part writer's first batch), the aggregate step (pyarrow.compute, pandas),
tqdm (only with a terminal). Before this change `import esl_operators.cli` alone loaded aiohttp,
pyarrow, numpy and tqdm: 0.48-0.54 CPU s, and the first request left 0.96-1.39 s after spawn in the
same conditions (bare client: 0.45-0.67 s). What is left is mostly aiohttp's import: the bare
client pays it too.
"""
RUNS = (7, 2)  # full, quick: each run is about a second
HEAVY = ("pandas", "pyarrow", "numpy", "aiohttp", "tqdm", "matplotlib", "jinja2", "airflow")
# The DAG file's own imports may load Airflow (it is a DAG); these are what it must not load.
NOT_IN_DAG_PARSE = ("pandas", "pyarrow", "numpy", "aiohttp", "tqdm", "matplotlib")
OURS = "ours: esl-export fetch, first request"
BARE = "legacy-style (bare aiohttp), first request"
DAG_PARSE = "DAG file parse (dags/esl_export.py)"
# Printed by an import row's child: the heavy modules it loaded and its own peak RSS.
_REPORT = """
def report(heavy):
    import json, sys
    with open("/proc/self/status", encoding="ascii") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"loaded": [m for m in heavy if m in sys.modules], "hwm_mb": kib / 1024}))
"""
_USERS = json.dumps({"status_no": 0, "message": "ok", "data": []}).encode()


class _Probe(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

    def do_GET(self) -> None:
        moment = time.monotonic()
        self.server.arrivals.append(moment)  # type: ignore[attr-defined]
        body = _USERS if self.path.startswith("/api3/users") else b'{"status_no": 0, "data": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the probe is silent: its output would only slow it down


@contextmanager
def _probe() -> Iterator[tuple[str, list[float]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    server.arrivals = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.arrivals  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _first_requests(bench: Bench, label: str, prefix: Sequence[str], runs: int) -> Row:
    """``runs`` runs of a client against the probe: medians of first-request latency and the rest."""
    latencies: list[float] = []
    measured: list[Measurement] = []
    with _probe() as (url, arrivals):
        for number in range(runs):
            out = bench.work / "startup-out"
            arrivals.clear()
            cmd = [PYTHON, "-m", *prefix, "--server", url, "--date", DATE, "--out", str(out)]
            spawned = time.monotonic()
            run = measure(cmd, log_path=bench.log("startup"), timeout_s=120)
            measured.append(run)
            # The launcher's clock, just before the client's fork, when it said (the launcher's own
            # start is not the client's); the harness's spawn time otherwise.
            spawned = run.spawned_at or spawned
            if run.ok and arrivals:
                latencies.append(arrivals[0] - spawned)
            first = _seconds(arrivals, spawned)
            bench.say(f"  {label} #{number + 1}: first request {first}, exit {run.exit_code}")
    return _row(label, measured, latencies)


def _seconds(arrivals: list[float], spawned: float) -> str:
    return f"{arrivals[0] - spawned:.3f} s" if arrivals else "none"


def _row(label: str, runs: list[Measurement], latencies: list[float]) -> Row:
    ok = [r for r in runs if r.ok]
    if not ok or not latencies:
        failed = runs[-1].log_tail if runs else "not run"
        return Row(label, computed={}, note=f"no first request measured: {failed}")
    computed = {
        "first_request_s": statistics.median(latencies),
        "wall_s": statistics.median(r.wall_s for r in ok),
        "cpu_s": statistics.median(r.cpu_s for r in ok),
    }
    note = f"median of {len(latencies)}: " + ", ".join(f"{v:.3f}" for v in sorted(latencies))
    if len(ok) < len(runs):
        note += f"; {len(runs) - len(ok)} runs failed: {runs[-1].log_tail}"
    return Row(label, computed=computed, note=note)


def _imports(bench: Bench, label: str, code: str, runs: int) -> Row:
    """Medians of ``python -c CODE`` (which prints the heavy modules it loaded as JSON)."""
    script = f"{code}\n{_REPORT}\nreport({HEAVY!r})"
    measured: list[Measurement] = []
    loaded: list[str] = []
    for _ in range(runs):
        log = bench.log("imports")
        run = measure([PYTHON, "-c", script], log_path=log, timeout_s=300)
        measured.append(run)
        if run.ok:
            facts = json.loads(log.read_text(encoding="utf-8").strip().splitlines()[-1])
            loaded, run.peak_rss_mb = facts["loaded"], facts["hwm_mb"]
        bench.say(f"  {label}: {run.wall_s:.2f} s, {run.cpu_s:.2f} CPU s, {run.peak_rss_mb:.0f} MB")
    ok = [r for r in measured if r.ok]
    if not ok:
        return Row(label, computed={}, note=f"failed: {measured[-1].log_tail}")
    computed = {
        "wall_s": statistics.median(r.wall_s for r in ok),
        "cpu_s": statistics.median(r.cpu_s for r in ok),
        "peak_rss_mb": statistics.median(r.peak_rss_mb for r in ok),
    }
    return Row(label, computed=computed, note="loads: " + (", ".join(loaded) or "none of " + "/".join(HEAVY)))


def run(bench: Bench) -> Scenario:
    runs = bench.pick(*RUNS)
    rows: list[Row] = []
    # Interleaving is not needed here: each run is short, and both clients see the same probe.
    rows.append(_first_requests(bench, OURS, ("esl_operators", "fetch"), runs))
    rows.append(_first_requests(bench, BARE, ("benchmarks.legacy",), runs))
    reps = bench.pick(3, 1)
    rows.append(_imports(bench, "python -c 'import esl_operators.cli'", "import esl_operators.cli", reps))
    rows.append(_imports(bench, "python -c 'import aiohttp' (the HTTP client alone)", "import aiohttp", reps))
    rows.append(_imports(bench, "python -c 'pass' (the interpreter)", "pass", reps))
    dag = f"import runpy\nrunpy.run_path({str(REPO / 'dags' / 'esl_export.py')!r})"
    rows.append(_imports(bench, DAG_PARSE, dag, 1))
    return {
        "title": "Start-up",
        "description": (__doc__ or "").split("\n\n", 1)[1].strip() + "\n\n" + NOTES,
        "rows": rows,
        "columns": ("first_request_s", "wall_s", "cpu_s", "peak_rss_mb"),
    }


# --- target of issue 11, target 3 (a row of BENCHMARKS.md's targets table) ---------------------------


def target_first_request(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = s.get("startup", {}).get("rows", [])
    ours, bare, dag = find(rows, OURS), find(rows, BARE), find(rows, DAG_PARSE)
    if not ours or ours.get("first_request_s") is None:
        return {"ratio": None, "measured": "not measured"}
    first = ours["first_request_s"]
    text = f"ours {first:.3f} s after spawn (median)"
    if bare and bare.get("first_request_s") is not None:
        text += f"; the bare aiohttp client {bare['first_request_s']:.3f} s"
    aiohttp_row = find(rows, "python -c 'import aiohttp'")
    if aiohttp_row and aiohttp_row.get("wall_s") is not None:
        text += f"; `import aiohttp` alone {aiohttp_row['wall_s']:.3f} s wall"
    heavy = ["not measured"]
    if dag and dag.get("note", "").startswith("loads: "):
        loaded = dag["note"].removeprefix("loads: ").split(", ")
        heavy = [m for m in NOT_IN_DAG_PARSE if m in loaded]
    text += "; DAG parse loads " + (", ".join(heavy) if heavy else "none of " + "/".join(NOT_IN_DAG_PARSE))
    met = first <= TARGET_S and not heavy
    return {"ratio": first, "measured": text, "met": met, "format": "{:.3f} s"}


TARGETS = [(f"Start-up: first request <= {TARGET_S} s after process start", target_first_request)]
