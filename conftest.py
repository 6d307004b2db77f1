"""The shared cast: one project with an owner, an admin, a developer and a viewer, and an
outsider who owns a project of their own. Permission tests then read like sentences."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken


@pytest.fixture(autouse=True)
def _fast_and_isolated(settings: Any) -> None:
    # Argon2 is the production hasher (one test asserts it); tests hash thousands of times.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Throttle counters live in the cache (Redis in CI): a fresh key space per test keeps
    # tests independent without flushing a shared Redis.
    caches = {name: dict(conf) for name, conf in settings.CACHES.items()}
    caches["default"]["KEY_PREFIX"] = f"t-{uuid.uuid4().hex[:12]}"
    settings.CACHES = caches
    # Workflow versions are cached per process by primary key (they are immutable and, in a
    # real database, ids are never reused); a test's rolled-back rows are, so start clean.
    # (Models and what imports them load here: pytest reads this file before Django is set up.)
    from runs.services.state import _snapshot

    _snapshot.cache_clear()


def files_on_disk(settings: Any, folder: Any) -> Any:
    """The files storage on the local filesystem under `folder` (returned)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "files": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(folder)},
        },
    }
    return folder


@pytest.fixture(autouse=True)
def _files_in_tmp(settings: Any, tmp_path_factory: Any) -> None:
    """Files that tests store (uploads, runs' outputs) go to a temporary folder, not .var/."""
    files_on_disk(settings, tmp_path_factory.getbasetemp() / "files")


@pytest.fixture
def local_files(settings: Any, tmp_path: Any) -> Any:
    """The files storage in this test's own folder (returned), to see what it holds."""
    return files_on_disk(settings, tmp_path)


@pytest.fixture
def metrics_token(settings: Any) -> str:
    """/metrics is closed without a token (or an allow-listed address): tests that scrape it
    set one; `runs.tests.test_observability.scrape` sends whatever the settings hold."""
    settings.SPARKOPS_METRICS_TOKEN = token = f"scrape-{uuid.uuid4().hex}"
    return token


def client_for(user: Any = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
    return client


@dataclass
class Cast:
    project: Any
    owner: Any
    admin: Any
    developer: Any
    viewer: Any
    outsider: Any
    other_project: Any

    def client(self, who: str) -> APIClient:
        return client_for(getattr(self, who))


@pytest.fixture
def cast(db: Any) -> Cast:
    # Models load only once pytest-django has set Django up, after this file is read.
    from accounts.tests.factories import UserFactory
    from projects.models import Role
    from projects.tests.factories import MembershipFactory, ProjectFactory

    owner = UserFactory(email="owner@example.com")
    project = ProjectFactory(name="Acme", slug="acme", owner=owner)
    members = {}
    for role in (Role.ADMIN, Role.DEVELOPER, Role.VIEWER):
        user = UserFactory(email=f"{role}@example.com")
        MembershipFactory(project=project, user=user, role=role)
        members[role] = user
    outsider = UserFactory(email="outsider@example.com")
    other = ProjectFactory(name="Other", slug="other", owner=outsider)
    return Cast(
        project=project,
        owner=owner,
        admin=members[Role.ADMIN],
        developer=members[Role.DEVELOPER],
        viewer=members[Role.VIEWER],
        outsider=outsider,
        other_project=other,
    )


@pytest.fixture
def api() -> APIClient:
    return APIClient()


# --- run engine ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_engine_worker(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """One real Celery worker for the whole session (threads pool, both engine queues)."""
    # It imports the run models, which load only once Django is set up (after this file).
    from sparkops.testing.engine import celery_worker

    with django_db_blocker.unblock(), celery_worker() as worker:
        yield worker


@pytest.fixture(autouse=True)
def _worker_settled(request: Any) -> Iterator[None]:
    """A test with committed data (transaction=True, `engine`, a live server) is flushed with a
    TRUNCATE afterwards. When the session's in-process worker is up (an earlier test started it),
    it may still be working on this test's runs, steps or deliveries, and its transaction and
    the TRUNCATE deadlock (the next test then starts on the leftover rows). Before the flush: let
    what it is executing finish and drop what is still queued. Terminating other backends is no
    option: this process's own connection pool holds some of them."""
    marker = request.node.get_closest_marker("django_db")
    if "transactional_db" not in request.fixturenames and not (
        marker is not None and marker.kwargs.get("transaction")
    ):
        yield
        return
    # Set up before this fixture, so torn down (flushed) after it.
    request.getfixturevalue("transactional_db")
    yield
    # Loaded once Django is set up (after this file), as in celery_engine_worker below.
    from celery.worker import state

    from sparkops.testing.engine import purge_queues

    deadline = time.monotonic() + 60
    while state.active_requests and time.monotonic() < deadline:
        time.sleep(0.02)
    purge_queues()


@pytest.fixture
def no_stream_left_open() -> Iterator[None]:
    """The test gives back every event-stream slot it took (another test's stream ending
    meanwhile only lowers the count)."""
    from runs import streams

    before = streams.open_streams()
    yield
    assert streams.open_streams() <= before, "a test left a stream slot taken"


@pytest.fixture
def engine(celery_engine_worker: Any, transactional_db: Any, settings: Any) -> Any:
    """A test that runs workflows on the real worker. Its data is committed (the worker's
    threads must see it), and the database is flushed afterwards."""
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1", "localhost"]
    return celery_engine_worker


@pytest.fixture
def tool_server() -> Iterator[Any]:
    """A local HTTP server for HTTP tools to call (runs.tests.conftest.ToolServer: scripted
    routes, recorded hits), stopped after the test."""
    from runs.tests.conftest import ToolServer

    server = ToolServer().start()
    try:
        yield server
    finally:
        server.stop()
