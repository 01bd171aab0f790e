"""``esl-export install-dag``: put the shipped ``esl_export`` DAG file into Airflow's dags folder.

The package carries the DAG file (``esl_operators/dags/esl_export.py``, in the repository a symlink to
``dags/esl_export.py``). Installing copies it byte for byte, under a temporary name renamed into place,
so the dag-processor never parses half a file. A file already there is left alone when it is the same;
when it differs (edited by hand, or from another esl-export version) it is replaced only with
``--force``, so nobody's changes disappear silently.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from esl_operators import __version__
from esl_operators.exceptions import ConfigError

DAG_FILE = "esl_export.py"
DAGS_PACKAGE = "esl_operators.dags"


class InstallRefused(ConfigError):
    """The dags folder holds a different ``esl_export.py`` and ``--force`` was not given."""


@dataclass(frozen=True)
class Installed:
    """What :func:`install_dag` did to ``path``."""

    path: Path
    action: Literal["wrote", "replaced", "unchanged"]

    def describe(self) -> str:
        what = f"the esl_export DAG of esl-export {__version__}"
        if self.action == "unchanged":
            return f"unchanged: {self.path} is already {what}"
        return f"{self.action} {self.path} ({what})"


def shipped_dag() -> bytes:
    """The DAG file as the installed package carries it."""
    return resources.files(DAGS_PACKAGE).joinpath(DAG_FILE).read_bytes()


def configured_dags_folder() -> Path:
    """Airflow's ``[core] dags_folder`` (``AIRFLOW__CORE__DAGS_FOLDER``, airflow.cfg, else the default)."""
    from airflow.configuration import conf

    return Path(os.path.expanduser(conf.get("core", "dags_folder")))


def install_dag(dags_folder: Path | None = None, *, force: bool = False) -> Installed:
    """Copy the shipped DAG file into ``dags_folder`` (default: Airflow's configured one)."""
    folder = (Path(dags_folder) if dags_folder is not None else configured_dags_folder()).absolute()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"dags folder {folder} exists but is not a directory")
    target = folder / DAG_FILE
    content = shipped_dag()
    action: Literal["wrote", "replaced"] = "wrote"
    if target.is_symlink() or target.exists():
        if target.is_file() and target.read_bytes() == content:
            return Installed(target, "unchanged")
        if not force:
            raise InstallRefused(
                f"{target} exists and differs from the DAG file of esl-export {__version__} "
                f"({_shipped_path()}): compare the two, then rerun with --force to replace it"
            )
        action = "replaced"
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, content)
    return Installed(target, action)


def _shipped_path() -> str:
    return str(resources.files(DAGS_PACKAGE).joinpath(DAG_FILE))


def _write_atomic(target: Path, content: bytes) -> None:
    # The temporary name does not end in .py, so a dag-processor scanning the folder ignores it.
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a DAG file is read by every component
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_parser(commands: Any) -> None:
    """The ``install-dag`` subcommand, on the ``esl-export`` command's subparsers."""
    parser = commands.add_parser(
        "install-dag",
        help="copy the esl_export DAG file into Airflow's dags folder",
        description="Copy the esl_export DAG file shipped with this package into Airflow's dags folder. "
        "A different file already there is kept unless --force is given.",
    )
    parser.add_argument(
        "--dags-folder",
        type=Path,
        default=None,
        help="target folder (default: Airflow's configured [core] dags_folder)",
    )
    parser.add_argument("--force", action="store_true", help="replace an esl_export.py that differs")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 written or already there, 1 refused (differs, no ``--force``)."""
    try:
        installed = install_dag(args.dags_folder, force=args.force)
    except InstallRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(installed.describe())
    return 0
