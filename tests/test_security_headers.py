"""Security headers (README, "Security headers"): Strict-Transport-Security on HTTPS answers
when configured, and a Content-Security-Policy on every page family: the admin, the operator
console, the browsable API, Swagger UI and ReDoc, with the strictest policy on JSON and other
answers that are not pages. tests/browser/test_csp.py shows the pages still work under it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from accounts.tests.factories import UserFactory
from conftest import client_for
from runs.tests.factories import finished_run
from sparkops.console.palette import STATUS_COLORS
from tests.console_data import recorded_run, rich_workflow

PAGE = {
    "default-src": "'self'",
    "script-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
NOT_A_PAGE = {"default-src": "'none'", "frame-ancestors": "'none'"}


def policy_of(response: Any) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


def assert_page_policy(response: Any, *, inline_styles: bool = False) -> dict[str, str]:
    assert response["Content-Type"].startswith("text/html"), response["Content-Type"]
    policy = policy_of(response)
    assert {k: policy.get(k) for k in PAGE} == PAGE, policy
    style = policy["style-src"].split()
    assert style[0] == "'self'"
    assert ("'unsafe-inline'" in style) == inline_styles, policy
    return policy


# Inline code the policy would refuse: <style> elements, style="" attributes, inline <script>
# (a <script> with src, or of type application/json, is fine) and on*="" handlers.
INLINE = re.compile(
    r"<style[\s>]|\sstyle=\"|<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>"
    r"|\son[a-z]+=\""
)


def assert_no_inline_code(response: Any) -> None:
    html = response.content.decode()
    found = [html[max(m.start() - 80, 0) : m.end() + 80] for m in INLINE.finditer(html)]
    assert not found, found


# --- HSTS -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_hsts_on_https_answers_only(client, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    expected = "max-age=31536000; includeSubDomains; preload"
    assert client.get("/ready", secure=True)["Strict-Transport-Security"] == expected
    # Behind the TLS-terminating proxy (SECURE_PROXY_SSL_HEADER).
    behind = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    assert behind["Strict-Transport-Security"] == expected
    assert "Strict-Transport-Security" not in client.get("/ready")
    assert "Strict-Transport-Security" not in client.get("/ready", HTTP_X_FORWARDED_PROTO="http")


@pytest.mark.django_db
def test_no_hsts_until_it_is_configured(settings):
    # A new Client each time: SecurityMiddleware reads its settings when it is built.
    settings.SECURE_HSTS_SECONDS = 0
    assert "Strict-Transport-Security" not in Client().get("/ready", secure=True)
    settings.SECURE_HSTS_SECONDS = 600
    assert Client().get("/ready", secure=True)["Strict-Transport-Security"] == "max-age=600"


def settings_from_env(**env: str) -> dict[str, Any]:
    names = ["SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD"]
    code = (
        "import json, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'sparkops.settings'\n"
        "from django.conf import settings\n"
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_HSTS")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(django_settings.BASE_DIR),
        env={**clean, "SECRET_KEY": "x", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def test_hsts_settings_come_from_the_environment():
    assert settings_from_env() == {
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
    }
    assert settings_from_env(
        SECURE_HSTS_SECONDS="63072000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
        SECURE_HSTS_PRELOAD="true",
    ) == {
        "SECURE_HSTS_SECONDS": 63072000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
    }


# --- Content-Security-Policy ------------------------------------------------------------------


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.django_db
def test_admin_login_page_has_the_policy(client):
    response = client.get("/admin/login/")
    assert_page_policy(response)
    assert_no_inline_code(response)


def test_console_pages_have_the_policy_and_no_inline_code(cast, operator, settings):
    settings.SPARKOPS_CONSOLE_INSPECT_TIMEOUT = 0.1  # the dashboard asks Celery, none here
    workflow = rich_workflow(cast.project, cast.owner)
    run = recorded_run(workflow, cast.owner, [("research", [(0, 0.2, 1.0, "succeeded")])])
    failed = finished_run(cast, "failed")
    definition = {**workflow.definition, "nodes": workflow.definition["nodes"][:-1]}
    from workflows import services as workflow_services

    workflow_services.workflow_update(workflow=workflow, actor=cast.owner, definition=definition)
    for path in (
        "/admin/",
        "/admin/runs/run/",
        f"/admin/runs/run/{run.pk}/change/",
        f"/admin/runs/run/{failed.pk}/change/",
        "/admin/runs/runstep/",
        "/admin/workflows/workflow/",
        f"/admin/workflows/workflow/{workflow.pk}/change/",
        f"/admin/workflows/workflow/{workflow.pk}/graph/",
        f"/admin/workflows/workflow/{workflow.pk}/diff/?from=1&to=2",
        f"/admin/workflows/workflow/{workflow.pk}/run/",
        "/admin/policies/policy/add/",
        "/admin/policies/budget/",
        "/admin/projects/project/",
    ):
        response = operator.get(path)
        assert response.status_code == 200, path
        assert_page_policy(response)
        assert_no_inline_code(response)
    live = operator.get(f"/admin/runs/run/{run.pk}/live/?seq=0")
    assert live.status_code == 200 and policy_of(live) == NOT_A_PAGE  # JSON with HTML inside
    assert 'style="' not in live.json()["html"]


def test_the_badge_colours_in_the_stylesheet_are_the_palettes():
    css = (Path(django_settings.BASE_DIR) / "static/console/console.css").read_text()
    for status, color in STATUS_COLORS.items():
        assert f".console-badge.status-{status}{{background:{color}}}" in css, status


@pytest.mark.django_db
def test_swagger_ui_page_and_its_script_are_files_from_this_origin(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    policy = assert_page_policy(page)
    assert "nonce" not in policy["style-src"]  # asked for only where it is used (ReDoc)
    assert_no_inline_code(page)
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn" not in html and "https://" not in html
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()
    assert policy_of(script) == NOT_A_PAGE


@pytest.mark.django_db
def test_redoc_page_hands_its_nonce_to_redoc(client):
    page = client.get("/api/redoc/")
    assert page.status_code == 200
    policy = assert_page_policy(page)
    html = page.content.decode()
    nonce = re.search(r'<script src="/static/docs/redoc.js" nonce="([^"]+)">', html).group(1)
    assert f"'nonce-{nonce}'" in policy["style-src"].split()
    assert policy["worker-src"] == "'self' blob:"
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in html
    assert "https://" not in html  # no web fonts, no CDN
    assert_no_inline_code(page)
    again = client.get("/api/redoc/").content.decode()
    assert f'nonce="{nonce}"' not in again  # a fresh nonce per response


def test_json_answers_get_the_strictest_policy(cast, client, metrics_token):
    api = client_for(cast.owner)
    for response in (
        api.get("/api/v1/projects/"),
        api.get("/api/v1/nope/"),
        client.get("/api/schema/"),
        client.get("/ready"),
        client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}"),
        client.get("/metrics"),
    ):
        assert policy_of(response) == NOT_A_PAGE, response


def test_browsable_api_allows_inline_styles_never_inline_script(cast):
    client = Client()
    client.force_login(cast.owner)
    response = client.get("/api/v1/projects/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    policy = assert_page_policy(response, inline_styles=True)
    assert policy["script-src"] == "'self'"


def test_the_admin_cannot_be_framed(client, db):
    response = client.get("/admin/login/")
    assert response["X-Frame-Options"] == "DENY"
    assert policy_of(response)["frame-ancestors"] == "'none'"
