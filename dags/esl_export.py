"""Daily export of Electronic Shelf Label data from a fleet of Hanshow ESL-Working servers.

Wiring only: the logic lives in the ``esl_operators`` package. See README.md for configuration.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from esl_operators import EslAggregateOperator, EslFetchOperator
from esl_operators.config import (
    MAX_ACTIVE_FETCHES_PER_RUN,
    OUTPUT_ASSET_NAME,
    OUTPUT_ASSET_URI,
    fetch_pool,
)

# Updated by the aggregate task once a date is published; the event's extra names the date and folder.
esl_export_csv = Asset(name=OUTPUT_ASSET_NAME, uri=OUTPUT_ASSET_URI, group="esl")

with DAG(
    dag_id="esl_export",
    description="ESL-Working fleet -> sorted CSV partitions",
    schedule="@daily",
    start_date=datetime(2020, 1, 1),  # early, so backfills of past dates run
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["esl"],
    doc_md=__doc__,
    params={
        "servers": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "minLength": 1},
            uniqueItems=True,
            title="Servers",
            description="Connection ids of the ESL-Working servers. Empty: the Variable esl_servers.",
        ),
        "servers_per_batch": Param(
            1,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Servers per batch",
            description="Servers per fetch task; each batch becomes one esl_id_part_N.csv.",
        ),
        "lookback_days": Param(
            7,
            type="integer",
            minimum=0,
            maximum=3650,
            title="Heartbeat lookback (days)",
            description="Keep labels whose last heartbeat is at most this many days before the run date.",
        ),
        "max_records_per_store": Param(
            50_000,
            type="integer",
            minimum=1,
            maximum=10_000_000,
            title="Max rows per store",
            description="Stop a store once this many rows are kept; capped stores are named in the manifest.",
        ),
        "max_concurrency": Param(
            4,
            type="integer",
            minimum=1,
            maximum=64,
            title="Requests in flight per server",
            description="Concurrent requests per server; weak in-store servers want a small number.",
        ),
        "adaptive_concurrency": Param(
            True,
            type="boolean",
            title="Adapt concurrency per server",
            description="Start each server at 1 request in flight and adapt up to max_concurrency: grow "
            "while latency stays near its baseline, back off on 429/503, timeouts and rising latency. "
            "Off: every server gets max_concurrency from the start.",
        ),
        "max_threads": Param(
            3,
            type="integer",
            minimum=1,
            maximum=32,
            title="Servers fetched at once per task",
            description="Worker threads per fetch task, each with its own event loop.",
        ),
        "on_server_error": Param(
            "fail",
            type="string",
            enum=["fail", "skip"],
            title="When a server or store fails",
            description="fail: the batch's task fails after writing its manifest, so Airflow retries "
            "that batch alone. skip: record the failure in the manifest and publish the rest.",
        ),
        "request_timeout_s": Param(
            60,
            type="number",
            exclusiveMinimum=0,
            maximum=3600,
            title="Request timeout (s)",
            description="Total time for one request attempt; a connection extra 'timeout' overrides it.",
        ),
        "connect_timeout_s": Param(
            10,
            type="number",
            exclusiveMinimum=0,
            maximum=600,
            title="Connect timeout (s)",
            description="Time to open a connection; a connection extra 'connect_timeout' overrides it.",
        ),
        "retry_attempts": Param(
            5,
            type="integer",
            minimum=1,
            maximum=20,
            title="Attempts per request",
            description="Tries per request (first included) on timeouts, resets, 5xx, 429 and broken bodies, "
            "with exponential backoff and full jitter; Retry-After is honoured.",
        ),
        "output_root": Param(
            None,
            type=["null", "string"],
            title="Output root",
            description="Folder or object-storage URL. Empty: the Variable esl_output_root, "
            "else ./data/esl_export.",
        ),
        "header_style": Param(
            "standard",
            type="string",
            enum=["standard", "legacy"],
            title="CSV header style",
            description="standard: English columns, UTC ISO timestamps. legacy: the old script's columns.",
        ),
        "timezone": Param(
            "UTC",
            type="string",
            minLength=1,
            title="Time zone (legacy style)",
            description="IANA time zone for legacy-style timestamps, e.g. Asia/Shanghai.",
        ),
    },
) as dag:

    @task
    def plan_batches(**context: Any) -> list[list[str]]:
        from esl_operators.config import plan_run

        return plan_run(context["params"], context)

    fetch = EslFetchOperator.partial(
        task_id="fetch",
        output_root="{{ params.output_root }}",
        lookback_days="{{ params.lookback_days }}",
        max_records_per_store="{{ params.max_records_per_store }}",
        max_concurrency="{{ params.max_concurrency }}",
        adaptive_concurrency="{{ params.adaptive_concurrency }}",
        max_threads="{{ params.max_threads }}",
        on_server_error="{{ params.on_server_error }}",
        request_timeout_s="{{ params.request_timeout_s }}",
        connect_timeout_s="{{ params.connect_timeout_s }}",
        retry_attempts="{{ params.retry_attempts }}",
        retries=2,
        retry_delay=timedelta(minutes=1),
        pool=fetch_pool(),  # $ESL_EXPORT_POOL, else default_pool (README: Scale-out)
        max_active_tis_per_dagrun=MAX_ACTIVE_FETCHES_PER_RUN,
    ).expand(servers=plan_batches())

    EslAggregateOperator(
        task_id="aggregate",
        manifests=fetch.output,
        output_root="{{ params.output_root }}",
        header_style="{{ params.header_style }}",
        timezone="{{ params.timezone }}",
        outlets=[esl_export_csv],
    )
