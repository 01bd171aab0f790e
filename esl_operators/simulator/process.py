"""Driving the simulator's command line from another process (tests, benchmarks)."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def spawn(args: Sequence[str]) -> subprocess.Popen[bytes]:
    """``python -m esl_operators.simulator ARGS`` with stdout piped (for :func:`read_lines`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "esl_operators.simulator", *args],
        cwd=_PACKAGE_ROOT,
        env={**os.environ, "PYTHONPATH": str(_PACKAGE_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """The first ``count`` stdout lines of ``proc`` (its "listening on" lines), never blocking past
    ``timeout``: a simulator that hangs or dies is reported, not waited for."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while buffer.count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"simulator printed only {buffer!r} within {timeout} s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"simulator exited early (code {proc.wait()}), printed {buffer!r}")
            buffer += chunk
    return buffer.decode().splitlines()[:count]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop ``proc`` by its PID if it still runs: SIGTERM (the simulator stops cleanly on it), then
    SIGKILL after ``timeout``, its pipes drained."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=timeout)
