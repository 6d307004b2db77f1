"""The template sandbox: native values, errors, escapes, and the size/time/loop caps."""

from __future__ import annotations

import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sparkops.errors import InvalidInput
from sparkops.templating import (
    MAX_TOTAL_SIZE,
    TemplateError,
    TemplateSecurityError,
    check_condition,
    check_syntax,
    evaluate_condition,
    has_dynamic_step_access,
    referenced_roots,
    referenced_steps,
    render_value,
)

CONTEXT: dict[str, Any] = {
    "input": {"topic": "cats", "n": 3, "tags": ["a", "b"], "flag": True, "nothing": None},
    "steps": {
        "research": {"output": {"text": "Cats purr.", "confidence": 0.8}, "status": "succeeded"},
        "items": {"output": [1, 2, 3], "status": "succeeded"},
    },
    "run": {"id": "r-1", "workflow": "w-1"},
    "secrets": {"API_KEY": "s3cret"},
    "x": "",
}


def render(value: Any, **kwargs: Any) -> Any:
    return render_value(value, CONTEXT, **kwargs)


# --- native values and strings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ steps.research.output }}", {"text": "Cats purr.", "confidence": 0.8}),
        ("{{ input.tags }}", ["a", "b"]),
        ("{{ input.n }}", 3),
        ("{{ input.n / 2 }}", 1.5),
        ("{{ input.flag }}", True),
        ("{{ input.nothing }}", None),
        ("{{ input.topic }}", "cats"),
        ("  {{ input.n + 1 }}\n", 4),
        ("{{ (1, 2) }}", [1, 2]),
        ("{{ input.tags|map('upper') }}", ["A", "B"]),
        ("{{ {'a': input.n, 1: 'one'} }}", {"a": 3, "1": "one"}),
        ("{{ dict(k=input.n) }}", {"k": 3}),
    ],
)
def test_a_whole_expression_keeps_its_json_type(template: str, expected: Any) -> None:
    result = render(template)
    assert result == expected
    assert type(result) is type(expected)


def test_native_values_are_copies_not_the_context_objects() -> None:
    result = render("{{ steps.research.output }}")
    result["text"] = "changed"
    assert CONTEXT["steps"]["research"]["output"]["text"] == "Cats purr."


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Research {{ input.topic }}", "Research cats"),
        ("{{ input.n }}{{ input.n }}", "33"),
        ("{{ input.n }} and {{ input.flag }}", "3 and True"),
        ("Line\n{{ input.topic }}\n", "Line\ncats\n"),
        ("{% for t in input.tags %}- {{ t }}\n{% endfor %}", "- a\n- b\n"),
        ("{{ input.tags|tojson }} <&>", '["a", "b"] <&>'),
        ("{{ '%s=%d'|format('n', input.n) }}", "n=3"),
        ("{{ '{}-{}'.format(input.topic, input.n) }}", "cats-3"),
        ("{{ input.tags|join(', ') }}", "a, b"),
        ("total: {{ steps.items.output|sum }}", "total: 6"),
    ],
)
def test_other_templates_render_to_strings(template: str, expected: str) -> None:
    assert render(template) == expected


def test_plain_values_pass_through_unchanged() -> None:
    value = {"a": "plain text", "b": 5, "c": None, "d": [True, 1.5], "{{ key }}": "x"}
    assert render(value) == value


def test_nested_structures_are_rendered_recursively_but_keys_are_not() -> None:
    value = {
        "prompt": "About {{ input.topic }}",
        "args": {"tags": "{{ input.tags }}", "list": ["{{ input.n }}", "n={{ input.n }}", 7]},
        "{{ input.topic }}": "{{ run.id }}",
    }
    assert render(value) == {
        "prompt": "About cats",
        "args": {"tags": ["a", "b"], "list": [3, "n=3", 7]},
        "{{ input.topic }}": "r-1",
    }


def test_keys_of_data_win_over_dict_methods() -> None:
    # A step called "items" is reachable as steps.items, not shadowed by dict.items.
    assert render("{{ steps.items.output }}") == [1, 2, 3]


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", ["{{ missing }}", "{{ input.nope }}", "Hi {{ steps.ghost.output }}"]
)
def test_undefined_values_are_errors(template: str) -> None:
    with pytest.raises(TemplateError) as exc_info:
        render(template)
    assert type(exc_info.value) is TemplateError
    assert "undefined" in exc_info.value.detail.lower() or "no attribute" in exc_info.value.detail


def test_template_errors_are_400_validation_errors_with_their_own_type() -> None:
    with pytest.raises(TemplateError) as exc_info:
        render("{{ missing }}")
    assert isinstance(exc_info.value, InvalidInput)
    assert exc_info.value.status_code == 400
    assert exc_info.value.error_type == "template_error"
    assert TemplateSecurityError("x").error_type == "template_security_error"


def test_syntax_error_at_render_time() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        render("ok\n{{ input.topic ")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ 1e308 * 10 }}", "not a valid JSON number"),
        ("{{ input.topic.upper }}", "not JSON"),
        ("{{ 'a' + 1 }}", "TypeError"),
    ],
)
def test_runtime_errors_become_template_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(template)


# --- the sandbox -------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ x.__class__.__base__.__subclasses__() }}",
    "{{ input['__class__'] }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    # str.format / format_map reach attributes through the format string (CVE-2016-10745,
    # CVE-2019-10906, CVE-2024-56326).
    '{{ "{0.__class__}".format(x) }}',
    '{{ ("a" ~ "{0.__globals__}").format(cycler.__init__) }}',
    '{{ "{0.__class__.__base__.__subclasses__}".format(x) }}',
    '{{ "{x.__class__.__base__.__subclasses__}".format_map({"x": ""}) }}',
    "{{ ('{0.__class__}'|attr('format'))(x) }}",
    "{{ ('{x.__class__}'|attr('format_map'))({'x': x}) }}",
    "{{ x.format.__globals__ }}",
    # |attr (CVE-2025-27516)
    "{{ x|attr('__class__') }}",
    "{{ x|attr('__globals__') }}",
    "{{ (x|attr('__class__'))|attr('__mro__') }}",
    "{{ cycler|attr('__init__')|attr('__globals__') }}",
    # methods outside the allowlist
    "{{ x.ljust(10) }}",
    "{{ input.tags.append(1) }}",
    "{{ input.update({}) }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escape_payloads_are_refused(template: str) -> None:
    with pytest.raises(TemplateSecurityError):
        render(template)


@pytest.mark.parametrize("template", ESCAPES[:8])
def test_sandbox_escapes_are_also_refused_inside_text(template: str) -> None:
    with pytest.raises(TemplateSecurityError):
        render(f"prefix {template} suffix")


@pytest.mark.parametrize("name", ["cycler", "lipsum", "joiner", "namespace"])
def test_risky_globals_are_removed(name: str) -> None:
    with pytest.raises(TemplateError, match="undefined"):
        render(f"{{{{ {name}() }}}}")


@pytest.mark.parametrize(
    "template", ["{% include 'x' %}", "{% import 'x' as y %}", "{% extends 'base' %}"]
)
def test_template_composition_is_refused(template: str) -> None:
    with pytest.raises(TemplateSecurityError):
        render(template)


@pytest.mark.parametrize("name", ["center", "wordwrap", "batch", "slice", "pprint", "random"])
def test_risky_filters_are_removed(name: str) -> None:
    with pytest.raises(TemplateError, match="No filter named"):
        render(f"{{{{ x|{name} }}}}")


def test_data_keys_starting_with_an_underscore_are_still_readable() -> None:
    data = {"d": {"_private": 1, "_x": 2, "__odd__": 3}}
    assert render_value("{{ d._private }} {{ d['_x'] }} {{ d.__odd__ }}", data) == "1 2 3"
    with pytest.raises(TemplateError, match="no attribute '_missing'"):
        render_value("{{ d._missing }}", data)


# --- size, loop and time caps -------------------------------------------------------------

OVERSIZED = [
    "{{ 'a' * 10**9 }}",
    "{{ 10**9 * 'a' }}",
    "{{ ['a'] * 10**9 }}",
    "{{ 2 ** 100000 }}",
    "{{ (2 ** 4000) * (2 ** 4000) }}",
    "{{ range(10**9)|list }}",
    "{{ range(10**9) }}",
    "{{ '%0100000000d' % 1 }}",
    "{{ '%*d' % (100000000, 1) }}",
    "{{ '%.100000000f' % 1.5 }}",
    "{{ '%0100000000d'|format(1) }}",
    "{{ '{:>100000000}'.format(1) }}",
    "{{ '{:>{w}}'.format(1, w=100000000) }}",
    "{{ '{0!r}'.format([big, big]) }}",
    "{{ big ~ big }}",
    "{{ big + big }}",
    "{{ [big] * 2 }}",
    "x{{ [big, big] }}",
    "{{ [big, big]|join }}",
    "{{ [big, big]|tojson }}",
    "{{ [big, big]|string }}",
    "{{ [big, big]|lower }}",
    "{{ '%s%s' % (big, big) }}",
    "{{ ''.join([big, big]) }}",
    "{{ 'ab'.replace('', big) }}",
    "{{ 'ab'|replace('', big) }}",
    "{{ big|indent(1000000) }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{% set c %}{% for i in range(10000) %}{{ big }}{% endfor %}{% endset %}{{ c|length }}",
    "{% for i in range(10000) %}{% for j in range(9) %}{{ '%0999d' % 0 }}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("template", OVERSIZED)
def test_oversized_work_is_refused_quickly_before_it_is_built(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateSecurityError):
        render_value(template, {**CONTEXT, "big": "x" * 600_000})
    assert time.monotonic() - started < 1.5


def test_rendered_string_is_capped() -> None:
    loop = "{% for i in range(100) %}0123456789{% endfor %}"
    assert len(render(loop, max_size=1000)) == 1000
    with pytest.raises(TemplateSecurityError, match="larger than the limit of 999"):
        render(loop, max_size=999)


def test_sum_adds_numbers_only() -> None:
    with pytest.raises(TemplateError, match="only adds numbers"):
        render("{{ [[1], [2]]|sum(start=[]) }}")


def test_a_slow_render_is_stopped_at_the_time_limit() -> None:
    template = (
        "{% for i in range(5000) %}{% for j in range(10) %}{{ i * j }}{% endfor %}{% endfor %}"
    )
    assert len(render(template)) > 0
    started = time.monotonic()
    with pytest.raises(TemplateSecurityError, match="longer than the limit"):
        render(template, timeout=0.001)
    assert time.monotonic() - started < 1


def test_the_time_limit_works_in_worker_threads() -> None:
    template = (
        "{% for i in range(5000) %}{% for j in range(10) %}{{ i * j }}{% endfor %}{% endfor %}"
    )

    def slow() -> str:
        try:
            render(template, timeout=0.001)
        except TemplateSecurityError as exc:
            return exc.detail
        return "rendered"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: slow(), range(4)))
    assert all("longer than the limit" in result for result in results)
    # The budget is per render: the main thread is unaffected.
    assert render("{{ input.n }}") == 3


# --- conditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("{{ steps.research.output.confidence > 0.5 }}", True),
        ("steps.research.output.confidence > 0.9", False),
        ("  {{ input.n == 3 and input.flag }}  ", True),
        ("input.tags", True),
        ("input.nothing", False),
        ("'b' in input.tags", True),
        ("x == '}}'", False),
    ],
)
def test_evaluate_condition(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr, CONTEXT) is expected


@pytest.mark.parametrize(
    "expr", ["{{ a }} and {{ b }}", "x > 1 }}", "{% if x %}1{% endif %}", "x >", ""]
)
def test_a_condition_must_be_one_expression(expr: str) -> None:
    with pytest.raises(TemplateError):
        evaluate_condition(expr, CONTEXT)
    with pytest.raises(TemplateError):
        check_condition(expr)


def test_a_condition_on_an_undefined_value_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"undefined|no attribute"):
        evaluate_condition("steps.ghost.output", CONTEXT)


def test_a_condition_is_sandboxed() -> None:
    with pytest.raises(TemplateSecurityError):
        evaluate_condition("x.__class__", CONTEXT)


# --- static checks -----------------------------------------------------------------------


def test_check_syntax_accepts_valid_templates() -> None:
    check_syntax("Hello {{ input.topic|upper }} {% if input.n %}{{ input.n }}{% endif %}")
    check_syntax("no template at all")


@pytest.mark.parametrize(
    ("template", "line"),
    [
        ("{{ input.topic ", 1),
        ("first\nsecond {% if x %}", 2),
        ("a\nb\n{{ x|no_such_filter }}", 3),
        ("{{ x is no_such_test }}", 1),
        ("{% for %}", 1),
    ],
)
def test_check_syntax_reports_the_line(template: str, line: int) -> None:
    with pytest.raises(TemplateError) as exc_info:
        check_syntax(template)
    assert exc_info.value.lineno == line
    assert f"line {line}" in exc_info.value.detail


def test_check_syntax_flags_python_internals_before_anything_runs() -> None:
    with pytest.raises(TemplateSecurityError, match="__globals__"):
        check_syntax("ok\n{{ cycler.__init__.__globals__ }}")


def test_referenced_steps_reads_the_syntax_tree() -> None:
    value = {
        "a": "{{ steps.research.output.text }} and {{ steps['fetch-page'].status }}",
        "b": ["{% for i in steps.items.output %}{{ i }}{% endfor %}", 3, None],
        "c": "{{ 'steps.not_a_ref' }} {{ other.steps.nor_this }}",
        "d": "plain steps.nope text",
    }
    assert referenced_steps(value) == {"research", "fetch-page", "items"}


def test_referenced_steps_of_a_bare_condition() -> None:
    assert referenced_steps("steps.a.output > steps.b.output", condition=True) == {"a", "b"}


def test_dynamic_step_access_is_detected() -> None:
    assert not has_dynamic_step_access("{{ steps.a.output }} {{ steps['b'] }}")
    assert has_dynamic_step_access("{{ steps[input.which] }}")
    assert has_dynamic_step_access("{{ steps|list }}")
    assert has_dynamic_step_access("{% for s in steps %}{{ s }}{% endfor %}")


def test_referenced_roots_ignores_locals_and_globals() -> None:
    value = [
        "{{ input.topic }} {{ secrets.API_KEY }}",
        "{% for t in steps.a.output %}{{ t }}{{ loop.index }}{% endfor %}",
        "{% set n = 2 %}{{ n }} {{ range(3)|list }} {{ dict(a=1) }} {{ run.id }}",
        "{{ typo.x }}",
    ]
    assert referenced_roots(value) == {"input", "secrets", "steps", "run", "typo"}


# --- one size budget for everything one render_value() call returns ------------------------


def rendered_with_peak(value: Any) -> tuple[Any, int]:
    """render_value's result (or the TemplateError it raised) and the peak of the memory
    Python allocated while it ran."""
    tracemalloc.start()
    try:
        try:
            result: Any = render_value(value, CONTEXT)
        except TemplateError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_three_hundred_big_values_stop_at_the_total_and_memory_stays_bounded() -> None:
    # 9 KB of template: each value alone is under the 1M per-value cap; together they held
    # 300 MB before one budget covered the whole call.
    transform = {f"k{i}": "{{ 'a' * (10**6) }}" for i in range(300)}
    error, peak = rendered_with_peak(transform)
    assert isinstance(error, TemplateSecurityError)
    assert f"limit of {MAX_TOTAL_SIZE} characters in total" in error.detail
    assert peak < 2 * MAX_TOTAL_SIZE, peak  # bytes; 300 values would be 300 MB


def test_text_templates_share_the_total_too() -> None:
    transform = {f"k{i}": "x{{ 'a' * 900000 }}" for i in range(300)}
    error, peak = rendered_with_peak(transform)
    assert isinstance(error, TemplateSecurityError)
    assert f"limit of {MAX_TOTAL_SIZE} characters in total" in error.detail
    assert peak < 2 * MAX_TOTAL_SIZE, peak


def test_values_within_the_total_render() -> None:
    value = {"a": "{{ 'a' * 900000 }}", "b": ["x{{ 'b' * 900000 }}"], "c": "plain"}
    rendered = render_value(value, CONTEXT)
    assert len(rendered["a"]) == 900_000 and len(rendered["b"][0]) == 900_001
    assert rendered["c"] == "plain"


def test_a_value_bigger_than_what_is_left_is_refused_before_it_is_built() -> None:
    value = {"a": "{{ 'a' * 900000 }}", "b": "{{ 'b' * 900000 }}", "c": "{{ 'c' * 300000 }}"}
    with pytest.raises(TemplateSecurityError, match="characters left of the limit of"):
        render_value(value, CONTEXT)
    assert render_value(value, CONTEXT, max_total=3_000_000)["c"] == "c" * 300_000
