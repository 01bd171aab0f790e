"""Real Airflow processes for browser tests: a private home, free loopback ports, start/stop by PID.

Everything is bounded: each wait has a deadline, each process is started in its own session and
stopped by its PID's process group (api-server workers included), first politely, then for good.
Nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import REPO, free_port

CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep Chromium off the network and quiet in CI: no updates, sync, first-run pages.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
USERNAME = "admin"


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (make test-ui does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (requirements-test.txt)"
    return None


@dataclass
class AirflowHome:
    """A throwaway AIRFLOW_HOME on SQLite with the simple auth manager and a known password."""

    path: Path
    env: dict[str, str]
    password: str

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        plugins_folder: Path = REPO / "plugins",
        dags_folder: Path = REPO / "dags",
        extra_env: Mapping[str, str] | None = None,
    ) -> AirflowHome:
        path.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(12)
        # The simple auth manager keeps a generated password per user in this file and only adds
        # users it does not find: writing it first gives the test a known password.
        (path / PASSWORDS_FILE).write_text(json.dumps({USERNAME: password}) + "\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        env.update(
            {
                "AIRFLOW_HOME": str(path),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                # Shared by every process of this home, so tokens minted by one validate in another.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__CORE__FERNET_KEY": "",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            }
        )
        env.update(extra_env or {})
        return cls(path=path, env=env, password=password)

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` CLI command to completion (bounded), failing loudly with its output."""
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout[-3000:] + result.stderr[-3000:]
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{output}")
        return result

    def migrate(self) -> None:
        self.airflow("db", "migrate")


@dataclass
class Service:
    """One long-running Airflow command, in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    _handle: Any = field(repr=False, default=None)

    @classmethod
    def start(cls, home: AirflowHome, name: str, *args: str) -> Service:
        log = home.path / f"{name}.log"
        handle = log.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=home.env,
            cwd=home.path,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: stop() reaches the workers it forks, nothing else
        )
        return cls(name=name, process=process, log=log, _handle=handle)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the group of our PID, wait up to ``grace`` seconds, then SIGKILL it."""
        pid = self.process.pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)  # the group id is our child's PID (start_new_session)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; workers of the group may still be exiting: give them a moment.
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        if self._handle is not None:
            self._handle.close()


def wait_for_http(url: str, service: Service, *, timeout: float = 120.0, expect: int = 200) -> None:
    """Poll ``url`` until it answers ``expect``; fail early if the service died, late if it never did."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == expect:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s ({last}):\n{service.tail()}")


@dataclass
class ApiServer:
    service: Service
    base_url: str

    def stop(self) -> None:
        self.service.stop()


def start_api_server(home: AirflowHome, *, port: int | None = None, timeout: float = 180.0) -> ApiServer:
    """``airflow api-server`` on 127.0.0.1, returned once its health endpoint answers."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    home.env["AIRFLOW__API__BASE_URL"] = base_url
    service = Service.start(home, "api-server", "api-server", "-H", "127.0.0.1", "-p", str(port))
    try:
        wait_for_http(f"{base_url}/api/v2/monitor/health", service, timeout=timeout)
    except BaseException:
        service.stop()
        raise
    return ApiServer(service=service, base_url=base_url)


def start_service(home: AirflowHome, name: str, *args: str) -> Service:
    """Any other Airflow component (``scheduler``, ``dag-processor``, ...); the caller stops it."""
    return Service.start(home, name, *args)


def token(base_url: str, username: str, password: str, *, timeout: float = 30.0) -> str:
    """A JWT from the simple auth manager's login endpoint, exactly as the UI and CLI obtain one."""
    body = json.dumps({"username": username, "password": password}).encode()
    request = urllib.request.Request(
        f"{base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(json.load(response)["access_token"])


def browser_login(
    page: Any, base_url: str, username: str, password: str, *, timeout_ms: int = 30_000
) -> None:
    """Log in through the simple auth manager's own login form, as a person would."""
    page.goto(f"{base_url}/auth/login", timeout=timeout_ms)
    page.get_by_label("Username").fill(username, timeout=timeout_ms)
    page.get_by_label("Password").fill(password, timeout=timeout_ms)
    page.get_by_role("button", name="Sign in").click(timeout=timeout_ms)
    # The form stores the token in the _token cookie and sends the browser on to the UI.
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=timeout_ms)
