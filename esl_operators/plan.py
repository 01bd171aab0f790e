"""The first task of a run: check every setting, then cut the servers into fetch batches.

Everything a run can get wrong up front is refused here, before a single request is sent: a bad param
(the table's rules, :func:`esl_operators.settings.resolve_params`), an unusable server list, more
batches than Airflow can map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esl_operators.config import (
    check_map_length,
    max_map_length,
    resolve_servers,
    split_batches,
)
from esl_operators.settings import resolve_params


def plan_run(
    params: Mapping[str, Any], context: Mapping[str, Any], *, map_limit: int | None = None
) -> list[list[str]]:
    """The batches to fetch. A date published earlier stays published (``_SUCCESS`` included) until
    this run's aggregate step replaces it as one set.

    Fails before anything is written when a param breaks the table's rules, or when the batches would
    exceed ``map_limit`` (default: Airflow's ``[core] max_map_length``), which Airflow would otherwise
    reject with a terse message.
    """
    values = resolve_params(params)
    servers = resolve_servers(values["servers"])
    per_batch = values["servers_per_batch"]
    batches = split_batches(servers, per_batch)
    check_map_length(len(servers), per_batch, max_map_length() if map_limit is None else map_limit)
    return batches
