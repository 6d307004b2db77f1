"""Regular expressions written by users, on a linear-time engine (RE2).

Python's `re` backtracks: `(a+)+$` against a few dozen characters runs for seconds and doubles
with every character, holding the GIL. Every pattern a user supplies (blocked-pattern policies,
`pattern`/`patternProperties` in tool parameter, workflow input and response-format schemas) is
compiled here instead: RE2 matches in time linear in the input and refuses what it cannot do
that way (backreferences, lookaround). Patterns we write ourselves may stay on `re`."""

from __future__ import annotations

import re
from typing import Any

import re2
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError

_SURROGATE = re.compile("[\ud800-\udfff]")


def _options(*, ignore_case: bool) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the user's error, not a log line
    options.case_sensitive = not ignore_case
    return options


def regex_error(pattern: str) -> str | None:
    """Why RE2 cannot compile `pattern` (None when it can)."""
    try:
        compile_user_regex(pattern)
    except ValueError as exc:
        return str(exc)
    return None


def compile_user_regex(pattern: str, *, ignore_case: bool = False) -> re2._Regexp:
    """The compiled pattern; ValueError (with RE2's reason) when RE2 cannot compile it.
    Compiled patterns are cached by the library (LRU, 128 entries)."""
    try:
        return re2.compile(pattern, _options(ignore_case=ignore_case))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired surrogate character") from None


def safe_text(text: str) -> str:
    """`text` with unpaired surrogates (valid in JSON, not in UTF-8) replaced by U+FFFD, so RE2
    can read it; one character for one, so match offsets still point into `text`."""
    return _SURROGATE.sub("\ufffd", text)


def finditer(pattern: re2._Regexp, text: str) -> Any:
    return pattern.finditer(safe_text(text))


def search(pattern: str, text: str) -> bool:
    return compile_user_regex(pattern).search(safe_text(text)) is not None


# --- JSON Schema with RE2 ----------------------------------------------------------------------
# jsonschema runs `pattern`, `patternProperties` and `additionalProperties` (which skips keys
# matching a patternProperties pattern) through `re`; these keywords do the same through RE2.


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, pattern_properties: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in pattern_properties.items():
        for key, value in instance.items():
            if search(patrn, key):
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key
        for key in instance
        if key not in properties and not any(search(p, key) for p in patterns)
    ]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        listed = ", ".join(repr(each) for each in sorted(extras))
        verb = "was" if len(extras) == 1 else "were"
        yield ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


def _is_re2_regex(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    error = regex_error(instance)
    if error is not None:
        raise ValueError(f"{instance!r} is not a supported regular expression: {error}")
    return True


FORMAT_CHECKER = FormatChecker()  # an instance has its own copy of the checkers
FORMAT_CHECKER.checks("regex", raises=ValueError)(_is_re2_regex)

UserSchemaValidator = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
UserSchemaValidator.FORMAT_CHECKER = FORMAT_CHECKER


def _uses_unevaluated_with_patterns(schema: Any) -> bool:
    """jsonschema finds the keys `unevaluatedProperties` applies to by matching
    patternProperties with `re`, so no user schema may combine the two."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.update({"unevaluatedProperties", "patternProperties"} & node.keys())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return len(found) == 2


def check_user_schema(schema: Any) -> None:
    """`Draft202012Validator.check_schema` with every regex (`pattern`, `patternProperties`
    keys) checked by RE2, so a schema that saved is a schema whose patterns run.
    Raises jsonschema's SchemaError."""
    Draft202012Validator.check_schema(schema, format_checker=FORMAT_CHECKER)
    if _uses_unevaluated_with_patterns(schema):
        raise SchemaError(
            "`unevaluatedProperties` cannot be combined with `patternProperties` "
            "(use `additionalProperties`)."
        )
