"""The pure parts: each kind's rule schema, the PII detectors (Luhn, mod-97), blocked patterns,
time windows and budget periods."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from policies import rules
from policies.budgets import TOTAL_PERIOD_START, period_bounds

VALID = {
    "allowed_models": {"models": ["openai/gpt-4o-mini*", "simulated/*"]},
    "max_tokens_per_call": {"max_tokens": 512, "action": "deny", "max_input_tokens": 4000},
    "max_cost_per_run": {"max_cost_usd": "0.50"},
    "tool_allowlist": {"tools": ["calculator", "http-*"]},
    "tool_denylist": {"tools": ["shell"]},
    "tool_requires_approval": {"tools": ["send-*"]},
    "blocked_patterns": {
        "patterns": [r"\bproject x\b"],
        "action": "redact",
        "apply_to": ["output"],
    },
    "pii": {"detect": ["email", "iban"], "action": "redact"},
    "max_concurrent_runs": {"max_runs": 3},
    "allowed_hours": {
        "timezone": "Europe/Paris",
        "windows": [{"days": ["mon", "tue"], "start": "09:00", "end": "18:00"}],
    },
}

INVALID = {
    "allowed_models": ({"models": []}, "rule.models"),
    "max_tokens_per_call": ({"max_tokens": 0}, "rule.max_tokens"),
    "max_cost_per_run": ({"max_cost_usd": "-1"}, "rule.max_cost_usd"),
    "tool_allowlist": ({"tools": "calculator"}, "rule.tools"),
    "tool_denylist": ({}, "rule"),
    "tool_requires_approval": ({"tools": ["x"], "extra": 1}, "rule"),
    "blocked_patterns": ({"patterns": ["(unclosed"]}, "rule.patterns.0"),
    "pii": ({"detect": ["ssn"]}, "rule.detect.0"),
    "max_concurrent_runs": ({"max_runs": "3"}, "rule.max_runs"),
    "allowed_hours": ({"windows": [{"start": "25:00", "end": "10:00"}]}, "rule.windows.0.start"),
}


def test_every_kind_has_a_schema_and_a_case():
    assert set(rules.RULE_SCHEMAS) == set(VALID) == set(INVALID)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_valid_rule_passes(kind):
    assert rules.rule_errors(kind, VALID[kind]) == {}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_an_invalid_rule_is_a_field_error(kind):
    rule, key = INVALID[kind]
    errors = rules.rule_errors(kind, rule)
    assert key in errors, errors


def test_unknown_timezone_is_refused():
    errors = rules.rule_errors(
        "allowed_hours", {"timezone": "Mars/Olympus", "windows": [{"start": "1:00", "end": "x"}]}
    )
    assert "rule.windows.0.start" in errors
    errors = rules.rule_errors(
        "allowed_hours",
        {"timezone": "Mars/Olympus", "windows": [{"start": "01:00", "end": "02:00"}]},
    )
    assert errors == {"rule.timezone": ["Unknown timezone 'Mars/Olympus'."]}


def redact(text, kinds=None):
    return rules.replace_spans(text, rules.find_pii(text, kinds), rules.pii_placeholder)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe+x@example.co.uk now", "mail [REDACTED_EMAIL] now"),
        ("card 4111 1111 1111 1111 ok", "card [REDACTED_CARD] ok"),
        ("card 4111-1111-1111-1111.", "card [REDACTED_CARD]."),
        ("card 5500005555555559", "card [REDACTED_CARD]"),
        # fails the Luhn check: not a card (and not a phone number either)
        ("ref 4111 1111 1111 1112", "ref 4111 1111 1111 1112"),
        ("IBAN DE89 3704 0044 0532 0130 00 here", "IBAN [REDACTED_IBAN] here"),
        ("pay GB82WEST12345698765432.", "pay [REDACTED_IBAN]."),
        # fails mod-97 (one digit changed)
        ("pay GB82WEST12345698765433.", "pay GB82WEST12345698765433."),
        ("call +44 20 7946 0958 today", "call [REDACTED_PHONE] today"),
        ("or (555) 123-4567 or 555.123.4567", "or [REDACTED_PHONE] or [REDACTED_PHONE]"),
        ("+1-202-555-0147", "[REDACTED_PHONE]"),
        # dates, times, versions and short numbers are not personal data
        ("on 2024-01-15 10:30:00, v1.2.3, 42 and 3.14159", None),
        ("order 1234567890123", None),
    ],
)
def test_pii_detection(text, expected):
    assert redact(text) == (expected if expected is not None else text)


def test_pii_kinds_can_be_chosen():
    text = "a@b.io, 4111111111111111"
    assert redact(text, ["email"]) == "[REDACTED_EMAIL], 4111111111111111"
    assert redact(text, ["card"]) == "a@b.io, [REDACTED_CARD]"


def test_luhn_and_iban_checks():
    assert rules.luhn_ok("4111111111111111")
    assert not rules.luhn_ok("4111111111111112")
    assert rules.iban_ok("DE89 3704 0044 0532 0130 00")
    assert rules.iban_ok("FR1420041010050500013M02606")
    assert not rules.iban_ok("DE88 3704 0044 0532 0130 00")


def test_blocked_patterns_ignore_case_by_default():
    patterns = rules.compile_patterns({"patterns": [r"project\s+x"]})
    text = "About PROJECT  X and project x."
    matches = rules.find_patterns(text, patterns)
    assert len(matches) == 2
    assert rules.replace_spans(text, matches, "[BLOCKED]") == "About [BLOCKED] and [BLOCKED]."
    strict = rules.compile_patterns({"patterns": [r"project x"], "ignore_case": False})
    assert len(rules.find_patterns(text, strict)) == 1


PARIS = ZoneInfo("Europe/Paris")


def at(text):
    return datetime.fromisoformat(text)


def test_time_windows():
    rule = {
        "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}]
    }
    # 2025-01-06 is a Monday; 08:30 UTC is 09:30 in Paris (UTC+1 in winter)
    assert rules.within_windows(rule, at("2025-01-06T08:30:00+00:00"), PARIS)
    assert not rules.within_windows(rule, at("2025-01-06T07:30:00+00:00"), PARIS)
    assert not rules.within_windows(rule, at("2025-01-06T17:00:00+00:00"), PARIS)  # 18:00 local
    assert not rules.within_windows(rule, at("2025-01-04T10:00:00+00:00"), PARIS)  # Saturday
    # the rule's own timezone wins over the project's
    assert rules.within_windows({**rule, "timezone": "UTC"}, at("2025-01-06T17:30:00+00:00"), PARIS)


def test_overnight_window_belongs_to_the_day_it_starts():
    rule = {"windows": [{"days": ["fri"], "start": "22:00", "end": "06:00"}]}
    utc = ZoneInfo("UTC")
    # 2025-01-10 is a Friday
    assert rules.within_windows(rule, at("2025-01-10T23:00:00+00:00"), utc)
    assert rules.within_windows(rule, at("2025-01-11T05:59:00+00:00"), utc)  # Saturday morning
    assert not rules.within_windows(rule, at("2025-01-11T23:00:00+00:00"), utc)  # Saturday night
    assert not rules.within_windows(rule, at("2025-01-10T05:00:00+00:00"), utc)  # Friday morning


def test_daily_period_follows_the_project_timezone():
    # 23:30 UTC on Jan 6 is already Jan 7 in Paris
    start, end = period_bounds("daily", PARIS, at("2025-01-06T23:30:00+00:00"))
    assert start == datetime(2025, 1, 6, 23, 0, tzinfo=UTC)
    assert end == datetime(2025, 1, 7, 23, 0, tzinfo=UTC)
    start_utc, _ = period_bounds("daily", ZoneInfo("UTC"), at("2025-01-06T23:30:00+00:00"))
    assert start_utc == datetime(2025, 1, 6, tzinfo=UTC)


def test_daily_period_across_a_dst_change_is_23_hours():
    start, end = period_bounds("daily", PARIS, at("2025-03-30T12:00:00+00:00"))
    assert (end - start).total_seconds() == 23 * 3600


def test_monthly_and_total_periods():
    start, end = period_bounds("monthly", PARIS, at("2025-12-31T23:30:00+00:00"))  # Jan 1 local
    assert start == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    assert end == datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
    start, end = period_bounds("monthly", PARIS, at("2025-02-15T12:00:00+00:00"))
    assert (start, end) == (
        datetime(2025, 1, 31, 23, 0, tzinfo=UTC),
        datetime(2025, 2, 28, 23, 0, tzinfo=UTC),
    )
    assert period_bounds("total", PARIS, at("2031-05-05T00:00:00+00:00")) == (
        TOTAL_PERIOD_START,
        None,
    )
