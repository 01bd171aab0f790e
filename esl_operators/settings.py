"""Every run setting, defined once: the table :data:`SETTINGS`.

A row holds a setting's name, type, default, bounds or choices, title, description, the tasks that use
it and the entry points that expose it. Everything else is derived from the table:

* the DAG's ``Param``s (JSON schema, trigger form titles and sections): :func:`dag_params`;
* the operators' keyword arguments, template fields and ``:param`` docs: :func:`operator_options`,
  :func:`document_options`;
* the standalone command's options (``--max-concurrency`` for ``max_concurrency``): :func:`add_cli_options`;
* the checks every entry point shares, with one-line errors naming the value and what was wrong:
  :meth:`Setting.parse` and :func:`resolve`.

Adding a setting is one row here (plus the code that uses it). This module is imported when the DAG
file is parsed, so it imports nothing heavy. It is longer than the house's ~300 lines because the table
is the point: one module to read for every setting's rules, and the derivations right beside them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from esl_operators.exceptions import ConfigError

Kind = Literal["integer", "number", "boolean", "string", "strings"]
# "notify": the run's alert callbacks (esl_operators.notify), which read their settings from the params.
Task = Literal["plan", "fetch", "aggregate", "notify"]

HeaderStyle = Literal["standard", "legacy"]
OnServerError = Literal["fail", "skip"]
HEADER_STYLES: tuple[HeaderStyle, ...] = get_args(HeaderStyle)
ON_SERVER_ERROR: tuple[OnServerError, ...] = get_args(OnServerError)
ALERTS = "Alerts"  # trigger-form section of who gets mail about a failed run
ADVANCED = "Advanced"  # trigger-form section of the settings most runs leave alone
HISTORY = "History"  # trigger-form section of the fleet history (changes, battery forecast)

# Threads (one event loop each) a fetch spreads its max_threads servers over: more threads only
# contend for the GIL (esl_operators.engine says what was measured).
MAX_LOOP_THREADS = 4

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def parse_bool(value: Any, source: str = "value") -> bool:
    """A boolean from Python, JSON or a rendered template: ``true/false``, ``1/0``, ``yes/no``, ``on/off``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{source} must be true or false, got {value!r}")


# A plain mail address, as SMTP wants it in RCPT TO (no display names).
_ADDRESS = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+")


def split_addresses(text: str) -> list[str]:
    """Mail addresses written one after another, separated by commas, semicolons or blanks."""
    return [a for a in re.split(r"[,;\s]+", text) if a]


def _mail_addresses(text: str) -> str | None:
    bad = [a for a in split_addresses(text) if not _ADDRESS.fullmatch(a)]
    if bad:
        return f"must be mail addresses (ops@example.com) separated by commas; {bad[0]!r} is not one"
    return None


def _known_zone(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a known IANA time zone (e.g. UTC, Europe/Berlin, Asia/Shanghai)"
    return None


@dataclass(frozen=True)
class Setting:
    """One run setting. ``minimum``/``maximum`` are inclusive unless ``exclusive_minimum``."""

    name: str
    kind: Kind
    default: Any
    title: str
    description: str
    tasks: tuple[Task, ...]
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    dag: bool = True  # a DAG param (trigger form, --conf)
    cli: bool = True  # an ``esl-export fetch`` option
    cli_aliases: tuple[str, ...] = ()  # older option names that keep working
    section: str | None = None
    check: Callable[[Any], str | None] | None = None  # a further rule: the problem, or None

    @property
    def annotation(self) -> str:
        """The Python type of the setting's values, as text (operators also take rendered templates)."""
        base = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}.get(
            self.kind, "list[str]"
        )
        return f"{base} | None" if self.nullable else base

    @property
    def option(self) -> str:
        """The command-line option: ``--max-concurrency`` for ``max_concurrency``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any, source: str | None = None) -> Any:
        """``value`` converted to this setting's type and checked; :class:`ConfigError` otherwise.

        Accepts what each entry point hands over: Python values, JSON values and the text of a rendered
        template or a command line.
        """
        where = source or self.name
        if value is None or (value == "" and (self.nullable or self.kind != "string")):
            if self.nullable:
                return None
            raise ConfigError(f"{where} is required")
        parsed = self._convert(value, where)
        problem = self._bounds_problem(parsed)
        if problem is None and self.check is not None:
            problem = self.check(parsed)
        if problem is not None:
            raise ConfigError(f"{where} {problem}, got {value!r}")
        return parsed

    def _convert(self, value: Any, where: str) -> Any:
        if self.kind == "boolean":
            return parse_bool(value, where)
        if self.kind == "strings":
            return parse_server_list(value, where)
        if self.kind == "string":
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be text, got {value!r}")
            return value
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value) if not isinstance(value, int) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if self.kind == "number":
            return float(number)
        if isinstance(number, float) and not number.is_integer():
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        return int(number)

    def _bounds_problem(self, value: Any) -> str | None:
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.kind == "string" and not self.nullable and not value:
            return "must not be empty"
        if self.kind not in ("integer", "number"):
            return None
        low, high = self.minimum, self.maximum
        too_low = low is not None and (value <= low if self.exclusive_minimum else value < low)
        too_high = high is not None and value > high
        if not (too_low or too_high):
            return None
        if self.exclusive_minimum:
            return f"must be greater than {_num(low)}" + (f" and at most {_num(high)}" if high else "")
        if low is not None and high is not None:
            return f"must be between {_num(low)} and {_num(high)}"
        return f"must be at least {_num(low)}" if too_low else f"must be at most {_num(high)}"

    def schema(self) -> dict[str, Any]:
        """This setting's JSON schema, as a DAG ``Param`` declares it."""
        if self.kind == "strings":
            schema: dict[str, Any] = {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "uniqueItems": True,
            }
        else:
            schema = {"type": self.kind}
        if self.nullable:
            schema["type"] = ["null", schema["type"]]
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.kind == "string" and not self.nullable and not self.choices:
            schema["minLength"] = 1
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = _num(self.minimum)
        if self.maximum is not None:
            schema["maximum"] = _num(self.maximum)
        return schema

    def help(self) -> str:
        """One line for ``--help`` and ``:param`` docs: the description and the limits."""
        limits = []
        if self.kind in ("integer", "number") and (self.minimum is not None or self.maximum is not None):
            low = (
                ""
                if self.minimum is None
                else (">" if self.exclusive_minimum else "") + str(_num(self.minimum))
            )
            limits.append(f"{low}..{'' if self.maximum is None else _num(self.maximum)}")
        limits.append(f"default {json.dumps(self.default)}")
        return f"{self.description} ({', '.join(limits)})"


def _num(value: float | None) -> int | float | None:
    return int(value) if value is not None and float(value).is_integer() else value


def parse_server_list(value: Any, where: str) -> list[str]:
    """A list of non-empty, distinct strings, given as a list or as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a JSON list of connection ids, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where} holds {item!r}, which is not a connection id")
    duplicates = sorted(item for item, count in Counter(value).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{where} lists {duplicates} more than once")
    return list(value)


# One row per setting; kept compact on purpose (the table is the point), hence no auto-formatting.
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "servers", "strings", None, "Servers",
        "Connection ids of the ESL-Working servers. Empty: the Variable esl_servers.",
        tasks=("plan",), nullable=True, cli=False,
    ),
    Setting(
        "servers_per_batch", "integer", 1, "Servers per batch",
        "Servers per fetch task; each batch becomes one esl_id_part_N.csv.",
        tasks=("plan",), minimum=1, maximum=1000,
    ),
    Setting(
        "lookback_days", "integer", 7, "Heartbeat lookback (days)",
        "Keep labels whose last heartbeat is at most this many days before the run date.",
        tasks=("fetch",), minimum=0, maximum=3650,
    ),
    Setting(
        "max_records_per_store", "integer", 50_000, "Max rows per store",
        "Stop a store once this many rows are kept; capped stores are named in the manifest.",
        tasks=("fetch",), minimum=1, maximum=10_000_000,
    ),
    Setting(
        "max_concurrency", "integer", 4, "Requests in flight per server",
        "Concurrent requests per server (the ceiling when adaptive); weak in-store servers want a small "
        "number.",
        tasks=("fetch",), minimum=1, maximum=64,
    ),
    Setting(
        "adaptive_concurrency", "boolean", True, "Adapt concurrency per server",
        "Start each server at 1 request in flight and adapt up to max_concurrency: grow while latency "
        "stays near its baseline, halve on 429/503 and timeouts, and cut on rising latency only when it "
        "falls with concurrency (the client's own event-loop lag discounted: a busy client is not a "
        "busy server). Off: every server gets max_concurrency from the start.",
        tasks=("fetch",),
    ),
    Setting(
        "max_threads", "integer", 3, "Servers fetched at once per task",
        f"Servers fetched at once per fetch task, each with its own session and limit, on at most "
        f"{MAX_LOOP_THREADS} threads with one event loop each.",
        tasks=("fetch",), minimum=1, maximum=32,
    ),
    Setting(
        "on_server_error", "string", "fail", "When a server or store fails",
        "fail: the batch's task fails after writing its manifest, so Airflow retries that batch alone. "
        "skip: record the failure in the manifest and publish the rest.",
        tasks=("fetch",), choices=ON_SERVER_ERROR,
    ),
    Setting(
        "notify_to", "string", None, "Alert mail to",
        "Addresses mailed when a run fails or publishes with errors, separated by commas. Empty: the "
        "Variable esl_notify_to, else no mail.",
        tasks=("notify",), nullable=True, cli=False, section=ALERTS, check=_mail_addresses,
    ),
    Setting(
        "notify_conn_id", "string", "smtp_default", "Alert mail connection",
        "Airflow connection (type smtp) that sends the alert mails.",
        tasks=("notify",), cli=False, section=ALERTS,
    ),
    Setting(
        "request_timeout_s", "number", 60, "Request timeout (s)",
        "Total time for one request attempt; a connection extra 'timeout' overrides it.",
        tasks=("fetch",), minimum=0, exclusive_minimum=True, maximum=3600,
        cli_aliases=("--request-timeout",),
    ),
    Setting(
        "connect_timeout_s", "number", 10, "Connect timeout (s)",
        "Time to open a connection; a connection extra 'connect_timeout' overrides it.",
        tasks=("fetch",), minimum=0, exclusive_minimum=True, maximum=600,
        cli_aliases=("--connect-timeout",),
    ),
    Setting(
        "retry_attempts", "integer", 5, "Attempts per request",
        "Tries per request (first included) on timeouts, resets, 5xx, 429 and broken bodies, with "
        "exponential backoff and full jitter; Retry-After is honoured.",
        tasks=("fetch",), minimum=1, maximum=20,
    ),
    Setting(
        "retry_max_delay_s", "number", 30, "Longest backoff (s)",
        "Cap of the exponential backoff between two tries of a request.",
        tasks=("fetch",), minimum=0, maximum=600, section=ADVANCED,
    ),
    Setting(
        "max_pages", "integer", 10_000, "Most pages per store",
        "A store announcing more pages than this is refused as a server bug.",
        tasks=("fetch",), minimum=1, maximum=1_000_000, section=ADVANCED,
    ),
    Setting(
        "max_body_mb", "number", 32, "Largest response (MB)",
        "A response body larger than this is refused (memory safety on small workers).",
        tasks=("fetch",), minimum=0.001, maximum=1024, section=ADVANCED,
    ),
    Setting(
        "progress_interval_s", "number", 5, "Progress interval (s)",
        "Seconds between progress lines per server in the task log.",
        tasks=("fetch",), minimum=0, exclusive_minimum=True, maximum=3600, section=ADVANCED,
    ),
    Setting(
        "output_root", "string", None, "Output root",
        "Folder or object-storage URL. Empty: the Variable esl_output_root, else ./data/esl_export.",
        tasks=("plan", "fetch", "aggregate"), nullable=True, cli_aliases=("--out",),
    ),
    Setting(
        "header_style", "string", "standard", "CSV header style",
        "standard: English columns, UTC ISO timestamps. legacy: the old script's columns.",
        tasks=("aggregate",), choices=HEADER_STYLES,
    ),
    Setting(
        "timezone", "string", "UTC", "Time zone (legacy style)",
        "IANA time zone for legacy-style timestamps, e.g. Asia/Shanghai.",
        tasks=("aggregate",), check=_known_zone,
    ),
    Setting(
        "spreadsheet_safe", "boolean", None, "Guard spreadsheet formulas",
        "Prefix ' to text cells from the servers that start with =, +, -, @, a tab or a carriage return, "
        "so spreadsheets show them instead of running them as formulas. Empty: on for the legacy header "
        "style, off for standard.",
        tasks=("aggregate",), nullable=True,
    ),
    Setting(
        "aggregate_memory_mb", "integer", 256, "Aggregate memory budget (MB)",
        "Working memory for sorting a partition; a larger partition is sorted in runs spilled next to "
        "the parts and merged, so memory does not grow with the partition.",
        tasks=("aggregate",), minimum=16, maximum=65_536, section=ADVANCED,
    ),
    Setting(
        "history_days", "integer", 30, "History window (days)",
        "Published dates at most this many days before the run date are history: _changes.csv compares "
        "with the latest of them, _battery_forecast.csv fits each battery over all of them.",
        tasks=("aggregate",), minimum=1, maximum=366, section=HISTORY,
    ),
    Setting(
        "battery_drop_points", "integer", 10, "Battery drop (points)",
        "A label whose battery fell by at least this many points since the previous published date is a "
        "battery_drop in _changes.csv.",
        tasks=("aggregate",), minimum=1, maximum=100, section=HISTORY,
    ),
    Setting(
        "battery_alert_pct", "integer", 10, "Battery alert level (%)",
        "The battery level the forecast counts down to: days_left is the days until a label reaches it.",
        tasks=("aggregate",), minimum=0, maximum=100, section=HISTORY,
    ),
    Setting(
        "forecast_horizon_days", "integer", 60, "Forecast horizon (days)",
        "_battery_forecast.csv lists the labels expected at the alert level within this many days.",
        tasks=("aggregate",), minimum=0, maximum=3650, section=HISTORY,
    ),
)
# fmt: on

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    return BY_NAME[name]


def default(name: str) -> Any:
    """The table's default of ``name``, for the dataclasses that carry settings into the engine."""
    return BY_NAME[name].default


def for_task(task: Task) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if task in s.tasks)


def resolve(
    values: Mapping[str, Any], settings: Iterable[Setting], source: Callable[[Setting], str]
) -> dict[str, Any]:
    """Every setting of ``settings`` parsed from ``values`` (the table's default where absent)."""
    return {s.name: s.parse(values.get(s.name, s.default), source(s)) for s in settings}


def resolve_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """All DAG params of a run, checked the way the standalone command checks its options."""
    return resolve(params, (s for s in SETTINGS if s.dag), lambda s: f"param {s.name!r}")


# --- the DAG ---------------------------------------------------------------------------------------


def dag_params() -> dict[str, Any]:
    """``Param`` objects for the DAG, in table order."""
    from airflow.sdk import Param

    params = {}
    for s in SETTINGS:
        if not s.dag:
            continue
        extra: dict[str, Any] = {"section": s.section} if s.section else {}
        params[s.name] = Param(s.default, title=s.title, description=s.description, **s.schema(), **extra)
    return params


def templated(task: Task) -> dict[str, str]:
    """``{"lookback_days": "{{ params.lookback_days }}", ...}``: the task's settings wired to the params."""
    return {s.name: f"{{{{ params.{s.name} }}}}" for s in for_task(task) if s.dag}


# --- the operators ---------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., None])


def operator_options(task: Task) -> Callable[[F], F]:
    """Declare the task's settings as keyword-only arguments of an operator's ``__init__``.

    Airflow checks ``partial()``/``expand()`` arguments and applies ``default_args`` by the signature of
    ``__init__``; the decorated ``__init__`` takes them through ``**kwargs`` but advertises each setting
    by name, with the table's default, so those checks (and ``help()``) see the real arguments.
    """

    def declare(init: F) -> F:
        signature = inspect.signature(init)
        params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        params += [
            inspect.Parameter(
                s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default, annotation=s.annotation
            )
            for s in for_task(task)
            if s.name not in signature.parameters
        ]
        params += [p for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD]
        # inspect.signature() honours __signature__; typeshed does not declare it on functions.
        init.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return init

    return declare


def take_options(task: Task, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the task's settings out of an operator's ``kwargs`` (table defaults for the missing ones)."""
    return {s.name: kwargs.pop(s.name, s.default) for s in for_task(task)}


def rendered_options(operator: Any, task: Task) -> dict[str, Any]:
    """An operator's settings after template rendering, each checked; errors name the task."""
    return resolve(
        {s.name: getattr(operator, s.name) for s in for_task(task)},
        for_task(task),
        lambda s: f"task {operator.task_id!r} argument {s.name!r}",
    )


C = TypeVar("C", bound=type)


def document_options(task: Task) -> Callable[[C], C]:
    """Append a ``:param`` line per setting of ``task`` to an operator's docstring."""

    def document(cls: C) -> C:
        lines = "".join(f"    :param {s.name}: {s.help()}\n" for s in for_task(task))
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + lines
        return cls

    return document


# --- the standalone command ------------------------------------------------------------------------


def add_cli_options(parser: argparse.ArgumentParser, *, required: Iterable[str] = ()) -> None:
    """One option per setting exposed on the command line, checked while the arguments are parsed.

    A bad value ends the command before anything is fetched: one line naming the option, exit 2.
    """
    must = set(required)
    for s in SETTINGS:
        if not s.cli:
            continue
        names = [s.option, *s.cli_aliases]
        if s.kind == "boolean":
            parser.add_argument(
                *names, dest=s.name, action=argparse.BooleanOptionalAction, default=s.default, help=s.help()
            )
            continue
        parser.add_argument(
            *names,
            dest=s.name,
            type=_cli_type(s),
            default=argparse.SUPPRESS if s.name in must else s.default,
            required=s.name in must,
            metavar="{" + ",".join(s.choices) + "}" if s.choices else _METAVARS[s.kind],
            help=s.help(),
        )


_METAVARS = {"integer": "N", "number": "X", "string": "TEXT", "strings": "JSON"}


def _cli_type(s: Setting) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return s.parse(text, s.option)
        except ConfigError as exc:
            # argparse prints "argument --x: <message>"; drop our own copy of the option name.
            raise argparse.ArgumentTypeError(str(exc).removeprefix(s.option + " ")) from None

    convert.__name__ = s.name
    return convert
