"""Alert mails: a run that failed, or published with errors, mails what went wrong, the Airflow way.

The DAG wires :class:`EslRunNotifier` as its ``on_failure_callback`` and ``on_success_callback``; Airflow
runs DAG callbacks in the dag-processor (in-process under ``airflow dags test`` / ``dag.test()``) with
the context of the run's last task, and the mail goes out through providers-smtp's ``SmtpNotifier`` and
the SMTP connection ``notify_conn_id``. No address (param ``notify_to``, else the Variable
``esl_notify_to``): no mail. A run that published without errors: no mail.

The facts come from the files the run wrote, so the mail says what the manifests say:

* published (``on_server_error: skip``): the errors of ``{ds}/_manifest.json`` and a link to the date's
  report in the "ESL exports" view (``[api] base_url`` + ``/esl-exports/{ds}/report.html``);
* failed: the errors of the batch manifests ``_parts/batch-N.json`` of this run's batches (a failing
  fetch task writes its manifest before it fails), the batches that left none (the task failed before
  fetching, e.g. a missing connection), and the task that failed last.

Error texts are redacted where they are made (:mod:`esl_operators.redaction`); the mail holds no other
connection field. The body is rendered by the package's autoescaping Jinja2 environment and handed to
the notifier as final HTML, never as a template: server strings cannot inject markup or template code.
This module is imported when the DAG file is parsed, so it imports nothing heavy at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from airflow.sdk.bases.notifier import BaseNotifier

from esl_operators.config import (
    DAG_ID,
    VIEW_URL_PREFIX,
    resolve_output_root,
    resolve_servers,
    run_anchor,
    split_batches,
)
from esl_operators.exceptions import ConfigError
from esl_operators.manifest import ErrorEntry
from esl_operators.settings import for_task, resolve, setting, split_addresses
from esl_operators.storage import MANIFEST_NAME, PARTS_DIR, REPORT_NAME, SUCCESS_NAME, read_json, run_dir

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

NOTIFY_TO_VARIABLE = "esl_notify_to"
#: Airflow's own fallback for links when ``[api] base_url`` is not set (``TaskInstance.log_url``).
DEFAULT_BASE_URL = "http://localhost:8080/"
TEMPLATE = "alert.html"


@dataclass
class Alert:
    """What one alert mail says."""

    ds: str
    run_id: str
    failed: bool
    run_url: str
    errors: list[ErrorEntry] = field(default_factory=list)
    #: Batches of a failed run that left no manifest of their own: (batch, its servers).
    silent_batches: list[tuple[int, list[str]]] = field(default_factory=list)
    failed_task: str | None = None
    report_url: str | None = None
    #: What could not be read (named, never swallowed): the mail goes out with the rest.
    notes: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        # Plain words only: no server text in a mail header.
        count = f"{len(self.errors)} error{'' if len(self.errors) == 1 else 's'}"
        if not self.failed:
            return f"{DAG_ID} {self.ds}: published with {count}"
        silent = f", {len(self.silent_batches)} batch(es) without a manifest" if self.silent_batches else ""
        return f"{DAG_ID} {self.ds}: run failed ({count}{silent})"


class EslRunNotifier(BaseNotifier):
    """DAG callback: mails the run's failures (``failed=True``: on_failure_callback) or a publish with
    errors (``failed=False``: on_success_callback) through ``SmtpNotifier``.

    :param failed: whether this instance is the failure callback.
    """

    def __init__(self, *, failed: bool) -> None:
        super().__init__()
        self.failed = failed

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render: the mail comes from the package's own template (see :func:`send_alert`)."""

    def notify(self, context: Any) -> None:
        params: Mapping[str, Any] = context.get("params") or {}
        options = resolve(params, for_task("notify"), lambda s: f"param {s.name!r}")
        to = recipients(options["notify_to"])
        if not to:
            log.info(
                "no alert mail: neither the param notify_to nor the Variable %s is set", NOTIFY_TO_VARIABLE
            )
            return
        alert = gather_alert(context, params, failed=self.failed)
        if alert is None:
            log.info("no alert mail: the date was published without errors")
            return
        send_alert(alert, to, options["notify_conn_id"], context)


def recipients(param_value: str | None) -> list[str]:
    """The param ``notify_to``, else the Variable ``esl_notify_to`` (same rules), as a list."""
    text = param_value
    if not text:
        from airflow.sdk import Variable

        raw = Variable.get(NOTIFY_TO_VARIABLE, default=None)
        text = setting("notify_to").parse(raw, f"Variable {NOTIFY_TO_VARIABLE!r}")
    return split_addresses(text) if text else []


def base_url() -> str:
    from airflow.sdk.configuration import conf

    return str(conf.get("api", "base_url", fallback=DEFAULT_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")


def gather_alert(context: Mapping[str, Any], params: Mapping[str, Any], *, failed: bool) -> Alert | None:
    """The alert of a finished run from its files; None for a publish without errors (no mail)."""
    _, ds = run_anchor(context)
    run_id = str(context.get("run_id") or "")
    base = base_url()
    alert = Alert(
        ds=ds,
        run_id=run_id,
        failed=failed,
        run_url=f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}",
        failed_task=_task_name(context.get("ti")) if failed else None,
    )
    try:
        plan = resolve(params, for_task("plan"), lambda s: f"param {s.name!r}")
        folder = run_dir(resolve_output_root(plan["output_root"]), ds)
    except ConfigError as exc:  # the run was refused before it fetched anything: say why
        alert.notes.append(f"the run's settings were refused: {exc}")
        return alert if failed else None
    if failed:
        _read_batches(alert, folder, plan)
        return alert
    try:
        alert.errors = list(read_json(folder / MANIFEST_NAME)["errors"])
    except (OSError, ValueError, KeyError) as exc:
        alert.notes.append(f"{MANIFEST_NAME} of {ds} unreadable: {exc}")
    if not alert.errors and not alert.notes:
        return None
    if (folder / SUCCESS_NAME).exists():
        alert.report_url = f"{base}{VIEW_URL_PREFIX}/{quote(ds)}/{REPORT_NAME}"
    return alert


def _task_name(ti: Any) -> str | None:
    if ti is None:
        return None
    map_index = getattr(ti, "map_index", -1)
    return f"{ti.task_id}[{map_index}]" if map_index is not None and map_index >= 0 else str(ti.task_id)


def _read_batches(alert: Alert, folder: Any, plan: Mapping[str, Any]) -> None:
    """Errors of this run's batch manifests; batches without one of their own become silent batches."""
    try:
        batches = split_batches(resolve_servers(plan["servers"]), plan["servers_per_batch"])
    except ConfigError as exc:
        alert.notes.append(f"the run's servers are unknown, so no batch was fetched: {exc}")
        return
    for number, servers in enumerate(batches):
        path = folder / PARTS_DIR / f"batch-{number}.json"
        try:
            manifest = read_json(path)
        except FileNotFoundError:
            alert.silent_batches.append((number, servers))
            continue
        except (OSError, ValueError) as exc:
            alert.notes.append(f"{PARTS_DIR}/{path.name} unreadable: {exc}")
            continue
        if sorted(manifest.get("servers", {})) != sorted(servers):
            alert.silent_batches.append((number, servers))  # an earlier run's batch of that number
            continue
        alert.errors.extend(manifest.get("errors", []))


def send_alert(alert: Alert, to: list[str], conn_id: str, context: Any) -> None:
    """One mail through providers-smtp's notifier and the SMTP connection ``conn_id``."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.sdk.configuration import conf

    from esl_operators.templating import render

    html = render(TEMPLATE, alert=alert)
    mail = SmtpNotifier(
        to=to,
        from_email=conf.get("email", "from_email", fallback=None),  # else the connection's from_email
        smtp_conn_id=conn_id,
        subject=alert.subject,
        html_content=html,
    )
    # notify(), not the notifier's __call__: that would render the finished HTML as a template again.
    # It still renders the connection's from_email; the default environment does (under dag.test() the
    # context's DAG is a SerializedDAG, which has no template environment).
    mail.notify(cast("Context", {k: v for k, v in context.items() if k != "dag"}))
    log.info("alert mail for %s sent to %d address(es) via %r", alert.ds, len(to), conn_id)
