"""Inbound webhooks: POST /api/v1/hooks/{token} with no authentication but the token and the
signature; Standard Webhooks and GitHub signatures, replays, size limit, idempotent
redelivery, input mapping, throttling; and the webhook-trigger API."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from conftest import client_for
from runs.models import Run
from workflows import services, webhooks
from workflows.models import WebhookReceipt, WebhookTrigger
from workflows.tests.factories import WorkflowFactory

pytestmark = pytest.mark.django_db

TRIGGERS = "/api/v1/webhook-triggers/"


@pytest.fixture
def workflow(cast):
    return WorkflowFactory(project=cast.project, created_by=cast.owner)


def make_trigger(workflow, actor, **fields):
    return webhooks.webhook_trigger_create(actor=actor, workflow=workflow, name="hook", **fields)


def hook(token):
    return f"/api/v1/hooks/{token}"


def post(token, payload, headers=None, query=""):
    """Like a sender would: raw JSON bytes, no credentials."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()}
    return APIClient().post(hook(token) + query, data=raw, content_type="application/json", **extra)


def standard_headers(secret, raw, *, msg_id="msg_1", at=None):
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=raw.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def test_unsigned_hook_starts_a_run(cast, workflow):
    trigger, token, secret = make_trigger(workflow, cast.developer)
    assert secret == ""
    response = post(token, {"name": "Ada"})
    assert response.status_code == 202, response.content
    data = response.json()
    run = Run.objects.get(pk=data["run"])
    assert (run.trigger, run.input, run.created_by) == ("webhook", {"name": "Ada"}, None)
    assert data == {
        "run": str(run.pk),
        "status": "pending",
        "replayed": False,
        "url": f"http://testserver/api/v1/runs/{run.pk}",
    }
    trigger.refresh_from_db()
    assert trigger.last_delivery_at is not None


def test_only_a_hash_of_the_token_is_stored(cast, workflow):
    trigger, token, _ = make_trigger(workflow, cast.developer)
    assert token.startswith("whk_") and len(token) > 40
    assert trigger.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(list(WebhookTrigger.objects.values()), default=str)
    assert trigger.token_prefix == token[:12]


def test_unknown_token_is_404(cast, workflow):
    make_trigger(workflow, cast.developer)
    for token in ("whk_nope", "nothing", "whk_" + "a" * 43):
        response = post(token, {"name": "Ada"})
        assert response.status_code == 404
        assert response.json() == {"type": "not_found", "detail": "Unknown webhook."}
    assert not Run.objects.exists()


def test_standard_webhooks_good_signature(cast, workflow):
    _, token, secret = make_trigger(workflow, cast.developer, signature="standard")
    assert secret.startswith("whsec_")
    raw = json.dumps({"name": "Ada"}).encode()
    response = post(token, raw, standard_headers(secret, raw))
    assert response.status_code == 202, response.content


def test_standard_webhooks_bad_missing_and_stale_signatures_are_401(cast, workflow):
    _, token, secret = make_trigger(workflow, cast.developer, signature="standard")
    raw = json.dumps({"name": "Ada"}).encode()
    other = webhooks.new_standard_secret()

    wrong_key = post(token, raw, standard_headers(other, raw))
    assert wrong_key.status_code == 401
    assert wrong_key.json()["type"] == "invalid_signature"

    tampered = post(token, json.dumps({"name": "Eve"}).encode(), standard_headers(secret, raw))
    assert tampered.status_code == 401

    assert post(token, raw).status_code == 401  # no signature headers

    stale = post(
        token, raw, standard_headers(secret, raw, at=datetime.now(UTC) - timedelta(minutes=6))
    )
    assert stale.status_code == 401
    assert "too old" in stale.json()["detail"]

    future = post(
        token, raw, standard_headers(secret, raw, at=datetime.now(UTC) + timedelta(minutes=6))
    )
    assert future.status_code == 401

    garbage = post(
        token,
        raw,
        {"webhook-id": "m", "webhook-timestamp": "soon", "webhook-signature": "v1,%%%"},
    )
    assert garbage.status_code == 401
    malformed = standard_headers(secret, raw)
    malformed["webhook-signature"] = "no-comma"
    assert post(token, raw, malformed).status_code == 401
    assert not Run.objects.exists()


def test_a_replayed_standard_webhook_answers_the_same_run(cast, workflow):
    _, token, secret = make_trigger(workflow, cast.developer, signature="standard")
    raw = json.dumps({"name": "Ada"}).encode()
    headers = standard_headers(secret, raw, msg_id="msg_2b5c")
    first = post(token, raw, headers)
    again = post(token, raw, headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == {**first.json(), "replayed": True}
    assert Run.objects.count() == 1
    # a replay more than 5 minutes later is refused by the timestamp, before the id is looked up
    old = standard_headers(
        secret, raw, msg_id="msg_2b5c", at=datetime.now(UTC) - timedelta(hours=1)
    )
    assert post(token, raw, old).status_code == 401


def test_github_signature(cast, workflow):
    _, token, _ = make_trigger(workflow, cast.developer, signature="github", secret="gh-secret")
    raw = json.dumps({"name": "Ada", "action": "opened"}).encode()
    good = "sha256=" + hmac.new(b"gh-secret", raw, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": good, "X-GitHub-Delivery": "72d3162e", "X-GitHub-Event": "x"}
    response = post(token, raw, headers)
    assert response.status_code == 202, response.content
    # GitHub redelivers with the same X-GitHub-Delivery
    assert post(token, raw, headers).json()["replayed"] is True
    assert Run.objects.count() == 1

    bad = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64, "X-GitHub-Delivery": "2"}
    assert post(token, raw, bad).status_code == 401
    missing = {"X-GitHub-Delivery": "3"}
    assert post(token, raw, missing).json()["detail"].endswith("X-Hub-Signature-256 is missing.")


@pytest.mark.parametrize("header", ["Idempotency-Key", "X-Request-Id"])
def test_idempotent_redelivery_by_header(cast, workflow, header):
    _, token, _ = make_trigger(workflow, cast.developer)
    first = post(token, {"name": "Ada"}, {header: "delivery-7"})
    second = post(token, {"name": "Ada"}, {header: "delivery-7"})
    assert second.json()["run"] == first.json()["run"]
    assert second.json()["replayed"] is True
    assert post(token, {"name": "Ada"}, {header: "delivery-8"}).json()["run"] != first.json()["run"]
    assert Run.objects.count() == 2
    assert WebhookReceipt.objects.count() == 2


def test_oversized_body_is_413(cast, workflow, settings):
    settings.SPARKOPS_WEBHOOK_MAX_BYTES = 1000
    _, token, _ = make_trigger(workflow, cast.developer)
    response = post(token, {"name": "x" * 1000})
    assert response.status_code == 413
    assert response.json()["type"] == "payload_too_large"
    assert post(token, {"name": "x" * 900}).status_code == 202


def test_invalid_input_is_422(cast, workflow):
    _, token, _ = make_trigger(workflow, cast.developer)
    missing = post(token, {"nom": "Ada"})
    assert missing.status_code == 422
    assert missing.json()["errors"] == {"input.name": ["This field is required."]}
    assert post(token, [1, 2]).status_code == 422  # not an object, and no mapping
    assert post(token, b"not json").status_code == 422
    assert not Run.objects.exists()


def test_input_mapping_reads_body_headers_and_query(cast, workflow):
    mapping = {"name": "{{ body.pull_request.user.login }} via {{ headers['x-github-event'] }}"}
    _, token, _ = make_trigger(workflow, cast.developer, input_mapping=mapping)
    response = post(
        token,
        {"pull_request": {"user": {"login": "ada"}}},
        {"X-GitHub-Event": "pull_request", "Authorization": "Bearer hidden"},
        query="?env=prod",
    )
    assert response.status_code == 202, response.content
    assert Run.objects.get().input == {"name": "ada via pull_request"}

    _, token2, _ = make_trigger(
        workflow,
        cast.developer,
        input_mapping={"name": "{{ query.who }}/{{ headers.authorization }}"},
    )
    failed = post(token2, {}, {"Authorization": "Bearer hidden"}, query="?who=me")
    assert failed.status_code == 422  # authorization is never offered to templates
    assert "input_mapping" in failed.json()["errors"]


def test_disabled_trigger_and_paused_workflow_are_409(cast, workflow):
    trigger, token, _ = make_trigger(workflow, cast.developer)
    webhooks.webhook_trigger_update(trigger=trigger, actor=cast.owner, enabled=False)
    assert post(token, {"name": "Ada"}).status_code == 409
    webhooks.webhook_trigger_update(trigger=trigger, actor=cast.owner, enabled=True)
    services.workflow_set_status(workflow=workflow, actor=cast.owner, status="paused")
    response = post(token, {"name": "Ada"})
    assert response.status_code == 409
    assert "paused" in response.json()["detail"]


def test_throttled_per_token(cast, workflow, settings):
    settings.SPARKOPS_WEBHOOK_THROTTLE_RATE = "2/min"
    _, token, _ = make_trigger(workflow, cast.developer)
    _, other, _ = make_trigger(workflow, cast.developer)
    assert [post(token, {"name": "a"}).status_code for _ in range(3)] == [202, 202, 429]
    assert post(other, {"name": "a"}).status_code == 202


def test_rotation_voids_the_old_token(cast, workflow):
    trigger, old, _ = make_trigger(workflow, cast.developer)
    response = cast.client("developer").post(f"{TRIGGERS}{trigger.pk}/rotate")
    assert response.status_code == 200
    new = response.json()["token"]
    assert response.json()["url"].endswith(f"/api/v1/hooks/{new}")
    assert post(old, {"name": "a"}).status_code == 404
    assert post(new, {"name": "a"}).status_code == 202


# --- the trigger API -------------------------------------------------------------------------


def test_create_shows_token_and_generated_secret_once(cast, workflow):
    client = cast.client("developer")
    response = client.post(
        TRIGGERS, {"workflow": workflow.pk, "name": "gh", "signature": "standard"}, format="json"
    )
    assert response.status_code == 201, response.content
    data = response.json()
    token, secret = data["token"], data["generated_secret"]
    assert data["url"] == f"http://testserver/api/v1/hooks/{token}"
    assert secret.startswith("whsec_") and data["has_secret"] is True
    assert "secret" not in data

    shown = client.get(f"{TRIGGERS}{data['id']}/").json()
    assert "token" not in shown and "generated_secret" not in shown
    assert shown["token_prefix"] == token[:12]
    raw = json.dumps({"name": "Ada"}).encode()
    assert post(token, raw, standard_headers(secret, raw)).status_code == 202


def test_create_validates_mapping_signature_and_secret(cast, workflow):
    client = cast.client("developer")
    bad = client.post(
        TRIGGERS,
        {"workflow": workflow.pk, "name": "x", "input_mapping": {"a": "{{ secrets.token }}"}},
        format="json",
    )
    assert bad.status_code == 400
    assert "Unknown name(s) secrets" in bad.json()["errors"]["input_mapping"][0]
    syntax = client.post(
        TRIGGERS,
        {"workflow": workflow.pk, "name": "x", "input_mapping": {"a": "{{ body."}},
        format="json",
    )
    assert syntax.status_code == 400
    wrong = client.post(
        TRIGGERS,
        {"workflow": workflow.pk, "name": "x", "signature": "standard", "secret": "plain"},
        format="json",
    )
    assert wrong.status_code == 400
    assert "whsec_" in wrong.json()["errors"]["secret"][0]


def test_update_and_roles(cast, workflow):
    trigger, _, _ = make_trigger(workflow, cast.developer)
    url = f"{TRIGGERS}{trigger.pk}/"
    assert cast.client("viewer").get(url).status_code == 200
    assert cast.client("viewer").patch(url, {"enabled": False}).status_code == 403
    assert (
        cast.client("viewer").post(TRIGGERS, {"workflow": workflow.pk, "name": "v"}).status_code
        == 403
    )
    assert cast.client("outsider").get(url).status_code == 404
    response = cast.client("developer").patch(url, {"signature": "github"}, format="json")
    assert response.status_code == 200
    assert response.json()["generated_secret"]  # switched on without one: generated, shown once
    assert cast.client("developer").delete(url).status_code == 204


def test_trigger_list_query_count_is_constant(cast, workflow, django_assert_num_queries):
    client = client_for(cast.viewer)
    make_trigger(workflow, cast.developer)
    # auth user, count, page of triggers (project joined)
    with django_assert_num_queries(3):
        assert client.get(TRIGGERS).json()["count"] == 1
    for _ in range(10):
        make_trigger(workflow, cast.developer)
    with django_assert_num_queries(3):
        assert client.get(TRIGGERS).json()["count"] == 11
