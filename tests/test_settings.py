"""The settings table: the DAG, the operators and the command line agree with it, and share its checks."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from esl_operators import cli
from esl_operators.exceptions import ConfigError
from esl_operators.operators import EslAggregateOperator, EslFetchOperator
from esl_operators.plan import plan_run
from esl_operators.settings import (
    BY_NAME,
    SETTINGS,
    Setting,
    dag_params,
    for_task,
    parse_bool,
    setting,
)
from esl_operators.simulator import FaultProfile, SimulatorThread, build_fleet
from tests.support import ANCHOR, ANCHOR_MS, load_dag

NUMERIC = [s for s in SETTINGS if s.kind in ("integer", "number")]
OPERATORS = {"fetch": EslFetchOperator, "aggregate": EslAggregateOperator}


def test_every_setting_is_described_and_its_default_obeys_its_own_rules() -> None:
    assert len(BY_NAME) == len(SETTINGS), "a setting name is used twice"
    for s in SETTINGS:
        assert s.title and s.description, s.name
        assert s.tasks, s.name
        assert s.parse(s.default) == s.default, s.name


def test_the_dag_params_are_the_table() -> None:
    dag = load_dag()
    assert list(dag.params) == [s.name for s in SETTINGS if s.dag]
    for s in SETTINGS:
        if not s.dag:
            continue
        param = dag.params.get_param(s.name)
        assert param.value == s.default, s.name
        assert param.description == s.description, s.name
        schema = {k: v for k, v in param.schema.items() if k not in ("title", "description", "section")}
        assert schema == s.schema(), s.name
        assert param.schema["title"] == s.title, s.name
        assert param.schema.get("section") == s.section, s.name


def test_the_dag_wires_every_task_setting_to_its_param() -> None:
    dag = load_dag()
    fetch = dag.get_task("fetch").partial_kwargs
    aggregate = dag.get_task("aggregate")
    for s in for_task("fetch"):
        assert fetch[s.name] == f"{{{{ params.{s.name} }}}}", s.name
    for s in for_task("aggregate"):
        assert getattr(aggregate, s.name) == f"{{{{ params.{s.name} }}}}", s.name


@pytest.mark.parametrize("task", ["fetch", "aggregate"])
def test_the_operators_take_every_setting_of_their_task(task: str) -> None:
    operator = OPERATORS[task]
    signature = inspect.signature(operator.__init__)
    for s in for_task(task):  # type: ignore[arg-type]
        parameter = signature.parameters[s.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, s.name
        assert parameter.default == s.default, s.name
        assert s.name in operator.template_fields, s.name
        assert f":param {s.name}: {s.description}" in (operator.__doc__ or ""), s.name
    expected = {"fetch": {"servers"}, "aggregate": {"manifests"}}[task] | {s.name for s in for_task(task)}  # type: ignore[arg-type]
    assert set(operator.template_fields) == expected


def test_an_operator_keeps_a_given_setting_and_defaults_the_rest() -> None:
    op = EslFetchOperator(task_id="f", servers=["a"], max_concurrency=9, adaptive_concurrency="off")
    assert (op.max_concurrency, op.adaptive_concurrency, op.lookback_days) == (9, "off", 7)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_concurency'"):
        EslFetchOperator.partial(task_id="g", max_concurency=3)


def test_the_command_line_offers_every_cli_setting_with_the_table_default() -> None:
    parser = cli._parser()
    fetch = next(a for a in parser._actions if a.dest == "command").choices["fetch"]  # type: ignore[union-attr]
    actions = {a.dest: a for a in fetch._actions}
    for s in SETTINGS:
        if not s.cli:
            assert s.name not in actions, s.name
            continue
        assert s.option in actions[s.name].option_strings, s.name
        if s.name != "output_root":  # required on the command line: there is no Variable to fall back on
            assert actions[s.name].default == s.default, s.name
    args = parser.parse_args(["fetch", "--server", "http://x", "--date", "2024-05-10", "--out", "o"])
    assert {s.name: getattr(args, s.name) for s in SETTINGS if s.cli and s.name != "output_root"} == {
        s.name: s.default for s in SETTINGS if s.cli and s.name != "output_root"
    }


def _bad_values(s: Setting) -> list[Any]:
    bad: list[Any] = []
    if s.minimum is not None:
        bad.append(s.minimum if s.exclusive_minimum else s.minimum - 1)
    if s.maximum is not None:
        bad.append(s.maximum + 1)
    return bad


@pytest.mark.parametrize("s", NUMERIC, ids=lambda s: s.name)
def test_the_dag_schema_and_the_table_agree_on_every_bound(s: Setting) -> None:
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    param = dag_params()[s.name]
    good = [
        v for v in (s.minimum, s.maximum) if v is not None and not (s.exclusive_minimum and v == s.minimum)
    ]
    for value in good:
        assert s.parse(value) == value
        assert Param(value, **param.schema).resolve() == value
    for value in _bad_values(s):
        with pytest.raises(ConfigError, match=f"^{s.name} must be"):
            s.parse(value)
        with pytest.raises(ParamValidationError):
            Param(value, **param.schema).resolve()


@pytest.mark.parametrize("s", [s for s in NUMERIC if s.cli], ids=lambda s: s.name)
def test_the_command_line_refuses_out_of_range_values_in_one_line(
    s: Setting, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in _bad_values(s):
        argv = ["fetch", "--server", "http://x", "--date", "2024-05-10", "--out", "o", s.option, str(value)]
        with pytest.raises(SystemExit) as stopped:
            cli.main(argv)
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(f"esl-export fetch: error: argument {s.option}"), err
        assert "must be" in err and repr(str(value)) in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--date", "2026/11/30"], "argument --date: expected a date as YYYY-MM-DD, got '2026/11/30'"),
        (["--timezone", "Europe/Berln"], "argument --timezone: is not a known IANA time zone"),
        (["--header-style", "wide"], "argument --header-style: must be one of standard, legacy, got 'wide'"),
        (
            ["--on-server-error", "retry"],
            "argument --on-server-error: must be one of fail, skip, got 'retry'",
        ),
        (["--max-body-mb", "lots"], "argument --max-body-mb: must be a number, got 'lots'"),
        (["--max-threads", "2.5"], "argument --max-threads: must be a whole number, got '2.5'"),
    ],
)
def test_the_command_line_names_the_format_it_expected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--server": "http://x", "--date": "2024-05-10", "--out": "o"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fetch", *(part for pair in base.items() for part in pair)])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "on", "ON", " on "])
def test_parse_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off", "OFF"])
def test_parse_bool_false(text: str) -> None:
    assert parse_bool(text) is False


def test_parse_bool_refuses_anything_else() -> None:
    with pytest.raises(ConfigError, match=r"^adaptive_concurrency must be true or false, got 'maybe'$"):
        parse_bool("maybe", "adaptive_concurrency")
    with pytest.raises(ConfigError):
        parse_bool(2)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_concurrency", "8", 8),
        ("max_concurrency", 8.0, 8),
        ("request_timeout_s", "2.5", 2.5),
        ("adaptive_concurrency", "off", False),
        ("output_root", "", None),
        ("servers", '["a", "b"]', ["a", "b"]),
    ],
)
def test_rendered_values_are_converted(name: str, value: Any, expected: Any) -> None:
    assert setting(name).parse(value) == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("max_concurrency", True, "max_concurrency must be a number, got True"),
        ("max_concurrency", 2.5, "max_concurrency must be a whole number, got 2.5"),
        ("request_timeout_s", "nan", "request_timeout_s must be a finite number, got 'nan'"),
        ("lookback_days", None, "lookback_days is required"),
        ("timezone", "", "timezone must not be empty, got ''"),
    ],
)
def test_wrong_values_are_named(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        setting(name).parse(value)
    assert str(caught.value) == message


def test_the_plan_task_checks_every_param_before_anything_is_fetched(tmp_path: Path) -> None:
    params = {"servers": ["a"], "output_root": str(tmp_path), "timezone": "Mars/Olympus"}
    with pytest.raises(ConfigError, match=r"^param 'timezone' is not a known IANA time zone"):
        plan_run(params, {"ds": "2024-05-10", "data_interval_end": ANCHOR})
    with pytest.raises(ConfigError, match=r"^param 'max_concurrency' must be between 1 and 64, got 65$"):
        plan_run({**params, "timezone": "UTC", "max_concurrency": 65}, {"ds": "2024-05-10"})


def test_skip_prints_each_failed_server_and_store_and_keeps_credentials_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = build_fleet(servers=2, stores=2, esls=30, page_size=10, seed=3, reference_ms=ANCHOR_MS)
    with SimulatorThread(fleet, faults={1: FaultProfile(down=True)}) as sim:
        good = sim.urls[0].replace("http://", "http://api:s3cret@")
        code = cli.main(
            [
                *("fetch", "--server", good, "--server", sim.urls[1], "--date", "2024-05-10"),
                *("--out", str(tmp_path), "--on-server-error", "skip", "--retry-attempts", "1"),
            ]
        )
    assert code == 0
    out, err = capsys.readouterr()
    assert f"{sim.urls[1]}: list stores: request failed" in err
    assert "errors: 1 (skipped: 1, listed above)" in out
    manifest = (tmp_path / "2024-05-10" / "_manifest.json").read_text(encoding="utf-8")
    assert "s3cret" not in manifest
    assert json.loads(manifest)["params"]["server"] == [sim.urls[0], sim.urls[1]]
