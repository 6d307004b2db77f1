"""NUL characters in JSON: PostgreSQL's jsonb (and text) cannot store U+0000.

JSON allows `"\\u0000"`, Python keeps it, and the write fails on PostgreSQL (a 500, or a step
write that crashes). What a user sends is refused with a 400 naming the field (the JSON parser,
`run_create` for input from webhooks and schedules); what a tool, a model or a template
produced is stored with the NULs removed."""

from __future__ import annotations

from typing import Any

NUL = "\x00"
MESSAGE = "Null characters (\\u0000) are not allowed."


def nul_path(value: Any, prefix: str = "") -> str | None:
    """The dotted path of the first key or string holding a NUL (`prefix` itself for the top
    value), or None."""
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and NUL in key:
                    return child_path.replace(NUL, "\\u0000")
                stack.append((child_path, child))
        elif isinstance(item, list | tuple):
            stack.extend(
                (f"{path}.{index}" if path else str(index), child)
                for index, child in enumerate(item)
            )
    return None


def strip_nul(value: Any) -> Any:
    """`value` with every NUL removed from its strings and keys (the same object when it holds
    none, so the common case copies nothing)."""
    if nul_path(value) is None:
        return value
    return _strip(value)


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, "")
    if isinstance(value, dict):
        return {_strip(key): _strip(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strip(item) for item in value]
    return value
