"""A whole Airflow on loopback for tests: api-server, scheduler, dag-processor (and more), plus REST helpers.

Built on :mod:`tests.ui.harness`: every process runs in its own group and is stopped by its PID, every
wait has a deadline. The scheduler and workers never serve logs (``--skip-serve-logs``), so nothing
listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esl_operators.simulator import Fleet
from tests.ui.harness import USERNAME, AirflowHome, ApiServer, Service, start_api_server, start_service, token

FINISHED = {"success", "failed"}


@dataclass
class Rest:
    """The public REST API (``/api/v2``) with a JWT from ``/auth/token``, as any client would use it."""

    base_url: str
    jwt: str

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.jwt}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except json.JSONDecodeError:
                return exc.code, raw.decode(errors="replace")

    def get(self, path: str, **query: Any) -> Any:
        suffix = f"?{urllib.parse.urlencode(query, doseq=True)}" if query else ""
        status, body = self.call("GET", path + suffix)
        if status != 200:
            raise AssertionError(f"GET {path}{suffix}: HTTP {status} {body}")
        return body

    def dag_runs(self, dag_id: str, **query: Any) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=100, **query)["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        body = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances", limit=100)
        return list(body["task_instances"])


def wait_until(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float,
    services: Sequence[Service] = (),
    every: float = 1.0,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail early if a service died, late at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            if not service.alive():
                raise RuntimeError(
                    f"{service.name} exited with {service.process.returncode} while waiting for {what}:\n"
                    f"{service.tail()}"
                )
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {s.name}:\n{s.tail(2500)}" for s in services)
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s\n{tails}")
        time.sleep(every)


@dataclass
class Stack:
    """api-server + other components of one Airflow home; ``stop()`` ends each by its PID."""

    home: AirflowHome
    api: ApiServer
    services: list[Service] = field(default_factory=list)

    @property
    def all_services(self) -> list[Service]:
        return [self.api.service, *self.services]

    def rest(self) -> Rest:
        return Rest(self.api.base_url, token(self.api.base_url, USERNAME, self.home.password))

    def add(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        saved = dict(self.home.env)
        self.home.env.update(env or {})
        try:
            service = start_service(self.home, name, *args)
        finally:
            self.home.env.clear()
            self.home.env.update(saved)
        self.services.append(service)
        return service

    def stop(self) -> None:
        errors = []
        for service in reversed(self.all_services):
            try:
                service.stop()
            except OSError as exc:  # keep stopping the others; report at the end
                errors.append(f"{service.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def wait_for_dag(self, rest: Rest, dag_id: str, *, timeout: float = 180.0) -> dict[str, Any]:
        def parsed() -> dict[str, Any] | None:
            status, body = rest.call("GET", f"/api/v2/dags/{dag_id}")
            return body if status == 200 else None

        return dict(wait_until(f"DAG {dag_id} parsed", parsed, timeout=timeout, services=self.all_services))

    def wait_for_runs(
        self, rest: Rest, dag_id: str, run_ids: Sequence[str], *, timeout: float
    ) -> dict[str, dict[str, Any]]:
        """Wait until every run in ``run_ids`` finished; return them by id."""

        def finished() -> dict[str, dict[str, Any]] | None:
            runs = {r["dag_run_id"]: r for r in rest.dag_runs(dag_id) if r["dag_run_id"] in run_ids}
            done = {k: v for k, v in runs.items() if v["state"] in FINISHED}
            return done if len(done) == len(run_ids) else None

        return dict(
            wait_until(
                f"runs {list(run_ids)} finished", finished, timeout=timeout, services=self.all_services
            )
        )


def start_stack(home: AirflowHome, *, scheduler_env: dict[str, str] | None = None) -> Stack:
    """api-server, then scheduler and dag-processor, on an already migrated home."""
    api = start_api_server(home)
    stack = Stack(home=home, api=api)
    try:
        stack.add("scheduler", "scheduler", "--skip-serve-logs", env=scheduler_env)
        stack.add("dag-processor", "dag-processor")
    except BaseException:
        stack.stop()
        raise
    return stack


@dataclass
class EslAirflow:
    """A running Airflow on SQLite (LocalExecutor) serving ``esl_export`` against a simulated fleet
    (the ``esl_airflow`` fixture of the trigger and backfill tests)."""

    stack: Stack
    rest: Rest
    fleet: Fleet
    reference_day: dt.date
    output_root: Path
    servers: list[str]
