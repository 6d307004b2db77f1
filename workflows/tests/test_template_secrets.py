"""Secrets in templates are whole values: interpolation renders them, nothing transforms them
(filters, slices, methods, operators, `~`, calls, loops, buffered blocks), and the error names
the secret, never its value."""

from __future__ import annotations

from typing import Any

import pytest

from sparkops.secret_values import TemplateSecrets
from sparkops.templating import TemplateSecurityError, evaluate_condition, render_value

VALUE = 'Pa ss"wörd/+42'


def context() -> dict[str, Any]:
    return {
        "secrets": TemplateSecrets({"API_KEY": VALUE, "OTHER": "x-other-9"}),
        "input": {"q": "cats"},
    }


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ secrets.API_KEY }}", VALUE),
        ("{{ secrets['API_KEY'] }}", VALUE),
        ("Bearer {{ secrets.API_KEY }}", f"Bearer {VALUE}"),
        ("{{ input.q }}:{{ secrets.API_KEY }}", f"cats:{VALUE}"),
        ("{{ [secrets.API_KEY, 1] }}", [VALUE, 1]),
        ("{{ {'k': secrets.API_KEY} }}", {"k": VALUE}),
        ("{{ secrets.get('API_KEY') }}", VALUE),
        ("{% if secrets.API_KEY %}yes{% endif %}", "yes"),
        ("{{ input.q|upper }}", "CATS"),  # other values keep their filters
    ],
)
def test_plain_interpolation_renders_the_whole_value(template, expected):
    assert render_value(template, context()) == expected


@pytest.mark.parametrize(
    "template",
    [
        "{{ secrets.API_KEY|upper }}",
        "{{ secrets.API_KEY|lower }}",
        "{{ secrets.API_KEY|reverse }}",
        "{{ secrets.API_KEY|list }}",
        "{{ secrets.API_KEY|string }}",
        "{{ secrets.API_KEY|urlencode }}",
        "{{ secrets.API_KEY|tojson }}",
        "{{ secrets.API_KEY|replace('a', 'b') }}",
        "{{ [secrets.API_KEY]|join }}",
        "{{ [secrets.API_KEY]|map('upper')|list }}",
        "{{ {'k': secrets.API_KEY}|tojson }}",
        "{{ '%s'|format(secrets.API_KEY) }}",
        "{{ secrets.API_KEY[0] }}",
        "{{ secrets.API_KEY[1:] }}",
        "{{ secrets.API_KEY[::-1] }}",
        "{{ secrets.API_KEY.upper() }}",
        "{{ secrets.API_KEY.name }}",
        "{{ secrets.API_KEY ~ 'x' }}",
        "{{ 'x' ~ secrets.API_KEY }}",
        "{{ secrets.API_KEY + 'x' }}",
        "{{ secrets.API_KEY * 2 }}",
        "{{ '%s' % secrets.API_KEY }}",
        "{{ '%s' % (secrets.API_KEY,) }}",
        "{{ '{}'.format(secrets.API_KEY) }}",
        "{{ ''.join([secrets.API_KEY]) }}",
        "{{ dict(k=secrets.API_KEY) }}",
        "{% for c in secrets.API_KEY %}{{ c }}{% endfor %}",
        # a buffered block or macro turns it into a plain string: still refused
        "{% set s %}{{ secrets.API_KEY }}{% endset %}{{ s|upper }}",
        "{% set s %}{{ secrets.API_KEY }}{% endset %}{{ s[2:] }}",
        "{% set s %}{{ secrets.API_KEY }}{% endset %}{{ s.lower() }}",
        "{% set s %}{{ secrets.API_KEY }}{% endset %}{{ s ~ '' }}",
        "{% set s %}{{ secrets.API_KEY }}{% endset %}{% for c in s %}{{ c }}{% endfor %}",
        "{% macro m() %}{{ secrets.API_KEY }}{% endmacro %}{{ m()|reverse }}",
        "{% filter upper %}{{ secrets.API_KEY }}{% endfilter %}",
        "{{ [secrets]|map(attribute='API_KEY')|join|upper }}",
        "{{ [secrets.get('API_KEY')]|map('upper')|list }}",
    ],
)
def test_a_secret_cannot_be_transformed(template):
    with pytest.raises(TemplateSecurityError) as caught:
        render_value({"field": template}, context())
    message = str(caught.value.detail)
    assert "API_KEY" in message
    assert VALUE not in message
    assert VALUE.upper() not in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ secrets|tojson }}",
        "{{ secrets|dictsort }}",
        "{{ secrets }}",
    ],
)
def test_the_secrets_mapping_cannot_be_dumped(template):
    with pytest.raises(TemplateSecurityError, match="secrets"):
        render_value(template, context())


def test_comparing_a_secret_reveals_nothing():
    assert evaluate_condition(f"secrets.API_KEY == {VALUE!r}", context()) is False
    with pytest.raises(TemplateSecurityError, match="API_KEY"):
        evaluate_condition("secrets.API_KEY|length > 3", context())
