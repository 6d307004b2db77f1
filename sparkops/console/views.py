"""The console's admin pages. ModelAdmins route to these from `get_urls` (so every page goes
through `admin_view`, the ModelAdmin's scoped queryset and its permissions); the dashboard
replaces the admin index. Writes go through the services only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from rest_framework.exceptions import Throttled

from runs import services, streams
from runs import services as run_services
from runs.models import Run, RunEvent, RunStep
from runs.services.state import split_item_id
from sparkops.errors import SparkOpsError
from workflows import services as workflow_services

from . import dashboard as figures
from .forms import DecisionForm, RunNowForm
from .layout import DagLayout, dag_layout, gantt_layout, step_attempts
from .palette import DIFF_COLORS, RUN_STATUS_ORDER, TYPE_COLORS
from .svg import dag_svg, gantt_svg, humanize_seconds, legend_items, money, stacked_bars_svg

STEP_LEGEND = [
    (s, s.replace("_", " "))
    for s in (
        "pending",
        "queued",
        "running",
        "waiting_approval",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
    )
]
TYPE_LEGEND = [{"type": t, "fill": f, "stroke": s} for t, (f, s) in TYPE_COLORS.items()]


def _object_or_404(model_admin: Any, request: HttpRequest, object_id: str) -> Any:
    obj = model_admin.get_object(request, unquote(object_id))
    if obj is None or not model_admin.has_view_permission(request, obj):
        raise Http404(f"No {model_admin.opts.verbose_name} with id {object_id!r} here.")
    return obj


def _page(model_admin: Any, request: HttpRequest, title: str, **context: Any) -> dict:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        **context,
    }


# --- workflow graphs -------------------------------------------------------------------------


def dag_picture(definition: Any, *, label: str = "Workflow graph") -> dict[str, Any]:
    """The graph of a definition, or the reason there is none (a stored definition that no
    longer validates still gets a page, with the reason)."""
    try:
        layout = dag_layout(definition)
    except SparkOpsError as exc:
        return {"error": f"{exc.detail} {exc.errors or ''}".strip(), "node_count": 0}
    return _picture(layout, label)


def _picture(layout: DagLayout, label: str) -> dict[str, Any]:
    return {
        "svg": dag_svg(layout, label=label),
        "node_count": len(layout.nodes),
        "layer_count": len(layout.layers),
        "type_legend": TYPE_LEGEND,
    }


def workflow_graph_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    workflow = _object_or_404(model_admin, request, object_id)
    context = _page(
        model_admin,
        request,
        f"Graph of {workflow} (version {workflow.version})",
        original=workflow,
        graph=dag_picture(workflow.definition, label=f"Graph of {workflow}"),
        versions=_versions(workflow),
        workflow=workflow,
    )
    return render(request, "console/graph.html", context)


def version_graph_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    version = _object_or_404(model_admin, request, object_id)
    definition = (version.snapshot or {}).get("definition")
    context = _page(
        model_admin,
        request,
        f"Graph of {version.workflow} version {version.number}",
        original=version,
        graph=dag_picture(definition, label=f"Version {version.number}"),
        versions=_versions(version.workflow),
        workflow=version.workflow,
        version=version,
    )
    return render(request, "console/graph.html", context)


def _versions(workflow: Any) -> list[dict[str, Any]]:
    return list(workflow.versions.order_by("-number").values("number", "pk", "created_at"))


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def workflow_diff_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """Two versions side by side: removed and changed nodes marked on the left (older), added
    and changed nodes on the right (newer)."""
    workflow = _object_or_404(model_admin, request, object_id)
    to_number = _int(request.GET.get("to"), workflow.version)
    from_number = _int(request.GET.get("from"), max(to_number - 1, 1))
    try:
        diff = workflow_services.workflow_diff(
            workflow=workflow, from_number=from_number, to_number=to_number
        )
    except SparkOpsError as exc:
        messages.error(request, f"{exc.detail} {exc.errors or ''}")
        return HttpResponseRedirect(reverse("admin:workflows_workflow_graph", args=[workflow.pk]))
    snapshots = dict(
        workflow.versions.filter(number__in=[from_number, to_number]).values_list(
            "number", "snapshot"
        )
    )
    changed = {item["id"]: item["keys"] for item in diff["nodes"]["changed"]}
    sides = []
    for number, marks in (
        (from_number, dict.fromkeys(diff["nodes"]["removed"], "removed")),
        (to_number, dict.fromkeys(diff["nodes"]["added"], "added")),
    ):
        try:
            layout = dag_layout(snapshots[number].get("definition"))
        except SparkOpsError as exc:
            sides.append({"number": number, "graph": {"error": str(exc.detail)}})
            continue
        for node in layout.nodes:
            if node.id in marks:
                node.diff = marks[node.id]
            elif node.id in changed:
                node.diff, node.changed_keys = "changed", changed[node.id]
        sides.append({"number": number, "graph": _picture(layout, f"{workflow} version {number}")})
    context = _page(
        model_admin,
        request,
        f"{workflow}: version {from_number} → {to_number}",
        original=workflow,
        workflow=workflow,
        diff=diff,
        sides=sides,
        versions=_versions(workflow),
        diff_colors=DIFF_COLORS,
    )
    return render(request, "console/diff.html", context)


def run_now_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """Start a run (trigger "manual") with an input form built from the input schema; the
    service validates the input and its errors land on the fields."""
    workflow = _object_or_404(model_admin, request, object_id)
    if not model_admin.may_write(request, workflow):
        raise PermissionDenied
    schema = (workflow.definition or {}).get("input_schema")
    form = RunNowForm(request.POST or None, input_schema=schema)
    if request.method == "POST" and form.is_valid():
        try:
            run = run_services.run_create(
                workflow=workflow,
                input=form.input_value(),
                actor=request.user,
                trigger=Run.Trigger.MANUAL,
            )
        except SparkOpsError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, f"Started run {str(run.pk)[:8]} of {workflow}.")
            return HttpResponseRedirect(reverse("admin:runs_run_change", args=[run.pk]))
    context = _page(
        model_admin,
        request,
        f"Run {workflow} now",
        original=workflow,
        workflow=workflow,
        form=form,
        schema=schema,
    )
    return render(request, "console/run_now.html", context)


# --- runs --------------------------------------------------------------------------------------


def run_picture(run: Run, *, now: Any = None) -> dict[str, Any]:
    """The run's graph coloured by step status and its timeline. Three queries: steps, events
    (only the kinds the timeline reads), and the pinned version (if not already loaded)."""
    now = now or timezone.now()
    definition = (run.version.snapshot or {}).get("definition") or {}
    steps = {step.node_id: step for step in RunStep.objects.filter(run=run).order_by("id")}
    # A map's items are collapsed into the map: its node counts them, its row has their bars.
    progress: dict[str, list[int]] = {}
    for node_id in [node_id for node_id, step in steps.items() if step.item_index is not None]:
        item = steps.pop(node_id)
        counts = progress.setdefault(split_item_id(node_id)[0] or "", [0, 0])
        counts[0] += item.status in RunStep.FINISHED_STATUSES
        counts[1] += 1
    events = (
        RunEvent.objects.filter(
            run=run,
            type__in=[
                RunEvent.Type.STEP_STATUS,
                RunEvent.Type.LLM_CALL,
                RunEvent.Type.TOOL_CALL,
                RunEvent.Type.APPROVAL_DECIDED,
            ],
        )
        .order_by("seq")
        .only("seq", "type", "node_id", "attempt", "payload", "created_at")
    )
    attempts = [
        replace(attempt, node_id=map_id)
        if (map_id := split_item_id(attempt.node_id)[0]) is not None
        else attempt
        for attempt in step_attempts(events)
    ]
    tries: dict[str, int] = {}
    for attempt in attempts:
        if attempt.kind == "task":
            tries[attempt.node_id] = tries.get(attempt.node_id, 0) + 1
    picture: dict[str, Any] = {"step_legend": legend_items(STEP_LEGEND)}
    order = list(steps)
    try:
        layout = dag_layout(definition)
    except SparkOpsError as exc:
        picture["graph"] = {"error": str(exc.detail)}
    else:
        for node in layout.nodes:
            step = steps.get(node.id)
            node.status = step.status if step else "pending"
            node.attempts = tries.get(node.id, 0)
            node.error = str(((step.error or {}) if step else {}).get("message") or "")
            if node.id in progress:
                done, total = progress[node.id]
                node.progress = (
                    f"{total} iteration{'s' if total > 1 else ''}"
                    if node.type == "loop"
                    else f"{done}/{total} items"
                )
        picture["graph"] = _picture(layout, f"Run {run.pk}")
        order = [node_id for layer in layout.layers for node_id in layer]
    live = not run.is_finished
    end = run.finished_at or now
    timeline = gantt_layout(
        attempts,
        order=order,
        row_status={node_id: step.status for node_id, step in steps.items()},
        start=run.created_at,
        end=end,
    )
    picture.update(
        timeline=gantt_svg(timeline, now_line=live),
        bar_count=len(timeline.bars),
        span=humanize_seconds((end - run.created_at).total_seconds()),
        live=live,
        run=run,
        step_counts=_count_by_status(steps.values()),
        cost=money(run.cost),
    )
    return picture


def _count_by_status(steps: Any) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for step in steps:
        counts[step.status] = counts.get(step.status, 0) + 1
    return sorted((status.replace("_", " "), n) for status, n in counts.items())


def run_live_context(run: Run) -> dict[str, Any]:
    return {"picture": run_picture(run), "run": run}


def run_live_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """What the run page polls while the run is active: 204 while nothing happened since
    `seq` (one query), else the fresh picture as HTML."""
    run = _object_or_404(model_admin, request, object_id)
    if str(run.event_seq) == request.GET.get("seq") and not run.is_finished:
        return HttpResponse(status=204)
    html = render_to_string("console/_run_live.html", run_live_context(run), request=request)
    waiting = list(
        RunStep.objects.filter(run=run, status=RunStep.Status.WAITING_APPROVAL)
        .order_by("node_id")
        .values_list("node_id", flat=True)
    )
    return JsonResponse(
        {
            "seq": run.event_seq,
            "status": run.status,
            "finished": run.is_finished,
            "waiting": waiting,
            "html": html,
        }
    )


def run_stream_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponseBase:
    """The run's event stream for its page (runs.streams, as the API's `runs/{id}/stream`),
    behind the admin's checks instead of project membership: the operators reading a run's page
    are often superusers of no project, whom the API answers 404. Beyond the streams a user or
    this process may hold (the API's and the console's together): a JSON 429, as there."""
    run = _object_or_404(model_admin, request, object_id)
    try:
        return streams.event_stream_response(
            run.pk, after=streams.resume_after(request), user_id=request.user.pk
        )
    except Throttled as exc:
        response = JsonResponse({"type": "throttled", "detail": str(exc.detail)}, status=429)
        response["Retry-After"] = str(streams.RETRY_AFTER)  # what `acquire` asks for
        return response


def run_decide_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """Approve or reject one waiting step from the run's page."""
    if request.method != "POST":
        return HttpResponse(status=405)
    run = _object_or_404(model_admin, request, object_id)
    if not model_admin.may_write(request, run):
        raise PermissionDenied
    form = DecisionForm(request.POST)
    node_id = request.POST.get("node_id", "")
    approve = request.POST.get("decision") == "approve"
    if form.is_valid():
        try:
            run_services.step_decide(
                run=run,
                node_id=node_id,
                actor=request.user,
                approve=approve,
                comment=form.cleaned_data["comment"],
            )
        except SparkOpsError as exc:
            messages.error(request, f"{node_id}: {exc.detail}")
        else:
            verb = "Approved" if approve else "Rejected"
            messages.success(request, f"{verb} step {node_id}.")
    else:
        messages.error(request, f"{node_id}: {form.errors.as_text()}")
    return HttpResponseRedirect(reverse("admin:runs_run_change", args=[run.pk]))


RUN_OPERATIONS = {
    "cancel": ("Cancelled", lambda run, user: _services().run_cancel(run=run, actor=user)),
    "retry": ("Retried", lambda run, user: _services().run_retry(run=run, actor=user)),
    "resume": (
        "Resumed",
        lambda run, user: _services().run_retry(run=run, actor=user, from_failure=True),
    ),
}


def _services() -> Any:
    return services


def run_operation_view(
    model_admin: Any, request: HttpRequest, object_id: str, operation: str
) -> HttpResponse:
    """The run page's buttons: cancel, retry, retry from failure (POST)."""
    if request.method != "POST" or operation not in RUN_OPERATIONS:
        return HttpResponse(status=405)
    run = _object_or_404(model_admin, request, object_id)
    if not model_admin.may_write(request, run):
        raise PermissionDenied
    label, operate = RUN_OPERATIONS[operation]
    try:
        result = operate(run, request.user)
    except SparkOpsError as exc:
        messages.error(request, f"{operation}: {exc.detail}")
        return HttpResponseRedirect(reverse("admin:runs_run_change", args=[run.pk]))
    if result.pk != run.pk:
        messages.success(request, f"{label}: new run {str(result.pk)[:8]}.")
        return HttpResponseRedirect(reverse("admin:runs_run_change", args=[result.pk]))
    messages.success(request, f"{label} run {str(run.pk)[:8]}.")
    return HttpResponseRedirect(reverse("admin:runs_run_change", args=[run.pk]))


def decide_action(
    model_admin: Any, request: HttpRequest, steps: Any, *, approve: bool, action: str
) -> HttpResponse | None:
    """A bulk approve/reject admin action with an intermediate page for the comment. `steps`
    are the waiting steps concerned; each decision is reported on its own."""
    steps = list(steps.select_related("run__workflow"))
    form = DecisionForm(request.POST if request.POST.get("confirm") else None)
    if request.POST.get("confirm") and form.is_valid():
        done = 0
        for step in steps:
            if not model_admin.may_write(request, step):
                model_admin.message_user(
                    request, f"{step.node_id}: your role does not allow this.", messages.ERROR
                )
                continue
            try:
                run_services.step_decide(
                    run=step.run,
                    node_id=step.node_id,
                    actor=request.user,
                    approve=approve,
                    comment=form.cleaned_data["comment"],
                )
                done += 1
            except SparkOpsError as exc:
                model_admin.message_user(
                    request,
                    f"{step.node_id} of run {str(step.run_id)[:8]}: {exc.detail}",
                    messages.ERROR,
                )
        if done:
            verb = "Approved" if approve else "Rejected"
            model_admin.message_user(request, f"{verb} {done} step(s).", messages.SUCCESS)
        elif not steps:
            model_admin.message_user(request, "Nothing was waiting for approval.", messages.WARNING)
        return None
    context = _page(
        model_admin,
        request,
        ("Approve" if approve else "Reject") + " waiting steps",
        steps=steps,
        form=form,
        approve=approve,
        action=action,
        selected=request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
    )
    return render(request, "console/decide.html", context)


# --- dashboard ---------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%".replace(".0%", "%")


def dashboard_view(request: HttpRequest) -> HttpResponse:
    """The admin index with the dashboard above the app list."""
    projects = list(figures.visible_projects(request.user).order_by("name").only("pk", "name"))
    selected = next((p for p in projects if str(p.pk) == request.GET.get("project")), None)
    data = figures.dashboard(request.user, selected)
    order = RUN_STATUS_ORDER
    data["hourly_svg"] = stacked_bars_svg(
        [(b.start.strftime("%H:00"), b.counts) for b in data["hourly"]],
        order=order,
        label_every=3,
        empty="No runs in the last 24 hours.",
    )
    data["daily_svg"] = stacked_bars_svg(
        [(b.start.strftime("%b %d"), b.counts) for b in data["daily"]],
        order=order,
        label_every=5,
        empty="No runs in the last 30 days.",
    )
    data["spend_svg"] = stacked_bars_svg(
        [(b.start.strftime("%b %d"), {"spend": float(b.cost)}) for b in data["daily"]],
        order=["spend"],
        colors={"spend": "#7c3aed"},
        label_every=5,
        unit="$",
        empty="No spend in the last 30 days.",
    )
    top = max((row["total"] for row in data["spend_per_project"]), default=0) or 1
    for row in data["spend_per_project"]:
        row["share"] = float(row["total"] / top * 100)
        row["money"] = money(row["total"])
    slow_top = max((row["mean_ms"] for row in data["slowest"]), default=0) or 1
    for row in data["slowest"]:
        row["share"] = row["mean_ms"] / slow_top * 100
        row["mean"] = humanize_seconds(row["mean_ms"] / 1000)
        row["max"] = humanize_seconds(row["max_ms"] / 1000)
    for row in data["failing"]:
        row["rate_text"] = percent(row["rate"])
    totals = data["totals"]
    data.update(
        rate_24h=percent(totals.success_rate_24h),
        rate_30d=percent(totals.success_rate_30d),
        projects=projects,
        project=selected,
        p50=humanize_seconds(data["p50_ms"] / 1000) if data["p50_ms"] is not None else "—",
        p95=humanize_seconds(data["p95_ms"] / 1000) if data["p95_ms"] is not None else "—",
        spend_24h=money(totals.spend_24h),
        spend_30d=money(totals.spend_30d),
        status_legend=legend_items([(s, s.replace("_", " ")) for s in order]),
        celery=figures.celery_status(),
    )
    return admin.site.index(request, extra_context={"console": data})
