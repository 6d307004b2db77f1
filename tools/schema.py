"""Validation of tool definitions (name, parameters, per-kind config) and of call arguments.

The API, the admin and the executors all go through here, so a tool that saved is a tool that
runs. Errors are field-level and keyed by dotted paths (`parameters.properties.x.type`,
`config.auth.type`, `arguments.items.0`), every violation listed, not only the first."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from sparkops import templating
from sparkops.errors import InvalidInput
from sparkops.regex import FORMAT_CHECKER, UserSchemaValidator, check_user_schema
from sparkops.regex import search as regex_search

from .executors.builtin import BUILTINS
from .models import Tool

NAME_RE = re.compile(Tool.NAME_RE)
SECRET_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"  # projects.models.Secret.NAME_RE
HEADER_NAME_RE = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$"  # an RFC 9110 token
MAX_JSON_SIZE = 64 * 1024  # characters of JSON in `parameters` and in `config`
MAX_RETRIES = 5
MAX_TIMEOUT_SECONDS = 300
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
TEMPLATE_ROOTS = frozenset({"args", "secrets"})
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

Errors = dict[str, list[str]]


# --- error paths -----------------------------------------------------------------------------


def _join(prefix: str, path: Iterable[Any]) -> str:
    return ".".join([prefix, *(str(part) for part in path)]) if prefix else ".".join(map(str, path))


def schema_errors(validator: Draft202012Validator, instance: Any, prefix: str) -> Errors:
    """Every violation of `validator`'s schema by `instance`, keyed by the dotted path of the
    offending value. Missing and unknown properties are keyed by the property itself."""
    errors: Errors = {}
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        base = _join(prefix, error.absolute_path)
        if error.validator == "required":
            for name in _missing(error):
                errors.setdefault(_join(base, [name]), []).append("This field is required.")
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            patterns = list(error.schema.get("patternProperties", {}))
            extra = [
                key
                for key in error.instance
                if key not in allowed and not any(regex_search(p, key) for p in patterns)
            ]
            if extra and error.schema.get("additionalProperties") is False:
                for name in extra:
                    messages = errors.setdefault(_join(base, [name]), [])
                    if "Unknown field." not in messages:
                        messages.append("Unknown field.")
                continue
        messages = errors.setdefault(base or prefix, [])
        if _message(error) not in messages:
            messages.append(_message(error))
    return errors


def _missing(error: ValidationError) -> list[str]:
    required = error.validator_value if isinstance(error.validator_value, list) else []
    present = error.instance if isinstance(error.instance, dict) else {}
    return [name for name in required if name not in present] or [str(error.message)]


def _message(error: ValidationError) -> str:
    if error.validator == "enum":
        choices = ", ".join(json.dumps(choice) for choice in error.validator_value)
        return f"Must be one of: {choices}."
    if error.validator == "type":
        expected = error.validator_value
        if isinstance(expected, list):
            expected = " or ".join(expected)
        return f"Must be of type {expected} (got {_json_type(error.instance)})."
    return str(error.message)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _too_big(value: Any) -> bool:
    try:
        return len(json.dumps(value)) > MAX_JSON_SIZE
    except (TypeError, ValueError):
        return True


# --- call arguments --------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _arguments_validator(schema_json: str) -> Draft202012Validator:
    return UserSchemaValidator(json.loads(schema_json), format_checker=FORMAT_CHECKER)


def validate_arguments(schema: dict[str, Any], arguments: Any) -> None:
    """Raise InvalidInput("Invalid tool arguments.", errors={"arguments.<path>": [...]})
    listing every way `arguments` violates the tool's parameter `schema`."""
    if not isinstance(arguments, dict):
        raise InvalidInput(
            "Invalid tool arguments.",
            errors={"arguments": [f"Must be a JSON object (got {_json_type(arguments)})."]},
        )
    validator = _arguments_validator(json.dumps(schema or EMPTY_PARAMETERS, sort_keys=True))
    errors = schema_errors(validator, arguments, "arguments")
    if errors:
        raise InvalidInput("Invalid tool arguments.", errors=errors)


# --- parameters ------------------------------------------------------------------------------


def parameters_errors(parameters: Any) -> Errors:
    """A valid JSON Schema (draft 2020-12 meta-schema) in the OpenAI function-calling shape:
    an object schema with a `properties` object."""
    if not isinstance(parameters, dict):
        return {"parameters": ["Must be a JSON object (a JSON Schema)."]}
    if _too_big(parameters):
        return {"parameters": [f"Must be at most {MAX_JSON_SIZE} characters of JSON."]}
    errors: Errors = {}
    try:
        check_user_schema(parameters)
    except SchemaError as exc:
        path = _join("parameters", exc.path)
        errors.setdefault(path, []).append(f"Not a valid JSON Schema: {exc.message}")
    if parameters.get("type") != "object":
        errors.setdefault("parameters.type", []).append(
            'Function parameters must be an object schema ("type": "object").'
        )
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        errors.setdefault("parameters.properties", []).append(
            "Function parameters need a `properties` object (it may be empty)."
        )
    required = parameters.get("required")
    if isinstance(required, list) and isinstance(properties, dict):
        unknown = [name for name in required if isinstance(name, str) and name not in properties]
        if unknown:
            errors.setdefault("parameters.required", []).append(
                f"Not in properties: {', '.join(unknown)}."
            )
    return errors


# --- config ----------------------------------------------------------------------------------

_SECRET_NAME = {"type": "string", "pattern": SECRET_NAME_RE, "description": "A project secret."}

AUTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["none", "bearer", "api_key", "basic"]},
        "secret": _SECRET_NAME,
        "header": {"type": "string", "pattern": HEADER_NAME_RE},
        "username": {"type": "string", "maxLength": 200},
        "username_secret": _SECRET_NAME,
        "password_secret": _SECRET_NAME,
    },
    "additionalProperties": False,
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "none"}}},
            "then": {"properties": {"type": True}, "additionalProperties": False},
        },
        {
            "if": {"properties": {"type": {"const": "bearer"}}},
            "then": {
                "required": ["secret"],
                "properties": {"type": True, "secret": True},
                "additionalProperties": False,
            },
        },
        {
            "if": {"properties": {"type": {"const": "api_key"}}},
            "then": {
                "required": ["secret"],
                "properties": {"type": True, "secret": True, "header": True},
                "additionalProperties": False,
            },
        },
        {
            "if": {"properties": {"type": {"const": "basic"}}},
            "then": {
                "required": ["password_secret"],
                "properties": {
                    "type": True,
                    "username": True,
                    "username_secret": True,
                    "password_secret": True,
                },
                "additionalProperties": False,
            },
        },
    ],
}

_QUERY_VALUE = {"type": ["string", "number", "boolean", "null"]}

HTTP_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["method", "url"],
    "properties": {
        "method": {"enum": list(HTTP_METHODS)},
        "url": {"type": "string", "minLength": 1, "maxLength": 2048},
        "headers": {
            "type": "object",
            "propertyNames": {"pattern": HEADER_NAME_RE},
            "additionalProperties": {"type": "string", "maxLength": 8192},
        },
        "query": {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 200},
            "additionalProperties": {
                "anyOf": [_QUERY_VALUE, {"type": "array", "items": _QUERY_VALUE}]
            },
        },
        "body": {"description": "A JSON template; `{{ args }}` sends the arguments as they are."},
        "body_file": {
            "type": "string",
            "minLength": 1,
            "description": (
                "A template giving a file of the project (`{{ args.file }}`), sent as the whole "
                "body with its content type (unless `headers` set one)."
            ),
        },
        "multipart": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"minLength": 1, "maxLength": 200},
            "additionalProperties": {"type": "string"},
            "description": (
                "A multipart/form-data body: part name -> template. A value that gives a file "
                "reference is a file part (its name and content type), anything else a field."
            ),
        },
        "save_response_as_file": {
            "type": "boolean",
            "description": (
                "Store the response body as a file of the project (at most "
                "SPARKOPS_FILE_MAX_BYTES, secrets redacted); the output is its reference."
            ),
        },
        "response_file_name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1000,
            "description": (
                "Template of the saved file's name (default: the response's "
                "Content-Disposition filename, else `response`)."
            ),
        },
        "auth": AUTH_SCHEMA,
        "timeout_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_TIMEOUT_SECONDS,
        },
        "retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
        "retry_backoff_seconds": {"type": "number", "minimum": 0, "maximum": 10},
    },
    "additionalProperties": False,
}


def builtin_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["function"],
        "properties": {
            "function": {"enum": sorted(BUILTINS)},
            "template": {"description": "template only: a fixed template over `args`."},
        },
        "additionalProperties": False,
    }


_http_validator = Draft202012Validator(HTTP_CONFIG_SCHEMA)


def _templates_of(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(error key, template value) for every templated part of an HTTP config."""
    found: list[tuple[str, Any]] = []
    if isinstance(config.get("url"), str):
        found.append(("config.url", config["url"]))
    for section in ("headers", "query"):
        values = config.get(section)
        if isinstance(values, dict):
            found.extend((f"config.{section}.{key}", value) for key, value in values.items())
    for key in ("body", "body_file", "response_file_name"):
        if key in config:
            found.append((f"config.{key}", config[key]))
    parts = config.get("multipart")
    if isinstance(parts, dict):
        found.extend((f"config.multipart.{key}", value) for key, value in parts.items())
    return found


def _template_errors(value: Any, roots: frozenset[str]) -> list[str]:
    try:
        for text in _strings(value):
            templating.check_syntax(text)
        unknown = templating.referenced_roots(value) - roots
    except templating.TemplateError as exc:
        return [exc.detail]
    if unknown:
        allowed = " and ".join(f"`{root}`" for root in sorted(roots))
        return [f"Unknown name(s) {', '.join(sorted(unknown))}: templates see only {allowed}."]
    return []


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


_URL_START = re.compile(r"^(?P<origin>https?://[^/?#]*)", re.IGNORECASE)
_MARKERS = ("{{", "{%", "{#")


def static_origin(url_template: str) -> str | None:
    """`scheme://host[:port]` of a URL template when that part holds no template markup,
    else None (the host then comes from the arguments)."""
    match = _URL_START.match(url_template)
    if match is None or any(marker in match.group("origin") for marker in _MARKERS):
        return None
    return match.group("origin").lower()


def _url_problem(url: str) -> str | None:
    if url.lstrip().startswith(_MARKERS):
        return None  # wholly templated: checked when rendered (egress checks every request)
    match = _URL_START.match(url)
    if match is None:
        return "Must be an http:// or https:// URL (or a template)."
    if not match.group("origin").split("://", 1)[1]:
        return "The URL has no host."
    return None


def _http_errors(config: dict[str, Any]) -> Errors:
    errors = schema_errors(_http_validator, config, "config")
    url = config.get("url")
    if isinstance(url, str) and "config.url" not in errors:
        problem = _url_problem(url)
        if problem:
            errors["config.url"] = [problem]
    auth = config.get("auth")
    if isinstance(auth, dict) and "username" in auth and "username_secret" in auth:
        errors.setdefault("config.auth.username", []).append(
            "Give username or username_secret, not both."
        )
    method = config.get("method")
    bodies = [key for key in ("body", "body_file", "multipart") if key in config]
    for key in bodies:
        if method in ("GET", "HEAD"):
            errors.setdefault(f"config.{key}", []).append(f"A {method} request has no body.")
        elif len(bodies) > 1:
            others = " or ".join(b for b in bodies if b != key)
            errors.setdefault(f"config.{key}", []).append(f"Give one body: not with {others}.")
    if "response_file_name" in config and not config.get("save_response_as_file"):
        errors.setdefault("config.response_file_name", []).append(
            "Only a tool that saves its response as a file names it."
        )
    for key, value in _templates_of(config):
        problems = _template_errors(value, TEMPLATE_ROOTS)
        if problems:
            errors.setdefault(key, []).extend(problems)
    # Credentials must not go to a host that the caller (an LLM, a workflow input) picks.
    auth_type = auth.get("type", "none") if isinstance(auth, dict) else "none"
    uses_secrets = auth_type != "none" or any(
        "secrets" in text for _, value in _templates_of(config) for text in _strings(value)
    )
    if (
        isinstance(url, str)
        and uses_secrets
        and "config.url" not in errors
        and static_origin(url) is None
    ):
        errors["config.url"] = [
            "The scheme and host must be literal (not a template) when the tool sends secrets."
        ]
    return errors


def _builtin_errors(config: dict[str, Any]) -> Errors:
    errors = schema_errors(Draft202012Validator(builtin_config_schema()), config, "config")
    if "template" in config and config.get("function") != "template":
        errors["config.template"] = ["Only the template function takes a template."]
    elif "template" in config:
        problems = _template_errors(config["template"], frozenset({"args"}))
        if problems:
            errors["config.template"] = problems
    return errors


def normalize_config(kind: str, config: Any) -> Any:
    method = config.get("method") if isinstance(config, dict) else None
    if kind == Tool.Kind.HTTP and isinstance(method, str):
        return {**config, "method": config["method"].upper()}
    return config


def config_errors(kind: str, config: Any) -> Errors:
    if not isinstance(config, dict):
        return {"config": ["Must be a JSON object."]}
    if _too_big(config):
        return {"config": [f"Must be at most {MAX_JSON_SIZE} characters of JSON."]}
    if kind == Tool.Kind.HTTP:
        return _http_errors(config)
    if kind == Tool.Kind.BUILTIN:
        return _builtin_errors(config)
    return {}


# --- the whole tool --------------------------------------------------------------------------


def default_parameters(kind: str, config: Any) -> dict[str, Any]:
    """What an empty `parameters` becomes: the built-in function's own schema, or an object
    schema with no properties."""
    if kind == Tool.Kind.BUILTIN and isinstance(config, dict):
        builtin = BUILTINS.get(config.get("function"))  # type: ignore[arg-type]
        if builtin is not None and "template" not in config:
            return json.loads(json.dumps(builtin.parameters))
    return dict(EMPTY_PARAMETERS, properties={})


def clean_tool(
    *,
    name: Any,
    description: Any = "",
    parameters: Any = None,
    kind: Any,
    config: Any = None,
    status: Any = Tool.Status.ACTIVE,
) -> dict[str, Any]:
    """The tool's fields, normalized (an empty `parameters` gets its default, the HTTP method
    is upper-cased), or InvalidInput listing every problem by field."""
    errors: Errors = {}
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        errors["name"] = [
            "Must be a function name: a letter or _, then up to 63 letters, digits, _ or -."
        ]
    if not isinstance(description, str):
        errors["description"] = ["Must be a string."]
    if status not in Tool.Status.values:
        errors["status"] = [f"Must be one of: {', '.join(Tool.Status.values)}."]
    if kind not in Tool.Kind.values:
        errors["kind"] = [f"Must be one of: {', '.join(Tool.Kind.values)}."]
    config = normalize_config(kind, {} if config is None else config)
    if "kind" not in errors:
        errors.update(config_errors(kind, config))
    if parameters is None or parameters == {}:
        parameters = default_parameters(kind, config)
    errors.update(parameters_errors(parameters))
    if errors:
        raise InvalidInput("Invalid tool.", errors=errors)
    return {
        "name": name,
        "description": description,
        "parameters": parameters,
        "kind": kind,
        "config": config,
        "status": status,
    }
