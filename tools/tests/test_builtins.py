"""Built-in tools, run through tool_execute as the engine runs them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from projects.secrets import SecretBag
from sparkops.errors import Conflict, InvalidInput
from tools import services
from tools.executors.builtin import BUILTINS, calculate, parse_path
from tools.tests.factories import ToolFactory

pytestmark = pytest.mark.django_db


def run(function: str, arguments: dict[str, Any], **config: Any) -> services.ToolResult:
    tool = ToolFactory(config={"function": function, **config})
    return services.tool_execute(tool=tool, arguments=arguments, secrets=SecretBag(tool.project))


def test_every_builtin_has_a_valid_parameter_schema():
    from tools.schema import parameters_errors

    for builtin in BUILTINS.values():
        assert parameters_errors(builtin.parameters) == {}, builtin.name


# --- calculator ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("2 ** 10", 1024),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("-(3 - 5)", 2),
        ("+1.5e3", 1500.0),
        ("2 ** -1", 0.5),
        ("10 ** 300 // 10 ** 299", 10),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, expected: float):
    result = run("calculator", {"expression": expression})
    assert result.ok, result.error
    assert result.output == {"result": expected}
    assert type(result.output["result"]) is type(expected)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os')", "Function calls are not allowed"),
        ("__import__('os').system('id')", "not allowed"),
        ("x + 1", "Names such as 'x' are not allowed"),
        ("os.system", "Attribute is not allowed"),
        ("'a' * 3", "Only numbers are allowed"),
        ("True + 1", "Only numbers are allowed"),
        ("[1, 2][0]", "not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("1 if 1 else 2", "IfExp is not allowed"),
        ("1 < 2", "Compare is not allowed"),
        ("1 << 10", "BinOp is not allowed"),
        ("1j * 2", "Only numbers are allowed"),
        ("2 ** 100000", "Exponents are limited to 1000"),
        ("9 ** 9 ** 9", "Exponents are limited to 1000"),
        ("(10 ** 1000) ** 4", "too large"),
        ("2 ** 1000 * 2 ** 1000 * 2 ** 1000 * 2 ** 1000 * 2 ** 1000", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("10.0 ** 400", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 / 0", "Division by zero"),
        ("5 % 0", "Division by zero"),
        ("1 +", "Not a valid arithmetic expression"),
        ("-" * 100 + "1", "nested too deeply"),
        ("1+" * 300 + "1", "longer than 500 characters"),
    ],
)
def test_calculator_refuses(expression: str, fragment: str):
    tool = ToolFactory(
        config={"function": "calculator"},
        parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
    )
    result = services.tool_execute(
        tool=tool, arguments={"expression": expression}, secrets=SecretBag(tool.project)
    )
    assert not result.ok
    assert result.output is None
    assert fragment in (result.error or ""), result.error
    assert result.retryable is False


def test_calculate_never_reaches_eval():
    # The walker only accepts literals and operators; a parsed call never runs.
    from tools.executors.builtin import BuiltinError

    with pytest.raises(BuiltinError):
        calculate("print('side effect')")


def test_calculator_arguments_are_validated_first():
    tool = ToolFactory(config={"function": "calculator"})
    with pytest.raises(InvalidInput) as caught:
        services.tool_execute(tool=tool, arguments={}, secrets=SecretBag(tool.project))
    assert caught.value.errors == {"arguments.expression": ["This field is required."]}


# --- json_path -------------------------------------------------------------------------------

DATA = {
    "a": {"b": [{"c": 1}, {"c": 2, "d e": "spaced"}]},
    "items": [10, 20, 30],
    "it's": True,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", DATA),
        ("$.a.b[0].c", 1),
        ("$.a.b[1]['d e']", "spaced"),
        ('$.a.b[1]["d e"]', "spaced"),
        ("$.items[-1]", 30),
        ("$.items.1", 20),
        ("a.b[1].c", 2),
        ("$['it\\'s']", True),
        ("$.a.b", DATA["a"]["b"]),
    ],
)
def test_json_path_extracts(path: str, expected: Any):
    result = run("json_path", {"data": DATA, "path": path})
    assert result.ok, result.error
    assert result.output == {"value": expected}


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("$.a.x", "$.a has no key 'x'"),
        ("$.items[3]", "has 3 item(s); no index 3"),
        ("$.items.c", "$.items is not an object"),
        ("$.a[0]", "$.a is not an array"),
        ("$.a..b", "Invalid path"),
        ("$[a]", "Invalid path"),
    ],
)
def test_json_path_misses_are_errors(path: str, fragment: str):
    result = run("json_path", {"data": DATA, "path": path})
    assert not result.ok
    assert fragment in (result.error or ""), result.error


def test_json_path_default_answers_a_miss():
    result = run("json_path", {"data": DATA, "path": "$.nope", "default": None})
    assert result.ok
    assert result.output == {"value": None}


def test_parse_path():
    assert parse_path("$.a[0]['b c'].d") == ["a", 0, "b c", "d"]


# --- current_time ----------------------------------------------------------------------------


def test_current_time_in_a_time_zone():
    before = datetime.now(UTC)
    result = run("current_time", {"timezone": "Asia/Tokyo"})
    after = datetime.now(UTC)
    assert result.ok, result.error
    output = result.output
    assert output["timezone"] == "Asia/Tokyo"
    assert output["utc_offset"] == "+09:00"  # Japan has no daylight saving time
    moment = datetime.fromisoformat(output["iso"])
    assert moment.utcoffset() == timedelta(hours=9)
    assert before - timedelta(seconds=1) <= moment <= after
    assert output["date"] == moment.date().isoformat()
    assert output["weekday"] == moment.strftime("%A")


def test_current_time_defaults_to_utc():
    result = run("current_time", {})
    assert result.output["timezone"] == "UTC"
    assert result.output["utc_offset"] == "+00:00"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "Europe/"])
def test_current_time_refuses_unknown_zones(zone: str):
    result = run("current_time", {"timezone": zone})
    assert not result.ok
    assert "Unknown time zone" in (result.error or "")


# --- template --------------------------------------------------------------------------------


def test_template_renders_text():
    result = run("template", {"template": "Hello {{ name }}!", "values": {"name": "Ada"}})
    assert result.ok, result.error
    assert result.output == {"result": "Hello Ada!"}


def test_template_keeps_the_native_type_of_one_expression():
    result = run("template", {"template": "{{ items | length * 2 }}", "values": {"items": [1, 2]}})
    assert result.output == {"result": 4}


def test_template_fixed_in_config_renders_over_args():
    tool = ToolFactory(
        config={"function": "template", "template": "Dear {{ args.name | title }}"},
        parameters={"type": "object", "properties": {"name": {"type": "string"}}},
    )
    result = services.tool_execute(
        tool=tool, arguments={"name": "ada lovelace"}, secrets=SecretBag(tool.project)
    )
    assert result.output == {"result": "Dear Ada Lovelace"}


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{{ ''.__class__.__mro__ }}", "not allowed"),
        ("{{ missing }}", "Undefined"),
        ("{{ 'x' * 100000000 }}", "size limit"),
        ("{% for x in range(10) %}", "syntax error"),
    ],
)
def test_template_refusals(template: str, fragment: str):
    result = run("template", {"template": template, "values": {}})
    assert not result.ok
    assert fragment in (result.error or ""), result.error


# --- noop ------------------------------------------------------------------------------------


def test_noop_returns_its_arguments():
    arguments = {"a": 1, "nested": {"list": [1, "two", None]}}
    result = run("noop", arguments)
    assert result.ok
    assert result.output == arguments
    assert result.http_status is None
    assert result.latency_ms >= 0


def test_a_disabled_tool_does_not_run():
    tool = ToolFactory(status="disabled")
    with pytest.raises(Conflict):
        services.tool_execute(tool=tool, arguments={}, secrets=SecretBag(tool.project))
