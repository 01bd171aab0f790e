"""``[core] hostname_callable`` for the distributed test: each Celery worker records its own name.

Both workers run on this one machine, so the real host name would be the same for both; the test
starts each with ``WORKER_NAME`` set, and task instances record that name as their ``hostname``.
"""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    """``$WORKER_NAME`` when set (our Celery workers), else the machine's FQDN like Airflow's default."""
    return os.environ.get("WORKER_NAME") or socket.getfqdn()
