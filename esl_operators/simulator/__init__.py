"""Deterministic simulator of Hanshow ESL-Working servers (HTTP API v3) for tests and benchmarks."""

from .clock import CLOCK_EPOCH
from .dataset import DEFAULT_STORE, Fleet, ServerData, build_fleet, envelope, reference_ms_for
from .faults import GROW_ENDS, TRANSIENT_KINDS, FaultProfile, grown_store
from .server import STATS_KEY, STATS_PATH, RunningServer, Stats, make_app, start_fleet, stop_fleet
from .threaded import SimulatorThread

__all__ = [
    "CLOCK_EPOCH",
    "DEFAULT_STORE",
    "GROW_ENDS",
    "STATS_KEY",
    "STATS_PATH",
    "TRANSIENT_KINDS",
    "FaultProfile",
    "Fleet",
    "RunningServer",
    "ServerData",
    "SimulatorThread",
    "Stats",
    "build_fleet",
    "envelope",
    "grown_store",
    "make_app",
    "reference_ms_for",
    "start_fleet",
    "stop_fleet",
]
