"""Validation of tool definitions and call arguments (tools.schema), refusals first."""

from __future__ import annotations

from typing import Any

import pytest

from sparkops.errors import InvalidInput
from tools.schema import clean_tool, validate_arguments

URL = "https://api.example.com/v1/items"


def refusal(**fields: Any) -> dict[str, list[str]]:
    with pytest.raises(InvalidInput) as caught:
        clean_tool(**{"name": "get_items", "kind": "http", **fields})
    return caught.value.errors or {}


def http(**config: Any) -> dict[str, Any]:
    return {"method": "GET", "url": URL, **config}


@pytest.mark.parametrize(
    "name", ["", "1tool", "has space", "dots.not.ok", "x" * 65, "émoji", "slash/no", None, 7]
)
def test_bad_names_are_refused(name: Any):
    errors = refusal(name=name, config=http())
    assert list(errors) == ["name"]


@pytest.mark.parametrize("name", ["a", "_private", "get-weather", "Tool_2", "x" * 64])
def test_function_names_are_accepted(name: str):
    assert clean_tool(name=name, kind="http", config=http())["name"] == name


def test_parameters_must_be_a_valid_json_schema():
    errors = refusal(
        config=http(),
        parameters={"type": "object", "properties": {"q": {"type": "strin"}}},
    )
    assert list(errors) == ["parameters.properties.q.type"]
    assert errors["parameters.properties.q.type"][0].startswith("Not a valid JSON Schema")


@pytest.mark.parametrize(
    ("parameters", "keys"),
    [
        (
            {"type": "array", "items": {"type": "string"}},
            {"parameters.type", "parameters.properties"},
        ),
        ({"type": "object"}, {"parameters.properties"}),
        ({"type": "object", "properties": []}, {"parameters.properties"}),
        ([{"type": "object"}], {"parameters"}),
        ("an object please", {"parameters"}),
        (
            {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]},
            {"parameters.required"},
        ),
    ],
)
def test_parameters_must_be_an_object_schema_with_properties(parameters: Any, keys: set[str]):
    errors = refusal(config=http(), parameters=parameters)
    assert keys <= set(errors), errors


def test_empty_parameters_become_an_empty_object_schema():
    cleaned = clean_tool(name="t", kind="http", config=http(), parameters={})
    assert cleaned["parameters"] == {"type": "object", "properties": {}}


def test_builtin_parameters_default_to_the_function_schema():
    cleaned = clean_tool(name="calc", kind="builtin", config={"function": "calculator"})
    assert cleaned["parameters"]["required"] == ["expression"]


def test_http_config_errors_are_field_level_and_all_listed():
    errors = refusal(
        config={
            "method": "FETCH",
            "auth": {"type": "oauth"},
            "timeout_seconds": 900,
            "retries": 50,
            "surprise": True,
            "headers": {"X-Count": 3},
        }
    )
    assert set(errors) == {
        "config.url",
        "config.method",
        "config.auth.type",
        "config.timeout_seconds",
        "config.retries",
        "config.surprise",
        "config.headers.X-Count",
    }
    assert errors["config.url"] == ["This field is required."]
    assert errors["config.surprise"] == ["Unknown field."]
    assert "bearer" in errors["config.auth.type"][0]


def test_http_method_is_case_insensitive():
    assert clean_tool(name="t", kind="http", config=http(method="post"))["config"]["method"] == (
        "POST"
    )


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        ({"type": "bearer"}, "config.auth.secret"),
        ({"type": "bearer", "secret": "not a name"}, "config.auth.secret"),
        ({"type": "api_key", "secret": "KEY", "header": "Bad Header"}, "config.auth.header"),
        ({"type": "basic", "username": "u"}, "config.auth.password_secret"),
        ({"type": "none", "secret": "KEY"}, "config.auth.secret"),
        (
            {"type": "basic", "username": "u", "username_secret": "U", "password_secret": "P"},
            "config.auth.username",
        ),
    ],
)
def test_bad_auth_configs(auth: dict[str, Any], key: str):
    errors = refusal(config=http(auth=auth))
    assert key in errors, errors


def test_good_auth_configs():
    for auth in (
        {"type": "none"},
        {"type": "bearer", "secret": "API_TOKEN"},
        {"type": "api_key", "secret": "KEY", "header": "X-Api-Key"},
        {"type": "basic", "username": "bot", "password_secret": "PASSWORD"},
        {"type": "basic", "username_secret": "USER", "password_secret": "PASSWORD"},
    ):
        clean_tool(name="t", kind="http", config=http(auth=auth))


@pytest.mark.parametrize(
    ("config", "key", "fragment"),
    [
        (http(url=URL + "/{{ args.id "), "config.url", "syntax error"),
        (http(headers={"X-Trace": "{% if %}"}), "config.headers.X-Trace", "syntax error"),
        (http(query={"q": "{{ input.topic }}"}), "config.query.q", "Unknown name(s) input"),
        (
            http(method="POST", body={"a": ["{{ steps.x.output }}"]}),
            "config.body",
            "Unknown name(s) steps",
        ),
        (http(url=URL + "/{{ args.__class__ }}"), "config.url", "not allowed"),
        (http(body={"a": 1}), "config.body", "GET request has no body"),
        (http(url="ftp://files.example.com/x"), "config.url", "http:// or https://"),
        (http(url="https:///path"), "config.url", "no host"),
        (
            http(url="https://{{ args.host }}/v1", auth={"type": "bearer", "secret": "T"}),
            "config.url",
            "must be literal",
        ),
        (
            http(url="{{ args.url }}", headers={"Authorization": "Bearer {{ secrets.T }}"}),
            "config.url",
            "must be literal",
        ),
    ],
)
def test_bad_templates_and_urls_are_refused_on_save(config: Any, key: str, fragment: str):
    errors = refusal(config=config)
    assert key in errors, errors
    assert fragment in " ".join(errors[key])


def test_templated_http_config_is_accepted():
    config = http(
        method="POST",
        url=URL + "/{{ args.id | urlencode }}",
        headers={"Authorization": "Bearer {{ secrets.API_TOKEN }}", "X-Static": "yes"},
        query={"q": "{{ args.q }}", "limit": 10, "tags": ["a", "{{ args.tag }}"]},
        body={"name": "{{ args.name }}", "all": "{{ args }}"},
        retries=2,
        timeout_seconds=5,
    )
    assert clean_tool(name="t", kind="http", config=config)["config"] == config


def test_a_wholly_templated_url_is_allowed_without_secrets():
    clean_tool(name="fetch", kind="http", config=http(url="{{ args.url }}"))


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "config.function"),
        ({"function": "eval"}, "config.function"),
        ({"function": "noop", "extra": 1}, "config.extra"),
        ({"function": "noop", "template": "x"}, "config.template"),
        ({"function": "template", "template": "{{ secrets.X }}"}, "config.template"),
    ],
)
def test_bad_builtin_configs(config: dict[str, Any], key: str):
    errors = refusal(kind="builtin", config=config)
    assert key in errors, errors


def test_unknown_kind_and_status():
    errors = refusal(kind="python", status="maybe", config={})
    assert set(errors) >= {"kind", "status"}


def test_config_must_be_an_object():
    assert refusal(config=["GET", URL]) == {"config": ["Must be a JSON object."]}


# --- arguments -------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "units": {"enum": ["metric", "imperial"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


def test_validate_arguments_lists_every_violation():
    with pytest.raises(InvalidInput) as caught:
        validate_arguments(SCHEMA, {"days": 40, "units": "kelvin", "tags": ["a", 2], "x": 1})
    assert caught.value.detail == "Invalid tool arguments."
    assert caught.value.errors == {
        "arguments.city": ["This field is required."],
        "arguments.days": ["40 is greater than the maximum of 14"],
        "arguments.units": ['Must be one of: "metric", "imperial".'],
        "arguments.tags.1": ["Must be of type string (got number)."],
        "arguments.x": ["Unknown field."],
    }


def test_validate_arguments_accepts_valid_arguments():
    validate_arguments(SCHEMA, {"city": "Paris", "days": 3, "tags": []})


def test_arguments_must_be_an_object():
    with pytest.raises(InvalidInput) as caught:
        validate_arguments(SCHEMA, ["Paris", 3])
    assert caught.value.errors == {"arguments": ["Must be a JSON object (got array)."]}


# --- patterns run on RE2 -----------------------------------------------------------------------
# `(a+)+$` backtracks exponentially in Python's `re`; on 100k characters it would never finish.
LONG = "a" * 100_000 + "!"


def test_argument_patterns_run_in_linear_time():
    parameters = {
        "type": "object",
        "properties": {"q": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(a+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    clean_tool(name="get_items", kind="http", config=http(), parameters=parameters)
    with pytest.raises(InvalidInput) as caught:
        validate_arguments(parameters, {"q": LONG, LONG: 1})
    errors = caught.value.errors or {}
    assert set(errors) == {"arguments.q", f"arguments.{LONG}"}
    assert errors[f"arguments.{LONG}"] == ["Unknown field."]
    validate_arguments(parameters, {"q": "aaa", "aaaa": 4})


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "object", "properties": {"q": {"type": "string", "pattern": r"(a)\1"}}},
        {"type": "object", "properties": {}, "patternProperties": {"^(?!x)": {}}},
        {
            "type": "object",
            "properties": {},
            "patternProperties": {"^x": {}},
            "unevaluatedProperties": False,
        },
    ],
)
def test_parameter_patterns_re2_cannot_run_are_refused(parameters: dict[str, Any]):
    errors = refusal(config=http(), parameters=parameters)
    assert [key for key in errors if key.startswith("parameters")], errors
    assert "Not a valid JSON Schema" in str(errors)
