"""A wheel built from this checkout carries what the package loads at run time besides its modules.

The report's and the web view's templates are package data: an editable install finds them in the
checkout anyway, so only a real wheel shows whether ``pyproject.toml`` ships them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import REPO

_RENDER = """
import importlib.resources, json, sys
import esl_operators
from esl_operators.report import FleetStats, render_report
from esl_operators.templating import TEMPLATES, render
templates = importlib.resources.files("esl_operators") / TEMPLATES
print(json.dumps({
    "package": esl_operators.__file__,
    "templates": sorted(item.name for item in templates.iterdir()),
    "report": render_report(FleetStats(), {"date": "2024-05-10"}, anchor_ms=1715299200000).count("<svg "),
    "refused": render("refused.html", detail="<no>", login="/auth/login"),
}))
"""


def test_the_wheel_ships_the_templates(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "esl_operators", source / "esl_operators", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    built = subprocess.run(
        [*pip, "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("esl_export-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.name for p in (REPO / "esl_operators" / "templates").iterdir())
    assert {"report.html", "listing.html", "style.css"} <= set(templates)
    assert {f"esl_operators/templates/{name}" for name in templates} <= shipped

    site = tmp_path / "site"  # a pure-Python wheel installs by unpacking
    zipfile.ZipFile(wheel).extractall(site)
    done = subprocess.run(
        [sys.executable, "-c", _RENDER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["package"] == str(site / "esl_operators" / "__init__.py")  # not the checkout
    assert result["templates"] == templates
    assert result["report"] == 8
    assert "<h2>&lt;no&gt;</h2>" in result["refused"]


def _names(requirements: list[str]) -> set[str]:
    """Distribution names with their extras, normalised (``apache_airflow`` == ``apache-airflow``)."""
    import re

    found = set()
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9_.\-]+(\[[^\]]*\])?)", line)
        if match:
            found.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return found


def test_the_test_extra_lists_exactly_the_test_requirements() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = (REPO / "requirements-test.txt").read_text(encoding="utf-8").splitlines()
    assert _names(project["optional-dependencies"]["test"]) == _names(pinned)


def test_the_declared_python_is_the_one_the_code_needs() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11"
