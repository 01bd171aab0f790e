"""Where a run's inputs come from: DAG params first, then Airflow Variables, then defaults.

The settings themselves (types, defaults, bounds) are the table in :mod:`esl_operators.settings`; this
module resolves what the table cannot know: the server list, the output root, the run's anchor and the
Airflow limits a plan must respect. Called at run time by tasks (never at DAG-parse time), except
:func:`fetch_pool`, which reads only the environment; no files are touched here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from esl_operators.exceptions import ConfigError
from esl_operators.settings import parse_server_list
from esl_operators.storage import as_local_root

SERVERS_VARIABLE = "esl_servers"
OUTPUT_ROOT_VARIABLE = "esl_output_root"
DEFAULT_OUTPUT_ROOT = "./data/esl_export"
DAG_ID = "esl_export"

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
#: Where the api-server mounts the "ESL exports" view (esl_operators.plugin); alert mails link below it.
VIEW_URL_PREFIX = "/esl-exports"
#: Airflow's default for ``[core] max_map_length``.
DEFAULT_MAX_MAP_LENGTH = 1024


def fetch_pool() -> str:
    """The pool of the fetch tasks: ``$ESL_EXPORT_POOL``, else ``default_pool``.

    The one setting read at DAG-parse time (where the dag-processor runs): from the environment only,
    never the database.
    """
    return os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL


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

    return int(conf.getint("core", "max_map_length", fallback=DEFAULT_MAX_MAP_LENGTH))


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


def resolve_output_root(param_value: str | None) -> Any:
    """``ObjectStoragePath`` of the param ``output_root``, else the Variable, else ``./data/esl_export``.

    A root without a scheme is a local folder, made absolute against the task's working directory.
    """
    from airflow.sdk import Variable

    root = param_value or Variable.get(OUTPUT_ROOT_VARIABLE, default=None) or DEFAULT_OUTPUT_ROOT
    return output_root_path(root)


def output_root_path(root: str) -> Any:
    """The ``ObjectStoragePath`` an ``output_root`` text names: the one rule for the writer and the view.

    Without a scheme, a local folder made absolute against the working directory. A ``file://`` URL is
    taken as ``ObjectStoragePath`` takes it: percent-escapes stay literal (``file:///x/my%20exports`` is
    a folder named ``my%20exports``), so the view (:mod:`esl_operators.web.files`) lists exactly the
    folder the tasks wrote.
    """
    from airflow.sdk import ObjectStoragePath

    if "://" not in root:
        # Not Path.as_uri(): ObjectStoragePath keeps percent-escapes literally, so "/x/my exports" would
        # become a folder named "my%20exports".
        root = "file://" + str(as_local_root(root))
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
