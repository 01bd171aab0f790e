"""OpenLineage events of a real run: ``dag.test()`` with the provider's file transport.

Each run is a fresh interpreter (the provider reads its configuration once per process) with
``AIRFLOW__OPENLINEAGE__TRANSPORT`` set to a file of its own and the fetch retries off, against
simulated servers behind connections that carry a password. The COMPLETE events of the fetch and
aggregate tasks (and the FAIL event of a failed batch) must carry exactly the datasets and facets of
:mod:`esl_operators.lineage`, and no event may hold the password.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esl_operators.csvformat import LEGACY_COLUMNS
from esl_operators.lineage import ERRORS_FACET, folder_dataset, server_dataset
from esl_operators.simulator import FaultProfile, Fleet, SimulatorThread
from tests.support import REPO, csv_rows

pytestmark = pytest.mark.timeout(400)

PASSWORD = "lineage-pw-93f1"
NAMESPACE = "esl-lineage-test"
SERVERS = ["esl_ol_0", "esl_ol_1", "esl_ol_2"]
_RUN = """
import datetime as dt, json, sys
from tests.support import load_dag, without_retries
day = dt.datetime.fromisoformat(sys.argv[1]).replace(tzinfo=dt.UTC)
print("RUN", without_retries(load_dag()).test(logical_date=day, run_conf=json.loads(sys.argv[2])).state)
"""


# --- naming, pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "dataset"),
    [
        ("http://127.0.0.1:9000", ("http://127.0.0.1:9000", "/api3")),
        ("https://api:secret@ESL.example.com:9443/", ("https://esl.example.com:9443", "/api3")),
        ("https://esl.example.com/tenant/eu", ("https://esl.example.com", "/tenant/eu/api3")),
        ("http://[::1]:8080?token=abc", ("http://[::1]:8080", "/api3")),
    ],
)
def test_a_server_is_a_dataset_without_credentials(base_url: str, dataset: tuple[str, str]) -> None:
    assert server_dataset(base_url) == dataset


@pytest.mark.parametrize(
    ("folder", "dataset"),
    [
        ("/data/esl/2024-05-10", ("file", "/data/esl/2024-05-10")),
        ("file:///data/esl/2024-05-10", ("file", "/data/esl/2024-05-10")),
        ("s3://aws_default@bucket/esl/2024-05-10", ("s3://bucket", "esl/2024-05-10")),
        ("s3://bucket/2024-05-10", ("s3://bucket", "2024-05-10")),
    ],
)
def test_a_published_folder_is_a_dataset(folder: str, dataset: tuple[str, str]) -> None:
    assert folder_dataset(folder) == dataset


# --- events of real runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_sim(small_fleet: Fleet) -> Iterator[SimulatorThread]:
    """Servers 0 and 1 answer; server 2 refuses every request (401), so its batch has an error."""
    with SimulatorThread(small_fleet, faults={2: FaultProfile(unauthorized=True)}) as sim:
        yield sim


def _run(
    sim: SimulatorThread, tmp_path: Path, day: str, conf: dict[str, Any], state: str
) -> list[dict[str, Any]]:
    """Run the DAG once with the file transport; every event it emitted, in order."""
    events = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(events), "append": True}
    )
    env["AIRFLOW__OPENLINEAGE__NAMESPACE"] = NAMESPACE
    for name, port in zip(SERVERS, sim.ports, strict=True):
        fields = {"conn_type": "esl_working", "host": "127.0.0.1", "port": port}
        env[f"AIRFLOW_CONN_{name.upper()}"] = json.dumps({**fields, "login": "api", "password": PASSWORD})
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", _RUN, day, json.dumps(conf)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    output = result.stdout + result.stderr
    assert f"RUN {state}" in result.stdout, output[-6000:]
    assert PASSWORD not in output
    text = events.read_text(encoding="utf-8")
    secret = base64.b64encode(f"api:{PASSWORD}".encode()).decode()
    assert PASSWORD not in text and secret not in text
    return [json.loads(line) for line in text.splitlines()]


def _task_events(events: list[dict[str, Any]], task: str, kind: str) -> list[dict[str, Any]]:
    found = [e for e in events if e["eventType"] == kind and e["job"]["name"] == f"esl_export.{task}"]
    assert all(e["job"]["namespace"] == NAMESPACE for e in found)
    return found


def _public(facet: dict[str, Any]) -> dict[str, Any]:
    """A facet without its ``_producer`` / ``_schemaURL`` bookkeeping."""
    return {k: v for k, v in facet.items() if not k.startswith("_")}


def _server(sim: SimulatorThread, index: int) -> dict[str, Any]:
    return {
        "namespace": f"http://127.0.0.1:{sim.ports[index]}",
        "name": "/api3",
        "facets": {},
        "inputFacets": {},
    }


def test_complete_events_carry_the_servers_the_folder_and_its_facets(
    airflow_db: str, fleet_sim: SimulatorThread, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    conf = {
        "servers": SERVERS,
        "servers_per_batch": 2,
        "on_server_error": "skip",
        "header_style": "legacy",
        "timezone": "Asia/Shanghai",
        "output_root": str(out),
    }
    events = _run(fleet_sim, tmp_path, "2024-05-10", conf, "success")
    folder = out / "2024-05-10"
    manifest = json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))
    [failure] = manifest["errors"]
    assert (failure["server"], failure["store"]) == ("esl_ol_2", "")
    assert "HTTP 401" in failure["error"]

    fetches = _task_events(events, "fetch", "COMPLETE")
    by_batch = {e["run"]["facets"]["airflow"]["taskInstance"]["map_index"]: e for e in fetches}
    assert sorted(by_batch) == [0, 1]
    assert by_batch[0]["inputs"] == [_server(fleet_sim, 0), _server(fleet_sim, 1)]
    assert by_batch[1]["inputs"] == [_server(fleet_sim, 2)]
    for event in fetches:
        assert event["outputs"] == []
    assert ERRORS_FACET not in by_batch[0]["run"]["facets"]
    assert _public(by_batch[1]["run"]["facets"][ERRORS_FACET]) == {"errors": [failure]}

    [aggregate] = _task_events(events, "aggregate", "COMPLETE")
    assert aggregate["inputs"] == []
    [output] = aggregate["outputs"]
    assert (output["namespace"], output["name"]) == ("file", str(folder))
    schema = output["facets"]["schema"]
    assert schema["_schemaURL"].endswith("SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet")
    assert [(f["name"], f["type"]) for f in schema["fields"]] == [(c, "string") for c in LEGACY_COLUMNS]
    assert list(output["facets"]) == ["schema"]
    partitions = sorted(folder.glob("esl_id_part_*.csv"))
    rows = sum(len(csv_rows(p)) - 1 for p in partitions)
    assert [p.name for p in partitions] == ["esl_id_part_1.csv", "esl_id_part_2.csv"]
    assert rows == manifest["rows"] > 100
    assert _public(output["outputFacets"]["outputStatistics"]) == {
        "rowCount": rows,
        "size": sum(p.stat().st_size for p in partitions),
        "fileCount": 2,
    }
    assert list(output["outputFacets"]) == ["outputStatistics"]
    assert _public(aggregate["run"]["facets"][ERRORS_FACET]) == {"errors": [failure]}


def test_a_failed_batch_names_its_failure_in_the_fail_event(
    airflow_db: str, fleet_sim: SimulatorThread, tmp_path: Path
) -> None:
    conf = {"servers": SERVERS[1:], "servers_per_batch": 2, "output_root": str(tmp_path / "out")}
    events = _run(fleet_sim, tmp_path, "2024-05-11", conf, "failed")
    [failed] = _task_events(events, "fetch", "FAIL")
    assert failed["inputs"] == [_server(fleet_sim, 1), _server(fleet_sim, 2)]
    batch = json.loads(
        (tmp_path / "out" / "2024-05-11" / "_parts" / "batch-0.json").read_text(encoding="utf-8")
    )
    [error] = batch["errors"]
    assert (error["server"], error["store"]) == ("esl_ol_2", "")
    facets = failed["run"]["facets"]
    assert _public(facets[ERRORS_FACET]) == {"errors": [error]}
    assert error["error"] in facets["errorMessage"]["message"]  # the provider's own facet: the exception
    assert _task_events(events, "aggregate", "COMPLETE") == []


_PARSE_WITHOUT = """
import importlib.abc, sys

# The providers' metadata stays importable (Airflow's provider discovery reads it); their code does not.
BLOCKED = ("openlineage", "airflow.providers.openlineage.", "airflow.providers.smtp.")
METADATA = ("airflow.providers.openlineage.get_provider_info", "airflow.providers.smtp.get_provider_info")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED) and name not in METADATA:
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, Block())
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
print("ERRORS", bag.import_errors)
print("TASKS", sorted(t.task_id for t in bag.dags["esl_export"].tasks))
loaded = (m for m in sys.modules if m.startswith(BLOCKED + ("esl_operators.lineage",)))
print("LOADED", sorted(m for m in loaded if m not in METADATA))
"""


def test_the_dag_parses_without_the_lineage_and_smtp_providers(airflow_db: str) -> None:
    """Their code is imported only when a task reports lineage or a callback sends a mail."""
    parsed = subprocess.run(
        [sys.executable, "-c", _PARSE_WITHOUT, str(REPO / "dags")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in parsed.stdout.splitlines() if line.split(" ")[0].isupper())
    assert lines["ERRORS"] == "{}"
    assert lines["TASKS"] == "['aggregate', 'fetch', 'plan_batches']"
    assert lines["LOADED"] == "[]"
