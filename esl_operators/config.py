"""Where run settings come from: DAG params first, then Airflow Variables, then defaults.

One function per setting, called at run time by tasks (never at DAG-parse time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from esl_operators.exceptions import ConfigError
from esl_operators.storage import SUCCESS_NAME, as_local_root, run_dir

SERVERS_VARIABLE = "esl_servers"
OUTPUT_ROOT_VARIABLE = "esl_output_root"
DEFAULT_OUTPUT_ROOT = "./data/esl_export"

#: Environment variable naming the Airflow pool of the fetch tasks, read where the DAG is parsed (the
#: dag-processor, ``airflow dags test``); unset, they run in Airflow's own ``default_pool``, which every
#: installation has. A named pool must exist (``airflow pools set NAME 16 "..."``): tasks of a missing
#: pool are never scheduled.
POOL_ENV = "ESL_EXPORT_POOL"
DEFAULT_POOL = "default_pool"
#: Fetch tasks of one run that may run at once, whatever the pool allows.
MAX_ACTIVE_FETCHES_PER_RUN = 8
#: The name of the Asset the aggregate task updates when a date is published.
OUTPUT_ASSET_NAME = "esl_export_csv"
OUTPUT_ASSET_URI = "x-esl-export://esl_export/csv"
#: Airflow's default for ``[core] max_map_length``.
DEFAULT_MAX_MAP_LENGTH = 1024


def fetch_pool() -> str:
    """The pool of the fetch tasks: ``$ESL_EXPORT_POOL``, else ``default_pool`` (parse time, no database)."""
    return os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL


def parse_server_list(value: Any, source: str) -> list[str]:
    """A list of connection ids: JSON text or a list, non-empty strings, no duplicates."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ConfigError(f"{source} must be a JSON list of connection ids, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{source} holds {item!r}, which is not a connection id")
    duplicates = sorted({item for item in value if value.count(item) > 1})
    if duplicates:
        raise ConfigError(f"{source} lists {duplicates} more than once")
    return list(value)


def resolve_servers(param_value: Any) -> list[str]:
    """The param ``servers`` when given, else the Variable ``esl_servers``."""
    if param_value:
        return parse_server_list(param_value, "param 'servers'")
    from airflow.sdk import Variable

    raw = Variable.get(SERVERS_VARIABLE, default=None)
    if raw is None:
        raise ConfigError(f"no servers: set the Variable {SERVERS_VARIABLE!r} or the param 'servers'")
    servers = parse_server_list(raw, f"Variable {SERVERS_VARIABLE!r}")
    if not servers:
        raise ConfigError(f"Variable {SERVERS_VARIABLE!r} is an empty list")
    return servers


def split_batches(servers: list[str], servers_per_batch: int) -> list[list[str]]:
    """Consecutive batches in list order; batch i becomes ``esl_id_part_{i+1}.csv``."""
    if servers_per_batch < 1:
        raise ConfigError(f"servers_per_batch must be >= 1, got {servers_per_batch}")
    return [servers[i : i + servers_per_batch] for i in range(0, len(servers), servers_per_batch)]


def max_map_length() -> int:
    """Airflow's ``[core] max_map_length``: the most mapped tasks one upstream list may create."""
    from airflow.sdk.configuration import conf

    return conf.getint("core", "max_map_length", fallback=DEFAULT_MAX_MAP_LENGTH)


def check_map_length(servers: int, servers_per_batch: int, limit: int) -> None:
    """Refuse a plan with more batches than Airflow can map, saying how to fix it."""
    batches = -(-servers // servers_per_batch)
    if batches <= limit:
        return
    needed = -(-servers // limit)
    raise ConfigError(
        f"{servers} servers in batches of {servers_per_batch} make {batches} fetch tasks, more than "
        f"Airflow's [core] max_map_length of {limit}: set the param servers_per_batch to at least "
        f"{needed}, or raise max_map_length (AIRFLOW__CORE__MAX_MAP_LENGTH) on the scheduler, "
        "API server and workers"
    )


def plan_run(
    params: Mapping[str, Any], context: Mapping[str, Any], *, map_limit: int | None = None
) -> list[list[str]]:
    """First task of a run: the batches to fetch; the date's ``_SUCCESS`` is withdrawn until the end.

    Fails before anything is written when the batches would exceed ``map_limit`` (default: Airflow's
    ``[core] max_map_length``), which Airflow would otherwise reject with a terse message.
    """
    servers = resolve_servers(params.get("servers"))
    per_batch = int(params["servers_per_batch"])
    batches = split_batches(servers, per_batch)
    check_map_length(len(servers), per_batch, max_map_length() if map_limit is None else map_limit)
    _, ds = run_anchor(context)
    folder = run_dir(resolve_output_root(params.get("output_root")), ds)
    (folder / SUCCESS_NAME).unlink(missing_ok=True)
    return batches


def resolve_output_root(param_value: str | None) -> Any:
    """``ObjectStoragePath`` of the param ``output_root``, else the Variable, else ``./data/esl_export``.

    A root without a scheme is a local folder, made absolute against the task's working directory.
    """
    from airflow.sdk import ObjectStoragePath, Variable

    root = param_value or Variable.get(OUTPUT_ROOT_VARIABLE, default=None) or DEFAULT_OUTPUT_ROOT
    if "://" not in root:
        root = as_local_root(root).as_uri()
    return ObjectStoragePath(root)


#: Where a run's heartbeat anchor came from, in order of preference; recorded as the run manifest's
#: ``anchor_source``. The standalone command anchors on midnight UTC of ``--date`` (``"date"``).
ANCHOR_SOURCES = ("logical_date", "data_interval_end", "run_after")


def anchor_of(context: Mapping[str, Any]) -> tuple[datetime, str]:
    """The heartbeat anchor of a run and where it came from (one of :data:`ANCHOR_SOURCES`).

    The logical date whenever the run has one, so a scheduled run, a backfill, the UI's trigger form and
    ``airflow dags trigger --logical-date D`` all anchor on D (the CLI sets ``data_interval_end`` to the
    trigger time). Runs without a logical date fall back to ``data_interval_end``, then ``run_after``.
    Never the wall clock: a backfill of a past date must look back from that date.
    """
    dag_run = context.get("dag_run")
    for source in ANCHOR_SOURCES:
        anchor = context.get(source) if source != "run_after" else getattr(dag_run, "run_after", None)
        if anchor is not None:
            return anchor, source
    raise ConfigError("the run has no logical_date, data_interval_end or run_after to anchor on")


def run_anchor(context: Mapping[str, Any]) -> tuple[datetime, str]:
    """The heartbeat anchor (see :func:`anchor_of`) and the output date folder (its UTC date) of a run."""
    anchor, _ = anchor_of(context)
    return anchor, anchor.astimezone(UTC).strftime("%Y-%m-%d")
