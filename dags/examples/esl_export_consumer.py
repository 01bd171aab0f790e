"""Example: a DAG that runs whenever ``esl_export`` publishes a date, scheduled on its Asset.

Off by default (paused on creation): unpause it to try it. It reads the published date's
``_manifest.json`` and logs one line per partition; replace the task with your own loader.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

from esl_operators.config import OUTPUT_ASSET_NAME, OUTPUT_ASSET_URI

esl_export_csv = Asset(name=OUTPUT_ASSET_NAME, uri=OUTPUT_ASSET_URI, group="esl")

with DAG(
    dag_id="esl_export_consumer",
    description="Example consumer of the esl_export CSVs (scheduled on the esl_export_csv Asset)",
    schedule=[esl_export_csv],
    start_date=datetime(2020, 1, 1),
    catchup=False,
    is_paused_upon_creation=True,
    tags=["esl", "example"],
    doc_md=__doc__,
):

    @task
    def summarize_published(**context: Any) -> list[dict[str, Any]]:
        from esl_operators.consumer import summarize_events

        return summarize_events(context["triggering_asset_events"][esl_export_csv])

    summarize_published()
