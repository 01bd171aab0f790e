"""Install is enough: ``esl-export install-dag``, ``--version``, the DAG file and plugin inside the wheel.

The commands run as a user runs them (the installed ``esl-export`` console script, in a subprocess);
the wheel is built from this checkout by pip, exactly as ``pip install .`` builds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import esl_operators
from esl_operators.install import DAG_FILE, InstallRefused, install_dag, shipped_dag
from tests.support import REPO, copy_checkout

pytestmark = pytest.mark.timeout(300)

ESL_EXPORT = Path(sys.executable).with_name("esl-export")
SOURCE = REPO / "dags" / DAG_FILE


def _esl_export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ESL_EXPORT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_the_package_ships_the_repository_dag_file_byte_for_byte() -> None:
    assert shipped_dag() == SOURCE.read_bytes()
    # One source: git stores the package's copy as a symlink to dags/esl_export.py.
    listed = subprocess.run(
        ["git", "ls-files", "-s", "esl_operators/dags/esl_export.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert listed[0] == "120000", listed  # git's mode for a symbolic link
    assert os.readlink(REPO / "esl_operators" / "dags" / DAG_FILE) == "../../dags/esl_export.py"


def test_version_prints_the_package_version() -> None:
    result = _esl_export("--version")
    assert (result.returncode, result.stdout) == (0, f"esl-export {esl_operators.__version__}\n")


def test_install_dag_writes_then_leaves_an_identical_file_alone(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "dags"  # missing folders are created
    first = _esl_export("install-dag", "--dags-folder", str(folder))
    target = folder / DAG_FILE
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"wrote {target} (the esl_export DAG of esl-export {esl_operators.__version__})\n"
    assert target.read_bytes() == SOURCE.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in folder.iterdir()] == [DAG_FILE]  # no temporary left behind

    again = _esl_export("install-dag", "--dags-folder", str(folder))
    assert again.returncode == 0, again.stderr
    assert again.stdout == (
        f"unchanged: {target} is already the esl_export DAG of esl-export {esl_operators.__version__}\n"
    )


def test_install_dag_refuses_a_changed_file_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / DAG_FILE
    target.write_text("# my own edits\n", encoding="utf-8")
    refused = _esl_export("install-dag", "--dags-folder", str(tmp_path))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"error: {target} exists and differs from the DAG file of esl-export ")
    assert refused.stderr.rstrip().endswith("compare the two, then rerun with --force to replace it")
    assert target.read_text(encoding="utf-8") == "# my own edits\n"  # untouched

    forced = _esl_export("install-dag", "--dags-folder", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith(f"replaced {target} (the esl_export DAG of esl-export ")
    assert target.read_bytes() == SOURCE.read_bytes()


def test_install_dag_defaults_to_airflows_configured_dags_folder(tmp_path: Path) -> None:
    folder = tmp_path / "configured"
    result = _esl_export("install-dag", env={"AIRFLOW__CORE__DAGS_FOLDER": str(folder)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {folder / DAG_FILE} ")
    assert (folder / DAG_FILE).read_bytes() == SOURCE.read_bytes()


def test_install_dag_into_a_file_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "dags"
    blocker.write_text("", encoding="utf-8")
    result = _esl_export("install-dag", "--dags-folder", str(blocker))
    assert result.returncode == 2
    assert result.stderr == f"error: dags folder {blocker} exists but is not a directory\n"


def test_install_dag_replaces_a_dangling_symlink_only_when_forced(tmp_path: Path) -> None:
    (tmp_path / DAG_FILE).symlink_to(tmp_path / "gone.py")
    with pytest.raises(InstallRefused):
        install_dag(tmp_path)
    installed = install_dag(tmp_path, force=True)
    assert installed.action == "replaced"
    assert not installed.path.is_symlink() and installed.path.read_bytes() == SOURCE.read_bytes()


def test_a_built_wheel_carries_the_dag_file_and_registers_the_plugin(tmp_path: Path) -> None:
    """``pip install .`` (not editable) builds this wheel: the symlink must arrive as the real file."""
    source = copy_checkout(tmp_path / "checkout")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = tmp_path.glob("esl_export-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read("esl_operators/dags/esl_export.py") == SOURCE.read_bytes()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "esl_operators/dags/__init__.py" in names and "esl_operators/plugin.py" in names
    assert "[airflow.plugins]\nesl_exports = esl_operators.plugin:EslExportsPlugin\n" in text
    assert "[console_scripts]\nesl-export = esl_operators.cli:run\n" in text


def _plugins_loaded_from(folder: Path, cwd: Path) -> dict[str, Any]:
    """Airflow's plugin manager in a fresh interpreter with ``folder`` as its plugins folder."""
    code = (
        "import json\n"
        "from airflow import plugins_manager as pm\n"
        "info = pm.get_plugin_info()\n"
        "print(json.dumps({'plugins': [[p['name'], str(p['source'])] for p in info],"
        " 'errors': pm.get_import_errors()}))\n"
    )
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(folder)}
    # Not from the checkout: `python -c` puts the working directory on sys.path, where the editable
    # install's esl_export.egg-info would make a second distribution with the same entry point.
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_repository_plugins_folder_does_not_register_the_view_twice(tmp_path: Path) -> None:
    """tests/ui and compose point Airflow's plugins_folder at plugins/: the entry point stays the only one."""
    loaded = _plugins_loaded_from(REPO / "plugins", tmp_path)
    assert loaded["errors"] == {}
    # Providers bring plugins of their own (the OpenLineage provider of the test requirements does).
    [[_, source]] = [p for p in loaded["plugins"] if p[0] == "esl_exports"]
    assert "EntryPoint(name='esl_exports', value='esl_operators.plugin:EslExportsPlugin'" in source
    assert not list((REPO / "plugins").glob("*.py"))


def test_a_copy_in_the_plugins_folder_would_be_reported_as_registered_twice(tmp_path: Path) -> None:
    """What the previous check guards against: the old copy-the-file set-up next to the entry point."""
    (tmp_path / "esl_exports_plugin.py").write_text(
        "from esl_operators.plugin import EslExportsPlugin\n", encoding="utf-8"
    )
    loaded = _plugins_loaded_from(tmp_path, tmp_path)
    assert [name for name, _ in loaded["plugins"] if name == "esl_exports"] == ["esl_exports"]
    assert list(loaded["errors"].values()) == ["Plugin 'esl_exports' already registered, skipping"]
