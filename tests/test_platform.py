from __future__ import annotations

import io

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_health_reports_database_and_broker(client):
    response = client.get("/health")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "broker": "ok"}
    assert body["version"]


def test_health_is_503_when_the_broker_is_unreachable(client, settings):
    from sparkops.celery import app

    # A port nothing listens on: the check must fail fast and say which dependency failed.
    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/health/")
    finally:
        app.conf.broker_url = original
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error")


def test_ready(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_unknown_api_route_is_json_404(client):
    response = client.get("/api/v1/nope/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"type": "not_found", "detail": "Not found."}


def test_api_root_lists_every_resource_and_each_answers(client, cast):
    response = client.get("/api/v1/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    root = response.json()
    expected = {"agents", "tools", "workflows", "runs", "projects", "schedules", "budgets"}
    expected |= {"policies", "webhook-endpoints", "webhook-triggers", "auth/api-keys"}
    assert expected <= set(root), sorted(root)
    owner = cast.client("owner")
    for name, url in root.items():
        assert url.startswith("http://testserver/api/v1/"), (name, url)
        answer = owner.get(url)
        assert answer.status_code == 200, (name, url, answer.content[:200])


def test_api_root_is_browsable(client):
    response = client.get("/api/v1/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"/api/v1/workflows" in response.content


@pytest.mark.parametrize("debug", [False, True])
def test_api_errors_are_json_whatever_debug(client, cast, settings, debug):
    settings.DEBUG = debug
    for path in ("/api/v1/nope/", "/api/v1/runs/1/nope", "/api/nope"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response["Content-Type"].startswith("application/json"), path
        assert response.json() == {"type": "not_found", "detail": "Not found."}
    for who, method, path in [
        (cast.client("owner"), "delete", "/api/v1/workflows/"),
        (client, "put", "/api/v1/hooks/whk_unknown"),
        (client, "post", "/api/docs/"),
        (client, "delete", "/api/v1/"),
    ]:
        response = getattr(who, method)(path)
        assert response.status_code == 405, (method, path, response.content[:200])
        assert response["Content-Type"].startswith("application/json"), (method, path)
        assert response.json()["detail"] == f'Method "{method.upper()}" not allowed.'
        assert method.upper() not in response["Allow"]


def test_malformed_json_is_400_json(cast):
    response = cast.client("owner").generic(
        "POST", "/api/v1/projects/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["type"] == "parse_error"


def test_schema_generates_without_warnings():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    assert "/api/v1/projects/" in out.getvalue()
    assert "ApiKeyAuth" in out.getvalue()
    assert "jwtAuth" in out.getvalue()


def test_docs_pages_render(client):
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/api/redoc/").status_code == 200


def test_cors_allows_the_frontend_origin(client):
    response = client.options(
        "/api/v1/projects/",
        HTTP_ORIGIN="http://localhost:8080",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert response["access-control-allow-origin"] == "http://localhost:8080"
    response = client.options(
        "/api/v1/projects/",
        HTTP_ORIGIN="http://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert "access-control-allow-origin" not in response


def test_admin_login_uses_email(client):
    from accounts.tests.factories import PASSWORD, UserFactory

    UserFactory(email="op@example.com", is_staff=True, is_superuser=True)
    page = client.get("/admin/login/")
    assert b"Email address" in page.content
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "OP@example.com", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    for url in (
        "/admin/",
        "/admin/accounts/user/",
        "/admin/accounts/apikey/",
        "/admin/projects/project/",
        "/admin/projects/membership/",
    ):
        assert client.get(url).status_code == 200, url


def test_createsuperuser_non_interactive(monkeypatch):
    from accounts.models import User

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-pass-phrase")
    call_command(
        "createsuperuser",
        "--noinput",
        "--email",
        "Root@Example.com",
        "--name",
        "Root",
        stdout=io.StringIO(),
    )
    user = User.objects.get(email="root@example.com")
    assert user.is_superuser and user.check_password("s3cret-pass-phrase")


def test_make_superuser_is_the_readme_s_way_to_an_admin_account():
    """README: "`make superuser` asks for an email and a password" (createsuperuser itself is
    tested above); `make -n` shows the recipe without running it."""
    import subprocess
    from pathlib import Path

    from django.conf import settings

    assert "`make superuser`" in (Path(settings.BASE_DIR) / "README.md").read_text()
    # Under `make test` MAKEFLAGS is inherited: without --no-print-directory a nested make
    # prints "Entering/Leaving directory" lines around the recipe.
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "superuser"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    recipe = [line for line in dry.stdout.splitlines() if "manage.py" in line]
    assert recipe[-1].endswith("manage.py createsuperuser"), dry.stdout
