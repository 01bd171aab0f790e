"""The "ESL exports" web view: a read-only FastAPI app the Airflow plugin mounts into the api-server.

Light on purpose: every Airflow process loads the plugin, so nothing here imports pyarrow, pandas or
matplotlib (``tests/test_plugin.py`` checks it in a fresh interpreter). Modules:

* :mod:`.app`: the app, its routes and response headers;
* :mod:`.access`: :func:`require_reader`, the login and DAG-permission check;
* :mod:`.files`: which files may be served, resolved safely inside the output root (a local folder or
  object storage, e.g. ``s3://``), and how object-storage files are streamed;
* :mod:`.runs`: what the listing says about each run date.
"""

from __future__ import annotations

from esl_operators.web.access import require_reader
from esl_operators.web.app import create_app
from esl_operators.web.files import configured_output_root, published_file

__all__ = ["configured_output_root", "create_app", "published_file", "require_reader"]
