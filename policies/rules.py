"""What each policy kind's `rule` looks like (one JSON Schema per kind, plus the checks a schema
cannot express: regexes compile, timezones exist), and the pure matchers the enforcement uses:
model and tool patterns, time windows, blocked patterns and PII detection. No database here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jsonschema import Draft202012Validator

from sparkops.regex import compile_user_regex, regex_error
from sparkops.regex import finditer as regex_finditer

CONTENT_TARGETS = ["prompt", "output", "tool_arguments", "tool_output"]
PII_KINDS = ["email", "phone", "card", "iban"]
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

_patterns = {
    "type": "array",
    "minItems": 1,
    "maxItems": 200,
    "items": {"type": "string", "minLength": 1, "maxLength": 500},
}
_apply_to = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"enum": CONTENT_TARGETS},
    "description": "What the rule scans: prompts (and tool results fed back to the model), "
    "model outputs, tool-call arguments, tool outputs. Default: all four.",
}

RULE_SCHEMAS: dict[str, dict[str, Any]] = {
    "allowed_models": {
        "type": "object",
        "additionalProperties": False,
        "required": ["models"],
        "properties": {
            "models": {
                **_patterns,
                "description": "`provider/model` shell patterns, e.g. `openai/gpt-4o-mini*`, "
                "`simulated/*`. A call whose provider/model matches none is denied.",
            }
        },
    },
    "max_tokens_per_call": {
        "type": "object",
        "additionalProperties": False,
        "required": ["max_tokens"],
        "properties": {
            "max_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Most output tokens one call may ask for.",
            },
            "action": {
                "enum": ["clamp", "deny"],
                "default": "clamp",
                "description": "clamp: lower the call's max_tokens to the limit; deny: refuse "
                "a call asking for more (or for no limit).",
            },
            "max_input_tokens": {
                "type": "integer",
                "minimum": 1,
                "description": "Optional: refuse a call whose prompt is estimated (4 characters "
                "per token) above this.",
            },
        },
    },
    "max_cost_per_run": {
        "type": "object",
        "additionalProperties": False,
        "required": ["max_cost_usd"],
        "properties": {
            "max_cost_usd": {
                "type": ["number", "string"],
                "description": "USD; once a run has spent this much, its next paid call is "
                "refused.",
            }
        },
    },
    "tool_allowlist": {
        "type": "object",
        "additionalProperties": False,
        "required": ["tools"],
        "properties": {"tools": {**_patterns, "description": "Tool name patterns allowed."}},
    },
    "tool_denylist": {
        "type": "object",
        "additionalProperties": False,
        "required": ["tools"],
        "properties": {"tools": {**_patterns, "description": "Tool name patterns refused."}},
    },
    "tool_requires_approval": {
        "type": "object",
        "additionalProperties": False,
        "required": ["tools"],
        "properties": {
            "tools": {**_patterns, "description": "Tool name patterns that need an approval."}
        },
    },
    "blocked_patterns": {
        "type": "object",
        "additionalProperties": False,
        "required": ["patterns"],
        "properties": {
            "patterns": {
                **_patterns,
                "description": "Regular expressions in RE2 syntax (linear-time matching; no "
                "backreferences or lookaround).",
            },
            "action": {"enum": ["deny", "redact"], "default": "deny"},
            "replacement": {"type": "string", "maxLength": 100, "default": "[BLOCKED]"},
            "ignore_case": {"type": "boolean", "default": True},
            "apply_to": _apply_to,
        },
    },
    "pii": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "detect": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"enum": PII_KINDS},
                "description": "Default: all of email, phone, card (Luhn-checked), iban "
                "(mod-97-checked).",
            },
            "action": {"enum": ["redact", "deny"], "default": "redact"},
            "apply_to": _apply_to,
        },
    },
    "max_concurrent_runs": {
        "type": "object",
        "additionalProperties": False,
        "required": ["max_runs"],
        "properties": {
            "max_runs": {
                "type": "integer",
                "minimum": 1,
                "description": "Most active (pending, queued, running, waiting) runs of the "
                "project; a run start beyond it is refused.",
            }
        },
    },
    "allowed_hours": {
        "type": "object",
        "additionalProperties": False,
        "required": ["windows"],
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA name; default: the project's `settings.timezone`, else UTC.",
            },
            "windows": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["start", "end"],
                    "properties": {
                        "days": {
                            "type": "array",
                            "uniqueItems": True,
                            "items": {"enum": DAYS},
                            "description": "Default: every day. A window ending before it "
                            "starts runs past midnight (its day is the day it starts).",
                        },
                        "start": {"type": "string", "pattern": HHMM},
                        "end": {"type": "string", "pattern": HHMM},
                    },
                },
            },
        },
    },
}
_validators = {kind: Draft202012Validator(schema) for kind, schema in RULE_SCHEMAS.items()}


def rule_errors(kind: str, rule: Any) -> dict[str, list[str]]:
    """Problems with `rule` for `kind`, keyed `rule` or `rule.<path>` (empty when valid)."""
    validator = _validators.get(kind)
    if validator is None:
        return {"kind": [f"Must be one of: {', '.join(RULE_SCHEMAS)}."]}
    errors: dict[str, list[str]] = {}

    def add(path: str, message: str) -> None:
        errors.setdefault(f"rule.{path}" if path else "rule", []).append(message)

    for error in sorted(validator.iter_errors(rule), key=lambda e: list(e.absolute_path)):
        add(".".join(str(p) for p in error.absolute_path), error.message)
    if errors or not isinstance(rule, dict):
        return errors
    if kind == "blocked_patterns":
        for index, pattern in enumerate(rule["patterns"]):
            reason = regex_error(pattern)
            if reason is not None:
                add(
                    f"patterns.{index}",
                    f"Not a valid regular expression ({pattern!r}): {reason}. Patterns run "
                    "on RE2 (linear time): no backreferences or lookaround.",
                )
    if kind == "max_cost_per_run":
        value = decimal_or_none(rule["max_cost_usd"])
        if value is None or value <= 0:
            add("max_cost_usd", "Must be a positive number of USD.")
    if kind == "allowed_hours" and "timezone" in rule and zone_or_none(rule["timezone"]) is None:
        add("timezone", f"Unknown timezone '{rule['timezone']}'.")
    return errors


def decimal_or_none(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def zone_or_none(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


# --- matching --------------------------------------------------------------------------------


def matches_any(value: str, patterns: list[str]) -> str | None:
    """The first shell pattern `value` matches, or None."""
    return next((p for p in patterns if fnmatchcase(value, p)), None)


def within_windows(rule: dict[str, Any], at: datetime, default_zone: ZoneInfo) -> bool:
    zone = zone_or_none(rule.get("timezone")) or default_zone
    local = at.astimezone(zone)
    now = local.time()
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    for window in rule["windows"]:
        days = window.get("days") or DAYS
        start = time.fromisoformat(window["start"])
        end = time.fromisoformat(window["end"])
        if start <= end:
            if today in days and start <= now < end:
                return True
        else:  # past midnight: the evening part belongs to today, the morning to yesterday
            if (today in days and now >= start) or (yesterday in days and now < end):
                return True
    return False


# --- content: blocked patterns and PII ------------------------------------------------------


@dataclass(frozen=True)
class Match:
    kind: str  # "pattern" or a PII kind
    start: int
    end: int


EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# 13 to 19 digits, optionally grouped by spaces or dashes; the Luhn check decides.
CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Country code, check digits, then 11 to 30 letters/digits, optionally in groups of four.
IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
# International (+CC ...) numbers, or the North-American 3-3-4 shape; 8 to 15 digits.
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
    r"|\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4})(?![\w])"
)
PII_LABELS = {"email": "EMAIL", "phone": "PHONE", "card": "CARD", "iban": "IBAN"}


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        n = int(char)
        if index % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers (A=10...),
    the number mod 97 must be 1."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def find_pii(text: str, kinds: list[str] | None = None) -> list[Match]:
    """Non-overlapping PII spans, in text order. IBANs and cards are found first (each must
    pass its checksum), so a card number is never also reported as a phone number."""
    kinds = kinds or PII_KINDS
    found: list[Match] = []

    def free(start: int, end: int) -> bool:
        return all(end <= m.start or start >= m.end for m in found)

    if "email" in kinds:
        found += [Match("email", m.start(), m.end()) for m in EMAIL_RE.finditer(text)]
    if "iban" in kinds:
        for m in IBAN_RE.finditer(text):
            if iban_ok(m.group()) and free(m.start(), m.end()):
                found.append(Match("iban", m.start(), m.end()))
    if "card" in kinds:
        for m in CARD_RE.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if luhn_ok(digits) and free(m.start(), m.end()):
                found.append(Match("card", m.start(), m.end()))
    if "phone" in kinds:
        for m in PHONE_RE.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 8 <= len(digits) <= 15 and free(m.start(), m.end()):
                found.append(Match("phone", m.start(), m.end()))
    return sorted(found, key=lambda m: m.start)


def compile_patterns(rule: dict[str, Any]) -> list[Any]:
    """User patterns on RE2, so matching is linear in the text whatever the pattern."""
    ignore_case = rule.get("ignore_case", True)
    return [compile_user_regex(p, ignore_case=ignore_case) for p in rule["patterns"]]


def find_patterns(text: str, patterns: list[Any]) -> list[Match]:
    found: list[Match] = []
    for pattern in patterns:
        for m in regex_finditer(pattern, text):
            if m.end() > m.start() and all(m.end() <= f.start or m.start() >= f.end for f in found):
                found.append(Match("pattern", m.start(), m.end()))
    return sorted(found, key=lambda m: m.start)


def replace_spans(text: str, matches: list[Match], replacement: Any) -> str:
    """`text` with each match replaced by `replacement(match)` (or a fixed string)."""
    pieces = []
    last = 0
    for m in matches:
        pieces.append(text[last : m.start])
        pieces.append(replacement(m) if callable(replacement) else replacement)
        last = m.end
    pieces.append(text[last:])
    return "".join(pieces)


def pii_placeholder(match: Match) -> str:
    return f"[REDACTED_{PII_LABELS.get(match.kind, match.kind.upper())}]"


def count_kinds(matches: list[Match]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in matches:
        counts[m.kind] = counts.get(m.kind, 0) + 1
    return counts


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1
