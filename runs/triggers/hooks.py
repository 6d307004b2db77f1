"""Inbound webhooks start runs: `POST /api/v1/hooks/{token}` verifies, maps and starts a run of
the trigger's workflow, answering the same run to a redelivery (see workflows.webhooks for the
triggers, their tokens, signatures and input mappings)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from policies.enforcement import RunStartRefused
from runs.models import Run
from runs.services import run_create
from sparkops.db import release_connection
from sparkops.errors import Conflict, InvalidInput, Unprocessable
from workflows.models import WebhookReceipt, WebhookTrigger
from workflows.webhooks import check_size, delivery_id_of, map_input, verify_signature


def _existing(trigger: WebhookTrigger, delivery_id: str) -> Any:
    run_id = (
        WebhookReceipt.objects.filter(trigger=trigger, delivery_id=delivery_id)
        .values_list("run_id", flat=True)
        .first()
    )
    return Run.objects.filter(pk=run_id).first() if run_id else None


class _Taken(Exception):
    pass


def _create_run(trigger: WebhookTrigger, input: dict[str, Any], delivery_id: str | None) -> Any:
    refusal = None
    with transaction.atomic():
        try:
            run = run_create(
                workflow=trigger.workflow, input=input, actor=None, trigger=Run.Trigger.WEBHOOK
            )
        except InvalidInput as exc:
            # The request was fine; its content does not fit the workflow.
            raise Unprocessable(exc.detail, errors=exc.errors) from None
        except RunStartRefused as refused:
            refusal = refused  # commit its decisions, then answer with it
        else:
            if delivery_id:
                try:
                    with transaction.atomic():
                        WebhookReceipt.objects.create(
                            trigger=trigger, delivery_id=delivery_id, run=run
                        )
                except IntegrityError:
                    raise _Taken() from None
            WebhookTrigger.objects.filter(pk=trigger.pk).update(last_delivery_at=timezone.now())
    if refusal is not None:
        raise refusal
    return run  # type: ignore[possibly-undefined]  # bound whenever nothing was refused


def webhook_receive(
    *,
    trigger: WebhookTrigger,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> tuple[Any, bool]:
    """Verify, map and start. Returns (run, replayed). `headers` have lower-cased names."""
    check_size(len(body))
    if not trigger.enabled:
        raise Conflict("This webhook trigger is disabled.")
    verify_signature(trigger, body, headers)
    delivery_id = delivery_id_of(headers)
    if delivery_id:
        run = _existing(trigger, delivery_id)
        if run is not None:
            return run, True
    input = map_input(trigger, body, headers, query)
    try:
        return _create_run(trigger, input, delivery_id), False
    except _Taken:
        # A concurrent delivery with the same id won the constraint; answer its run.
        assert delivery_id is not None
        run = _existing(trigger, delivery_id)
        if run is None:  # pragma: no cover - the winner committed before we read
            raise Conflict("The same delivery is being processed; retry shortly.") from None
        return run, True


def wait_seconds(raw: str | None) -> float:
    """`?wait=N`: seconds (a number from 0), capped by SPARKOPS_HOOK_MAX_WAIT; absent is 0."""
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(
            "Invalid input.", errors={"wait": ["Must be a number of seconds from 0."]}
        )
    return min(seconds, float(settings.SPARKOPS_HOOK_MAX_WAIT))


def run_wait(*, run_id: Any, seconds: float) -> dict[str, Any] | None:
    """The run's status, output and error once it has finished, or None if it has not within
    `seconds`. Polls with one short query each SPARKOPS_HOOK_WAIT_POLL seconds and gives the
    connection back to the pool between polls (sparkops.db): a held request holds no
    connection."""
    deadline = time.monotonic() + seconds
    poll = float(settings.SPARKOPS_HOOK_WAIT_POLL)
    fields = ("status", "output", "error")
    while True:
        row = Run.objects.filter(pk=run_id).values(*fields).first()
        if row is None or row["status"] in Run.FINISHED_STATUSES:
            return row
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        release_connection()
        time.sleep(min(poll, left))
