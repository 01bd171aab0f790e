"""A clean copy of this checkout, for tests that install it the way a user does (``pip install .``).

Building in the working tree would leave ``build/`` behind, and setuptools packs whatever an earlier
build left in ``build/lib`` into the next wheel; a copy of the files git knows (tracked, or new and not
ignored; symlinks kept as symlinks) is what a fresh clone holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_checkout(dest: Path) -> Path:
    """Copy the working tree's files that git tracks or would track into ``dest``; return ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for relative in sorted(set(filter(None, listed.split("\0")))):
        source = REPO / relative
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree, not yet in the index
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest
