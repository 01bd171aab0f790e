"""``esl-export fetch --server NAME=URL``: rows name the server NAME, as the DAG names it by connection id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esl_operators import cli
from esl_operators.exceptions import ConfigError
from esl_operators.simulator import SimulatorThread, build_fleet
from tests.expected import expected_partition
from tests.support import ANCHOR_MS, DAY_MS, DS, csv_rows


def test_a_named_server_is_called_by_its_name(tmp_path: Path) -> None:
    fleet = build_fleet(servers=2, stores=3, esls=40, page_size=10, seed=2, reference_ms=ANCHOR_MS)
    with SimulatorThread(fleet) as sim:
        named, plain = f"esl_store_a={sim.urls[0]}", sim.urls[1]
        code = cli.main(["fetch", "--server", named, "--server", plain, "--date", DS, "--out", str(tmp_path)])
    assert code == 0
    folder = tmp_path / DS
    cutoff = ANCHOR_MS - 7 * DAY_MS
    assert csv_rows(folder / "esl_id_part_1.csv")[1:] == expected_partition(fleet, {0: "esl_store_a"}, cutoff)
    assert csv_rows(folder / "esl_id_part_2.csv")[1:] == expected_partition(fleet, {1: plain}, cutoff)
    manifest = json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["params"]["server"] == [named, plain]
    assert manifest["rows_by_server"].keys() == {"esl_store_a", plain}


@pytest.mark.parametrize(
    ("given", "name", "url"),
    [
        ("esl_a=http://10.0.0.5:9000", "esl_a", "http://10.0.0.5:9000"),
        ("http://10.0.0.5:9000/esl=1", "http://10.0.0.5:9000/esl=1", "http://10.0.0.5:9000/esl=1"),
        ("a.b-c=https://u:p@host", "a.b-c", "https://host"),
    ],
)
def test_names_and_urls_are_told_apart(given: str, name: str, url: str) -> None:
    target = cli.target_from_url(given)
    assert (target.name, target.base_url) == (name, url)


def test_a_named_server_still_needs_a_url() -> None:
    with pytest.raises(ConfigError) as refused:
        cli.target_from_url("esl_a=10.0.0.5")
    assert (
        str(refused.value)
        == "--server '10.0.0.5': server 'esl_a': base URL must start with http:// or https://"
    )
