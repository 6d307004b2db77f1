"""`Idempotency-Key` on run creation (Stripe's semantics): a repeated request gets the first
response back, a reused key with another body is refused, keys are per caller, and concurrent
requests with one key create exactly one run (the unique constraint decides, not a read)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from conftest import client_for
from runs.models import IdempotencyKey, Run
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run

URL = "/api/v1/runs/"


@pytest.fixture
def workflow(cast):
    return make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ input.n }}")],
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    )


def post(client, workflow, key, n=1):
    return client.post(
        URL, {"workflow": workflow.pk, "input": {"n": n}}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


@pytest.mark.django_db
def test_same_key_and_body_replays_the_first_response(cast, workflow):
    client = cast.client("developer")
    first = post(client, workflow, "key-1")
    assert first.status_code == 201
    assert "Idempotency-Replayed" not in first
    second = post(client, workflow, "key-1")
    assert second.status_code == 201
    assert second["Idempotency-Replayed"] == "true"
    assert second.json() == first.json()
    assert Run.objects.count() == 1
    assert IdempotencyKey.objects.get().run_id == Run.objects.get().pk


@pytest.mark.django_db
def test_same_key_with_another_body_is_422(cast, workflow):
    client = cast.client("developer")
    assert post(client, workflow, "key-1", n=1).status_code == 201
    response = post(client, workflow, "key-1", n=2)
    assert response.status_code == 422
    assert response.json()["type"] == "idempotency_key_reused"
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_caller(cast, workflow):
    mine = post(cast.client("developer"), workflow, "shared-key")
    theirs = post(cast.client("owner"), workflow, "shared-key")
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotency-Replayed" not in theirs
    assert Run.objects.count() == 2


@pytest.mark.django_db
def test_without_a_key_every_request_creates_a_run(cast, workflow):
    client = cast.client("developer")
    for _ in range(2):
        response = client.post(URL, {"workflow": workflow.pk, "input": {"n": 1}}, format="json")
        assert response.status_code == 201
    assert Run.objects.count() == 2


@pytest.mark.django_db
def test_an_overlong_key_is_400(cast, workflow):
    response = post(cast.client("developer"), workflow, "k" * 256)
    assert response.status_code == 400
    assert Run.objects.count() == 0


@pytest.mark.django_db
def test_a_refused_request_does_not_burn_the_key(cast, workflow):
    client = cast.client("developer")
    bad = client.post(
        URL, {"workflow": workflow.pk, "input": {"n": "x"}}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert bad.status_code == 400
    assert IdempotencyKey.objects.count() == 0
    assert post(client, workflow, "k").status_code == 201


def concurrent_posts(user, workflow, key, requests, threads):
    """`requests` POSTs with one key from `threads` threads, each with its own client and
    database connection, released together."""
    parties = min(requests, threads)
    start = threading.Barrier(parties)

    def one(index: int) -> tuple[int, str, bool]:
        try:
            if index < parties:  # the first wave leaves together
                with contextlib.suppress(threading.BrokenBarrierError):
                    start.wait(timeout=10)
            response = post(client_for(user), workflow, key)
            replayed = response.get("Idempotency-Replayed") == "true"
            return response.status_code, response.json().get("id"), replayed
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(requests)))


@pytest.mark.usefixtures("engine")
def test_two_concurrent_requests_with_one_key_create_one_run(cast, workflow):
    results = concurrent_posts(cast.developer, workflow, "race", requests=2, threads=2)
    assert [status for status, _, _ in results] == [201, 201]
    assert len({run_id for _, run_id, _ in results}) == 1
    assert sorted(replayed for _, _, replayed in results) == [False, True]
    assert Run.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
    assert wait_for_run(Run.objects.get().pk).status == "succeeded"


@pytest.mark.usefixtures("engine")
def test_a_hundred_concurrent_requests_with_one_key_create_one_run(cast, workflow):
    results = concurrent_posts(cast.developer, workflow, "stampede", requests=100, threads=20)
    assert {status for status, _, _ in results} == {201}
    run_ids = {run_id for _, run_id, _ in results}
    assert len(run_ids) == 1
    assert [replayed for _, _, replayed in results].count(False) == 1
    (run,) = Run.objects.all()
    assert str(run.pk) in run_ids
    assert IdempotencyKey.objects.count() == 1
    assert wait_for_run(run.pk).status == "succeeded"
