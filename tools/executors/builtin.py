"""Built-in tools: a small registry of real, safe functions. None of them runs code it was
given: the calculator walks a parsed AST of numbers and operators, JSON paths are parsed by a
regular expression, and templates render in the workflows' Jinja2 sandbox."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sparkops import templating


class BuiltinError(Exception):
    """The call failed in a way the caller should see (bad expression, missing path...)."""


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[[dict[str, Any], dict[str, Any]], Any]  # (arguments, config) -> output


# --- current_time ----------------------------------------------------------------------------


def current_time(arguments: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    name = arguments.get("timezone") or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BuiltinError(
            f"Unknown time zone {name!r} (use an IANA name like Europe/Paris)."
        ) from None
    now = datetime.now(UTC).astimezone(zone)
    return {
        "iso": now.isoformat(timespec="seconds"),
        "timezone": name,
        "utc_offset": now.strftime("%z")[:3] + ":" + now.strftime("%z")[3:],
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "weekday": now.strftime("%A"),
        "unix": int(now.timestamp()),
    }


# --- calculator ------------------------------------------------------------------------------

MAX_EXPRESSION_LENGTH = 500
MAX_EXPONENT = 1000
MAX_INT_BITS = 4096
MAX_DEPTH = 50

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_ALLOWED = "numbers, + - * / // % **, unary + and -, and parentheses"


def _checked(value: Any) -> int | float:
    if isinstance(value, complex):
        raise BuiltinError("The result is not a real number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise BuiltinError("The result is too large (not a finite number).")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise BuiltinError(f"The result is too large (over {MAX_INT_BITS} bits).")
    return value  # type: ignore[no-any-return]


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise BuiltinError(f"Exponents are limited to {MAX_EXPONENT} (got {exponent}).")
    big_int = isinstance(base, int) and isinstance(exponent, int) and exponent > 0
    if big_int and abs(base) > 1 and (abs(int(base)).bit_length() - 1) * exponent > MAX_INT_BITS:
        raise BuiltinError(f"The result is too large (over {MAX_INT_BITS} bits).")


def _evaluate(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise BuiltinError("The expression is nested too deeply.")
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float):
            return _checked(node.value)
        raise BuiltinError(f"Only numbers are allowed, not {node.value!r}.")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, depth + 1)
        right = _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise BuiltinError("Division by zero.") from None
        except OverflowError:
            raise BuiltinError("The result is too large.") from None
    if isinstance(node, ast.Name):
        raise BuiltinError(f"Names such as {node.id!r} are not allowed; only {_ALLOWED}.")
    if isinstance(node, ast.Call):
        raise BuiltinError(f"Function calls are not allowed; only {_ALLOWED}.")
    raise BuiltinError(f"{type(node).__name__} is not allowed; only {_ALLOWED}.")


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression without eval: parse it, then walk only numeric
    literals and arithmetic operators, with caps on exponents and result size."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise BuiltinError(f"The expression is longer than {MAX_EXPRESSION_LENGTH} characters.")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise BuiltinError(f"Not a valid arithmetic expression: {exc.msg}.") from None
    except (ValueError, RecursionError, MemoryError):
        raise BuiltinError("Not a valid arithmetic expression.") from None
    return _evaluate(tree.body, 0)


def calculator(arguments: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {"result": calculate(str(arguments.get("expression", "")))}


# --- json_path -------------------------------------------------------------------------------

_PATH_TOKEN = re.compile(
    r"""\.(?P<name>[^.\[\]'"\s]+)"""
    r"""|\[\s*(?P<index>-?\d+)\s*\]"""
    r"""|\[\s*'(?P<single>(?:[^'\\]|\\.)*)'\s*\]"""
    r"""|\[\s*"(?P<double>(?:[^"\\]|\\.)*)"\s*\]"""
)
MAX_PATH_LENGTH = 1000


def parse_path(path: str) -> list[str | int]:
    """`$.a.b[0]["c d"]` -> ["a", "b", 0, "c d"]; the leading `$` is optional."""
    if len(path) > MAX_PATH_LENGTH:
        raise BuiltinError(f"The path is longer than {MAX_PATH_LENGTH} characters.")
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    elif text and not text.startswith(("[", ".")):
        text = "." + text
    steps: list[str | int] = []
    position = 0
    while position < len(text):
        match = _PATH_TOKEN.match(text, position)
        if match is None:
            raise BuiltinError(
                f"Invalid path {path!r} at character {position + 1}: use $.key, [index] or ['key']."
            )
        if match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            key = match.group("name")
            if key is None:
                quoted = match.group("single") or match.group("double") or ""
                key = re.sub(r"\\(.)", r"\1", quoted)
            steps.append(key)
        position = match.end()
    return steps


def extract(data: Any, path: str) -> Any:
    current = data
    walked = "$"
    for step in parse_path(path):
        if isinstance(current, list) and (isinstance(step, int) or step.lstrip("-").isdigit()):
            index = int(step)  # `[0]`, or `.0` on an array
            if not -len(current) <= index < len(current):
                raise BuiltinError(f"{walked} has {len(current)} item(s); no index {index}.")
            current = current[index]
            walked += f"[{index}]"
        elif isinstance(step, int):
            raise BuiltinError(f"{walked} is not an array, so [{step}] does not apply.")
        elif not isinstance(current, dict):
            raise BuiltinError(f"{walked} is not an object, so .{step} does not apply.")
        elif step not in current:
            raise BuiltinError(f"{walked} has no key {step!r}.")
        else:
            current = current[step]
            walked += f".{step}"
    return current


def json_path(arguments: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"value": extract(arguments.get("data"), str(arguments.get("path", "$")))}
    except BuiltinError:
        if "default" in arguments:
            return {"value": arguments["default"]}
        raise


# --- template --------------------------------------------------------------------------------


def template(arguments: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Render `config.template` over `{"args": arguments}` when the tool fixes one, else the
    `template` argument over the `values` argument."""
    if "template" in config:
        source, context = config["template"], {"args": arguments}
    else:
        source, context = arguments.get("template", ""), arguments.get("values") or {}
        if not isinstance(context, dict):
            raise BuiltinError("`values` must be an object.")
    try:
        return {"result": templating.render_value(source, context)}
    except templating.TemplateError as exc:
        raise BuiltinError(exc.detail) from None


# --- noop ------------------------------------------------------------------------------------


def noop(arguments: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return dict(arguments)


BUILTINS: dict[str, Builtin] = {
    builtin.name: builtin
    for builtin in (
        Builtin(
            name="current_time",
            description="The current date and time in a time zone.",
            parameters={
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "description": "An IANA time zone such as Europe/Paris; default UTC.",
                    }
                },
                "additionalProperties": False,
            },
            function=current_time,
        ),
        Builtin(
            name="calculator",
            description="Evaluate an arithmetic expression (+ - * / // % ** and parentheses).",
            parameters={
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "maxLength": MAX_EXPRESSION_LENGTH,
                        "description": "For example (2 + 3) * 4 ** 2 / 7.",
                    }
                },
                "required": ["expression"],
                "additionalProperties": False,
            },
            function=calculator,
        ),
        Builtin(
            name="json_path",
            description="Extract a value from JSON data with a path such as $.items[0].name.",
            parameters={
                "type": "object",
                "properties": {
                    "data": {"description": "Any JSON value."},
                    "path": {"type": "string", "description": "For example $.a.b[0]['c d']."},
                    "default": {"description": "Returned when the path matches nothing."},
                },
                "required": ["data", "path"],
                "additionalProperties": False,
            },
            function=json_path,
        ),
        Builtin(
            name="template",
            description="Render a Jinja2 template (sandboxed) with the given values.",
            parameters={
                "type": "object",
                "properties": {
                    "template": {"type": "string", "description": "For example Hi {{ name }}."},
                    "values": {"type": "object", "description": "The names the template uses."},
                },
                "required": ["template"],
                "additionalProperties": False,
            },
            function=template,
        ),
        Builtin(
            name="noop",
            description="Return the arguments unchanged (for tests and benchmarks).",
            parameters={"type": "object", "properties": {}},
            function=noop,
        ),
    )
}


def run_builtin(config: dict[str, Any], arguments: dict[str, Any]) -> Any:
    builtin = BUILTINS.get(config.get("function", ""))
    if builtin is None:
        raise BuiltinError(f"Unknown built-in function {config.get('function')!r}.")
    return builtin.function(arguments, config)
