"""Daily export of Electronic Shelf Label data from a fleet of Hanshow ESL-Working servers.

Wiring only: the logic lives in the ``esl_operators`` package. See README.md for configuration.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, task

from esl_operators import EslAggregateOperator, EslFetchOperator
from esl_operators.config import (
    MAX_ACTIVE_FETCHES_PER_RUN,
    OUTPUT_ASSET_NAME,
    OUTPUT_ASSET_URI,
    fetch_pool,
)
from esl_operators.notify import EslRunNotifier
from esl_operators.settings import dag_params, templated

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
    params=dag_params(),
    # Alert mails (params notify_to / notify_conn_id): a failed run, or one that published with errors.
    on_failure_callback=EslRunNotifier(failed=True),
    on_success_callback=EslRunNotifier(failed=False),
) as dag:

    @task
    def plan_batches(**context: Any) -> list[list[str]]:
        from esl_operators.plan import plan_run

        return plan_run(context["params"], context)

    fetch = EslFetchOperator.partial(
        task_id="fetch",
        **templated("fetch"),  # every fetch setting, from the run's params (esl_operators.settings)
        retries=2,
        retry_delay=timedelta(minutes=1),
        pool=fetch_pool(),  # $ESL_EXPORT_POOL, else default_pool (README: Scale-out)
        max_active_tis_per_dagrun=MAX_ACTIVE_FETCHES_PER_RUN,
    ).expand(servers=plan_batches())

    EslAggregateOperator(
        task_id="aggregate",
        manifests=fetch.output,
        **templated("aggregate"),
        # Retried later when another writer holds the date's lease (esl_operators.lease: a dead
        # writer's lease expires within 2 minutes) or a commit was interrupted (the retry finishes it).
        retries=2,
        retry_delay=timedelta(minutes=2),
        outlets=[esl_export_csv],
    )
