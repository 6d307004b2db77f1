"""Outbound webhooks: the outbox written with the run's events, signed per Standard Webhooks
(verified here with the `standardwebhooks` package), retried with backoff on 5xx/429/timeouts/
connection errors and never on other 4xx, refused internal addresses, secret rotation, the
24 h disable, the outbox sweep, and the API (admins only)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import client_for
from projects import webhooks
from projects.models import WebhookDelivery, WebhookEndpoint
from projects.tests.receiver import Receiver
from runs import services as run_services
from runs import webhooks as run_webhooks
from runs.models import Run
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.processes import free_port

URL = "/api/v1/webhook-endpoints/"


@pytest.fixture
def local(settings):
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]


def endpoint_for(cast, url, **fields):
    return webhooks.endpoint_create(actor=cast.admin, project=cast.project, url=url, **fields)


def emit(cast, event_type="run.succeeded", data=None):
    return webhooks.event_emit(
        project_id=cast.project.pk, event_type=event_type, data=data or {"run": {"id": "r1"}}
    )


def attempt(delivery):
    webhooks.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


def make_due(delivery):
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_retry_at=timezone.now())


# --- end to end, on the real engine --------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_run_succeeded_is_delivered_after_two_failures_and_verifies(cast, settings):
    settings.SPARKOPS_WEBHOOK_RETRY_SCHEDULE = [0.2, 0.2, 0.2]
    with Receiver(500, 503) as receiver:
        endpoint, secret = endpoint_for(cast, receiver.url, events=["run.succeeded"])
        workflow = make_workflow(
            cast.project, cast.owner, [transform("a", {"ok": True})], output={"ok": True}
        )
        run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
        assert wait_for_run(run.pk).status == "succeeded"
        delivery = wait_until(
            lambda: WebhookDelivery.objects.filter(status="delivered").first(), timeout=30
        )

    assert len(receiver.requests) == 3
    assert delivery.attempt == 3 and delivery.response_status == 200
    assert [entry["status_code"] for entry in delivery.log] == [500, 503, 200]
    assert WebhookDelivery.objects.count() == 1  # subscribed to run.succeeded only
    # one message, three attempts: the same webhook-id each time
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery.webhook_id}
    last = receiver.requests[-1]
    payload = Webhook(secret).verify(last.raw, last.headers)
    assert payload["type"] == "run.succeeded"
    assert payload["data"]["run"]["id"] == str(run.pk)
    assert payload["data"]["run"]["output"] == {"ok": True}
    assert payload["data"]["project"] == {"id": str(cast.project.pk), "slug": "acme"}
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(last.raw, last.headers)
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None  # the success cleared it


@pytest.mark.usefixtures("engine")
def test_run_started_and_approval_requested_are_reported_once(cast):
    with Receiver() as receiver:
        endpoint_for(cast, receiver.url)  # every event ("*")
        workflow = make_workflow(
            cast.project,
            cast.owner,
            [{"id": "ok", "type": "approval", "message": "Ship?"}, transform("b", 1, "ok")],
        )
        run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
        wait_for_run(run.pk, statuses=("waiting_approval",))
        run_services.step_decide(run=run, node_id="ok", actor=cast.owner, approve=True)
        assert wait_for_run(run.pk).status == "succeeded"
        wait_until(lambda: len(receiver.requests) == 3, what="three deliveries")

    types = sorted(r.json()["type"] for r in receiver.requests)
    assert types == ["approval.requested", "run.started", "run.succeeded"]
    approval = next(r.json() for r in receiver.requests if r.json()["type"] == "approval.requested")
    assert approval["data"]["step"] == "ok" and approval["data"]["message"] == "Ship?"


# --- retry rules ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("metrics_token")
def test_attempts_are_counted_by_outcome_once_committed(
    cast, local, settings, django_capture_on_commit_callbacks
):
    from sparkops.testing.scraping import delta, scrape

    settings.SPARKOPS_WEBHOOK_RETRY_SCHEDULE = [300]
    before = scrape()
    with Receiver(503, 503, 400) as receiver:
        endpoint_for(cast, receiver.url)
        with django_capture_on_commit_callbacks(execute=True):
            retried, final = emit(cast), emit(cast)
            attempt(retried[0])  # 503: retrying
            make_due(retried[0])
            attempt(retried[0])  # 503 again, schedule spent: gave_up
            attempt(final[0])  # 400: failed
            (ok,) = emit(cast)
            attempt(ok)  # 200: delivered
    after = scrape()
    counted = {
        outcome: delta(before, after, "sparkops_webhook_deliveries_total", outcome=outcome)
        for outcome in ("delivered", "retrying", "gave_up", "failed")
    }
    assert counted == {"delivered": 1, "retrying": 1, "gave_up": 1, "failed": 1}


@pytest.mark.django_db
def test_a_400_is_final_no_retry(cast, local):
    with Receiver(400) as receiver:
        endpoint_for(cast, receiver.url)
        (delivery,) = emit(cast)
        delivery = attempt(delivery)
    assert len(receiver.requests) == 1
    assert (delivery.status, delivery.response_status, delivery.error) == (
        "failed",
        400,
        "HTTP 400",
    )
    assert delivery.next_retry_at is None
    make_due(delivery)
    assert attempt(delivery).attempt == 1  # not pending: nothing is sent again


@pytest.mark.django_db
@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_429_and_5xx_are_retried_with_backoff(cast, local, settings, status):
    settings.SPARKOPS_WEBHOOK_RETRY_SCHEDULE = [5, 300]
    with Receiver(status, status, status) as receiver:
        endpoint_for(cast, receiver.url)
        (delivery,) = emit(cast)
        before = timezone.now()
        delivery = attempt(delivery)
        assert delivery.status == "pending"
        assert before + timedelta(seconds=5) <= delivery.next_retry_at
        assert attempt(delivery).attempt == 1  # not due yet: nothing sent
        make_due(delivery)
        delivery = attempt(delivery)
        assert delivery.next_retry_at >= before + timedelta(seconds=300)
        make_due(delivery)
        delivery = attempt(delivery)
    assert len(receiver.requests) == 3
    assert delivery.status == "failed"  # the schedule is exhausted
    assert delivery.error == f"HTTP {status}; gave up after 3 attempt(s)"


@pytest.mark.django_db
def test_connection_errors_and_timeouts_are_retried(cast, local, settings):
    settings.SPARKOPS_WEBHOOK_TIMEOUT = 0.3
    endpoint_for(cast, f"http://127.0.0.1:{free_port()}/closed")
    (refused,) = emit(cast)
    refused = attempt(refused)
    assert refused.status == "pending" and refused.next_retry_at is not None
    assert "connection" in refused.error

    WebhookEndpoint.objects.all().delete()
    with Receiver(delay=2) as slow:
        endpoint_for(cast, slow.url)
        (timed_out,) = emit(cast)
        timed_out = attempt(timed_out)
    assert timed_out.status == "pending" and "timed out" in timed_out.error


@pytest.mark.django_db
def test_retries_stop_at_the_24_hour_window(cast, local):
    with Receiver(500) as receiver:
        endpoint_for(cast, receiver.url)
        (delivery,) = emit(cast)
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            retry_until=timezone.now() + timedelta(seconds=2)
        )
        delivery = attempt(delivery)
    assert delivery.status == "failed"
    assert delivery.error.endswith("gave up after 1 attempt(s)")


# --- refused addresses ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_private_address_is_refused_on_save(cast):
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "ftp://example.com/x"):
        response = cast.client("admin").post(
            URL, {"project": str(cast.project.pk), "url": url}, format="json"
        )
        assert response.status_code == 400, url
        assert response.json()["errors"]["url"][0].startswith("Not allowed:")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
def test_a_refused_address_at_send_time_fails_without_connecting_or_retrying(cast, settings):
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    with Receiver() as receiver:
        endpoint_for(cast, receiver.url)
        (delivery,) = emit(cast)
        settings.SPARKOPS_OUTBOUND_ALLOW = []  # the allow-list changed since the save
        delivery = attempt(delivery)
    assert receiver.requests == []
    assert delivery.status == "failed" and delivery.next_retry_at is None
    assert "127.0.0.1 is loopback" in delivery.error


# --- endpoint health, rotation, the sweep ---------------------------------------------------------


@pytest.mark.django_db
def test_an_endpoint_failing_for_24_hours_is_disabled_with_the_reason(cast, local):
    with Receiver(500, 500) as receiver:
        endpoint, _ = endpoint_for(cast, receiver.url)
        (first,) = emit(cast)
        attempt(first)
        endpoint.refresh_from_db()
        assert endpoint.enabled and endpoint.failing_since is not None
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
            failing_since=timezone.now() - timedelta(hours=25)
        )
        (second,) = emit(cast)
        attempt(second)
    endpoint.refresh_from_db()
    assert endpoint.enabled is False
    assert "every delivery has failed since" in endpoint.disabled_reason
    assert "HTTP 500" in endpoint.disabled_reason
    shown = cast.client("admin").get(f"{URL}{endpoint.pk}/").json()
    assert shown["enabled"] is False and shown["disabled_reason"] == endpoint.disabled_reason
    # a disabled endpoint gets no new events; pending ones fail when their turn comes
    assert emit(cast) == []
    make_due(first)
    assert attempt(first).error == "The endpoint is disabled."
    # an admin fixes the receiver and enables it again: the failure clock restarts
    response = cast.client("admin").patch(f"{URL}{endpoint.pk}/", {"enabled": True}, format="json")
    assert response.json()["disabled_reason"] == "" and response.json()["failing_since"] is None


@pytest.mark.django_db
def test_two_signatures_during_the_rotation_window(cast, local):
    with Receiver() as receiver:
        endpoint, old = endpoint_for(cast, receiver.url)
        new = cast.client("admin").post(f"{URL}{endpoint.pk}/rotate-secret").json()["secret"]
        assert new != old
        attempt(emit(cast)[0])
        endpoint.refresh_from_db()
        endpoint.secret_rotated_at = timezone.now() - timedelta(hours=25)
        endpoint.save(update_fields=["secret_rotated_at"])
        attempt(emit(cast)[0])
    during, after = receiver.requests
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(during.raw, during.headers)
    Webhook(new).verify(during.raw, during.headers)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(after.raw, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.raw, after.headers)


@pytest.mark.django_db
def test_the_outbox_sweep_resends_lost_and_due_rows_only(
    cast, local, settings, django_capture_on_commit_callbacks
):
    settings.SPARKOPS_WEBHOOK_OUTBOX_GRACE = 30
    with Receiver() as receiver:
        endpoint_for(cast, receiver.url)
        with django_capture_on_commit_callbacks(execute=False):  # the task is lost
            (lost,) = emit(cast)
            (fresh,) = emit(cast)
            (later,) = emit(cast)
        WebhookDelivery.objects.filter(pk=lost.pk).update(
            created_at=timezone.now() - timedelta(minutes=5)
        )
        WebhookDelivery.objects.filter(pk=later.pk).update(
            next_retry_at=timezone.now() + timedelta(hours=1)
        )
        with django_capture_on_commit_callbacks(execute=False) as sends:
            assert webhooks.outbox_sweep() == {"sent": 1}
        assert len(sends) == 1
        # what the sent task does
        assert attempt(lost).status == "delivered"
        with django_capture_on_commit_callbacks(execute=False):
            assert webhooks.outbox_sweep() == {"sent": 0}
    assert len(receiver.requests) == 1
    assert fresh.status == later.status == "pending"


# --- API -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_creates_and_sees_the_secret_once(cast, local):
    client = cast.client("admin")
    response = client.post(
        URL,
        {"project": str(cast.project.pk), "url": "http://127.0.0.1:9/x", "events": ["run.failed"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["secret"].startswith("whsec_")
    assert "secret" not in client.get(f"{URL}{data['id']}/").json()
    bad = client.post(
        URL,
        {"project": str(cast.project.pk), "url": "http://127.0.0.1:9/x", "events": ["run.nope"]},
        format="json",
    )
    assert bad.status_code == 400 and "events" in bad.json()["errors"]
    for role in ("developer", "viewer"):
        assert cast.client(role).get(URL).json()["count"] == 0
        assert cast.client(role).get(f"{URL}{data['id']}/").status_code == 404
        assert (
            cast.client(role)
            .post(URL, {"project": str(cast.project.pk), "url": "http://127.0.0.1:9/x"})
            .status_code
            == 403
        )


@pytest.mark.django_db
def test_ping_deliveries_and_redeliver(cast, local):
    client = cast.client("admin")
    with Receiver() as receiver:
        endpoint, secret = endpoint_for(cast, receiver.url, events=["run.failed"])
        response = client.post(f"{URL}{endpoint.pk}/ping")
        assert response.status_code == 202
        ping = WebhookDelivery.objects.get(pk=response.json()["id"])
        assert ping.event_type == "ping" and ping.status == "pending"
        assert attempt(ping).status == "delivered"
        Webhook(secret).verify(receiver.requests[0].raw, receiver.requests[0].headers)

        listed = client.get(f"{URL}{endpoint.pk}/deliveries/").json()
        assert [d["event_type"] for d in listed["results"]] == ["ping"]
        assert client.get(f"{URL}{endpoint.pk}/deliveries/?status=failed").json()["results"] == []

        again = client.post(f"{URL}{endpoint.pk}/deliveries/{ping.pk}/redeliver")
        assert again.status_code == 202 and again.json()["status"] == "pending"
        busy = client.post(f"{URL}{endpoint.pk}/deliveries/{ping.pk}/redeliver")
        assert busy.status_code == 409
        assert attempt(ping).status == "delivered"
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == ping.webhook_id
    assert ping.attempt == 2
    other, _ = endpoint_for(cast, receiver.url)
    assert client.post(f"{URL}{other.pk}/deliveries/{ping.pk}/redeliver").status_code == 404


@pytest.mark.django_db
def test_endpoint_list_query_count_is_constant(cast, local, django_assert_num_queries):
    client = client_for(cast.admin)
    endpoint_for(cast, "http://127.0.0.1:9/a")
    # auth user, count, page of endpoints (project joined)
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 1
    for i in range(10):
        endpoint_for(cast, f"http://127.0.0.1:9/{i}")
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 11


@pytest.mark.django_db
def test_delivery_list_query_count_is_constant(cast, local, django_assert_num_queries):
    client = client_for(cast.admin)
    endpoint, _ = endpoint_for(cast, "http://127.0.0.1:9/a")
    emit(cast)
    url = f"{URL}{endpoint.pk}/deliveries/"
    # auth user, endpoint with its project (admin-membership subquery), role check, page: no
    # COUNT(*), the log is cursor-paged
    with django_assert_num_queries(4):
        assert len(client.get(url).json()["results"]) == 1
    for _ in range(60):
        emit(cast)
    with django_assert_num_queries(4):
        first = client.get(url).json()
    assert len(first["results"]) == 50 and "count" not in first
    with django_assert_num_queries(4):
        second = client.get(first["next"]).json()
    assert len(second["results"]) == 11 and second["next"] is None
    ids = [d["id"] for d in first["results"] + second["results"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 61


@pytest.mark.django_db
def test_unreported_run_events_cost_no_query(cast, django_assert_num_queries):
    from runs.models import RunEvent

    events = [RunEvent(run_id=None, seq=1, type="step.status", payload={"status": "queued"})]
    with django_assert_num_queries(0):
        assert run_webhooks.run_events_record(run_id=None, events=events) == []
    assert Run.objects.count() == 0
