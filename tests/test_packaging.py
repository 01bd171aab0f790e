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
