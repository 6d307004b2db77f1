"""The replay window of inbound webhooks. GitHub signs the body only and sends no time, so a
captured delivery replays under a fresh X-GitHub-Delivery; a `github` trigger can opt in to a
window over a signed time (a timestamp header signed with the body, or a time inside the
body). `standard` signs webhook-timestamp; `tolerance_seconds` narrows its window."""

from __future__ import annotations

import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from runs.models import Run
from workflows.models import WebhookReceipt
from workflows.tests.test_hooks import TRIGGERS, make_trigger, post, standard_headers, workflow

__all__ = ["workflow"]  # the fixture, shared with test_hooks

pytestmark = pytest.mark.django_db

SECRET = "gh-secret"


def github(raw: bytes, delivery: str, stamp: str | None = None) -> dict[str, str]:
    signed = raw if stamp is None else stamp.encode() + b"." + raw
    headers = {
        "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), signed, "sha256").hexdigest(),
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": "push",
    }
    if stamp is not None:
        headers["X-Sent-At"] = stamp
    return headers


def test_without_a_window_a_github_delivery_replays_under_a_fresh_id(cast, workflow):
    """What the review found, kept as documented behaviour: nothing signed covers time."""
    _, token, _ = make_trigger(workflow, cast.developer, signature="github", secret=SECRET)
    raw = json.dumps({"name": "Ada"}).encode()
    assert post(token, raw, github(raw, "d-1")).status_code == 202
    assert post(token, raw, github(raw, "d-2-forged")).status_code == 202
    assert Run.objects.count() == 2


def test_body_time_outside_the_window_is_401_inside_is_accepted(cast, workflow):
    _, token, _ = make_trigger(
        workflow,
        cast.developer,
        signature="github",
        secret=SECRET,
        timestamp_field="head_commit.timestamp",
        tolerance_seconds=120,
    )
    fresh = datetime.now(UTC).isoformat()
    raw = json.dumps({"name": "Ada", "head_commit": {"timestamp": fresh}}).encode()
    first = post(token, raw, github(raw, "d-1"))
    assert first.status_code == 202, first.content
    # de-dup by delivery id still holds inside the window
    again = post(token, raw, github(raw, "d-1"))
    assert again.json() == {**first.json(), "replayed": True}

    old = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    stale = json.dumps({"name": "Ada", "head_commit": {"timestamp": old}}).encode()
    replay = post(token, stale, github(stale, "d-2-forged"))
    assert replay.status_code == 401
    assert replay.json()["type"] == "invalid_signature"
    assert "head_commit.timestamp is 6" in replay.json()["detail"]
    assert "outside the 120-second replay window" in replay.json()["detail"]

    # a redelivery of a known id with an old time is refused too, before the id is looked up
    assert post(token, stale, github(stale, "d-1")).status_code == 401

    missing = json.dumps({"name": "Ada"}).encode()
    refused = post(token, missing, github(missing, "d-3"))
    assert refused.status_code == 401
    assert "head_commit.timestamp holds no time" in refused.json()["detail"]
    assert Run.objects.count() == 1
    assert WebhookReceipt.objects.count() == 1


def test_signed_timestamp_header_window(cast, workflow):
    _, token, _ = make_trigger(
        workflow,
        cast.developer,
        signature="github",
        secret=SECRET,
        timestamp_header="X-Sent-At",
        tolerance_seconds=60,
    )
    raw = json.dumps({"name": "Ada"}).encode()
    now = str(int(time.time()))
    first = post(token, raw, github(raw, "d-1", now))
    assert first.status_code == 202, first.content
    assert post(token, raw, github(raw, "d-1", now)).json()["replayed"] is True

    old = str(int(time.time()) - 3600)
    stale = post(token, raw, github(raw, "d-2", old))
    assert stale.status_code == 401
    assert "X-Sent-At is 3600 seconds old" in stale.json()["detail"]
    # freshening the header of a captured delivery breaks the signature
    captured = github(raw, "d-3", old)
    forged = {**captured, "X-Sent-At": now}
    refused = post(token, raw, forged)
    assert refused.status_code == 401
    assert refused.json()["detail"].endswith("X-Hub-Signature-256 does not match.")
    body_only = github(raw, "d-4")  # signed like GitHub, without the time
    assert post(token, raw, body_only).json()["detail"].endswith("X-Sent-At is missing.")
    assert Run.objects.count() == 1


def test_standard_tolerance_narrows_the_window(cast, workflow):
    _, token, secret = make_trigger(
        workflow, cast.developer, signature="standard", tolerance_seconds=30
    )
    raw = json.dumps({"name": "Ada"}).encode()
    ok = post(token, raw, standard_headers(secret, raw, msg_id="m1"))
    assert ok.status_code == 202, ok.content
    at = datetime.now(UTC) - timedelta(seconds=120)  # inside the library's 5 minutes
    stale = post(token, raw, standard_headers(secret, raw, msg_id="m2", at=at))
    assert stale.status_code == 401
    assert "outside the 30-second replay window" in stale.json()["detail"]
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "key", "words"),
    [
        ({"signature": "standard", "timestamp_header": "X-Sent-At"}, "timestamp_header", "github"),
        ({"signature": "none", "timestamp_field": "a.b"}, "timestamp_field", "github"),
        ({"signature": "github", "timestamp_header": "bad name"}, "timestamp_header", "header"),
        ({"signature": "github", "timestamp_field": "a..b"}, "timestamp_field", "dotted"),
        (
            {"signature": "github", "timestamp_header": "X-T", "timestamp_field": "t"},
            "timestamp_field",
            "not both",
        ),
        ({"signature": "github", "tolerance_seconds": 0}, "tolerance_seconds", "from 1"),
        ({"signature": "standard", "tolerance_seconds": 600}, "tolerance_seconds", "At most 300"),
    ],
)
def test_window_settings_are_validated(cast, workflow, fields, key, words):
    body = {"workflow": str(workflow.pk), "name": "hook", "secret": "s" * 8, **fields}
    if fields["signature"] != "github":
        body.pop("secret")
    response = cast.client("developer").post(TRIGGERS, body, format="json")
    assert response.status_code == 400, response.content
    assert any(words in message for message in response.json()["errors"][key])


@pytest.mark.django_db(transaction=True)
def test_window_is_set_and_changed_through_the_api(cast, workflow):
    client = cast.client("developer")
    created = client.post(
        TRIGGERS,
        {
            "workflow": str(workflow.pk),
            "name": "gh",
            "signature": "github",
            "secret": SECRET,
            "timestamp_field": "head_commit.timestamp",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    payload = created.json()
    assert (payload["timestamp_field"], payload["tolerance_seconds"]) == (
        "head_commit.timestamp",
        300,
    )
    url = f"{TRIGGERS}{payload['id']}/"
    changed = client.patch(url, {"tolerance_seconds": 900}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["tolerance_seconds"] == 900
    # switching to `standard` keeps the github-only field: refused, nothing changes
    refused = client.patch(url, {"signature": "standard"}, format="json")
    assert refused.status_code == 400
    assert "timestamp_field" in refused.json()["errors"]
    assert client.get(url).json()["signature"] == "github"
