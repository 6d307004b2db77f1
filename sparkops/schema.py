"""OpenAPI post-processing: the error answers every operation can give, documented once.

Views document their own success and domain errors (409, 422, ...). The errors the framework
gives on any route are added here, so the schema says what a client (or a fuzzer) can actually
receive: 400 for a bad parameter or body, 401/403 where the operation authenticates, 404 where
the path names an object (or a page past the last), 409 on writes, 429 when throttled. All
carry the one JSON error shape."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every API error: a stable `type`, a human `detail`, per-field `errors`.",
    "properties": {
        "type": {"type": "string", "example": "validation_error"},
        "detail": {"description": "A message (rarely a structure)."},
        "errors": {
            "type": "object",
            "description": "Messages per field, for validation errors.",
            "additionalProperties": True,
        },
    },
    "required": ["type", "detail"],
}

METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document_errors(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            parameters = operation.get("parameters", [])
            wanted = {429: "Too many requests (throttled); `Retry-After` says when to retry."}
            if parameters or "requestBody" in operation:
                wanted[400] = "Invalid parameters or body; `errors` names the fields."
            if operation.get("security"):
                wanted[401] = "Missing, invalid or expired credentials."
                wanted[403] = "Your role in the project does not allow this."
            names = {p.get("name") for p in parameters if p.get("in") == "query"}
            if "{" in path or names & {"page", "cursor"}:
                wanted[404] = "Not found or not visible to you; a page past the last; a bad cursor."
            if method in {"post", "put", "patch", "delete"}:
                wanted[409] = "Conflicts with the current state (a taken name, a finished run)."
            responses = operation.setdefault("responses", {})
            for status, description in wanted.items():
                responses.setdefault(str(status), _error(description))
            for parameter in parameters:
                # Filters treat an empty value (`?kind=`) as "not filtered", as HTML forms send.
                if parameter.get("in") == "query":
                    parameter.setdefault("allowEmptyValue", True)
    return result
