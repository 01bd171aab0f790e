"""PostgreSQL and Redis on 127.0.0.1 for the distributed test: private data dirs, free ports, stop by PID.

Debian's binaries are used directly (``/usr/lib/postgresql/*/bin``, ``redis-server``); no system
cluster or service is touched. PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` user in a data folder owned by that user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import free_port
from tests.ui.harness import Service


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder, or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    return found[-1].parent if found else None


def missing_reason() -> str | None:
    """Why PostgreSQL + Redis cannot run here (``make test-distributed`` installs them), or None."""
    missing = []
    if postgres_bin() is None:
        missing.append("PostgreSQL server (apt-get install postgresql)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install redis-server)")
    try:
        import airflow.providers.celery  # noqa: F401
        import celery  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as exc:
        missing.append(f"{exc.name} (pip install -r requirements-distributed.txt -c constraints.txt)")
    return "missing: " + ", ".join(missing) if missing else None


def _run_as() -> dict[str, str]:
    """Subprocess arguments that drop root to the ``postgres`` user; nothing when not root."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _start(name: str, argv: list[str], log: Path, **kwargs: object) -> Service:
    handle = log.open("wb")
    process = subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group: Service.stop() signals exactly this tree
        **kwargs,  # type: ignore[call-overload]
    )
    return Service(name=name, process=process, log=log, _handle=handle)


def _wait(what: str, service: Service, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not service.alive():
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f} s:\n{service.tail()}")
        time.sleep(0.3)


class Postgres:
    """A throwaway cluster: superuser ``airflow`` with trust auth, database ``airflow``, loopback only."""

    def __init__(self, workdir: Path) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server installed")
        self.bindir = bindir
        self.port = free_port()
        # Under /tmp, not pytest's 0700 tree, so the postgres user can reach it.
        self.root = Path(tempfile.mkdtemp(prefix="esl-pg-")).resolve()
        self.data = self.root / "data"
        self.log = workdir / "postgres.log"
        self.service: Service | None = None
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def start(self, timeout: float = 90.0) -> None:
        argv = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "airflow", "-A", "trust"]
        argv += ["-E", "UTF8", "--locale=C", "--no-sync"]
        init = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **_run_as(),  # type: ignore[call-overload]
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout[-2000:]}{init.stderr[-2000:]}")
        argv = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off", "-c", "synchronous_commit=off"]
        argv += ["-c", "full_page_writes=off", "-c", "max_connections=300"]
        self.service = _start("postgres", argv, self.log, **_run_as())
        _wait("PostgreSQL", self.service, self._accepts, timeout)
        self._sql("CREATE DATABASE airflow", database="postgres")

    def _accepts(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname="postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    def _sql(self, statement: str, *, database: str) -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow", dbname=database)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def stop(self) -> None:
        try:
            if self.service is not None:
                self.service.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.service: Service | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.service = _start("redis", argv, self.workdir / "redis.log")
        _wait("Redis", self.service, self._pong, timeout)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
