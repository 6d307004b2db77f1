"""Operator console for governance. Policies and budgets are saved through `policies.services`
(the forms' `clean()` runs the same validation as the API, so errors show on the form);
decisions, spend rows, usage and the audit log are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.admin_scoping import ProjectScopedAdmin, staff_member
from projects.models import Membership, Role
from sparkops.adminkit import (
    PrettyJSONField,
    ReadOnlyAdmin,
    ReadOnlyInline,
    ServiceAdmin,
    ServiceForm,
    add_service_errors,
    adopt,
    json_block,
)
from sparkops.audit import AuditEvent
from sparkops.errors import SparkOpsError

from . import services
from .budgets import spent
from .models import Budget, BudgetSpend, Policy, PolicyDecision, UsageRecord


class PolicyAdminForm(ServiceForm):
    rule = PrettyJSONField(help_text="A JSON object, validated for the kind (see the API docs).")

    class Meta:
        model = Policy
        fields = ["project", *Policy.EDITABLE_FIELDS]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.errors:
            return cleaned
        values = {name: cleaned.get(name) for name in services.POLICY_FIELDS}
        values["description"] = values["description"] or ""
        try:
            services.policy_clean(values=values)
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        self.service_values = values
        return cleaned


@admin.register(Policy)
class PolicyAdmin(ProjectScopedAdmin, ServiceAdmin):
    # Staff who are not superusers see their projects' policies and the global ones, and
    # change them with the API's role (admin; global ones: any staff, as in the API).
    write_role = Role.ADMIN
    form = PolicyAdminForm
    list_display = ["name", "scope", "kind", "mode", "enabled", "priority", "updated_at"]
    list_filter = ["kind", "mode", "enabled", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project"]
    search_fields = ["name", "description", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = ["created_by", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["project", "name", "description", "enabled"]}),
        ("Rule", {"fields": ["kind", "mode", "priority", "rule"]}),
        ("Audit", {"fields": ["created_by", "created_at", "updated_at"]}),
    ]
    create_only = ("project",)

    @admin.display(description="Scope", ordering="project__name")
    def scope(self, obj: Policy) -> str:
        return str(obj.project) if obj.project_id else "global"

    def save_model(self, request: HttpRequest, obj: Policy, form: Any, change: bool) -> None:
        values = dict(form.service_values)
        if change:
            saved = services.policy_update(
                policy=Policy.objects.get(pk=obj.pk), actor=request.user, **values
            )
        else:
            saved = services.policy_create(
                actor=request.user, project=form.cleaned_data.get("project"), **values
            )
        adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Policy) -> None:
        services.policy_delete(policy=obj, actor=request.user)


class BudgetAdminForm(ServiceForm):
    class Meta:
        model = Budget
        fields = ["project", *Budget.EDITABLE_FIELDS]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.errors:
            return cleaned
        project = self.instance.project if self.instance.pk else cleaned.get("project")
        if project is None:
            return cleaned
        values = {name: cleaned.get(name) for name in services.BUDGET_FIELDS}
        try:
            services.budget_clean(project=project, values=values)
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        self.service_values = values
        return cleaned


class BudgetSpendInline(ReadOnlyInline):
    model = BudgetSpend
    fields = ("period_start", "spend", "calls", "threshold_crossed_at", "limit_reached_at")
    readonly_fields = fields
    ordering = ["-period_start"]


@admin.register(Budget)
class BudgetAdmin(ProjectScopedAdmin, ServiceAdmin):
    write_role = Role.ADMIN
    form = BudgetAdminForm
    list_display = [
        "name",
        "project",
        "workflow",
        "agent",
        "period",
        "limit_usd",
        "soft_threshold",
        "action",
        "enabled",
        "current_spend",
    ]
    list_filter = ["period", "action", "enabled", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project", "workflow", "agent"]
    search_fields = ["name", "project__name", "project__slug"]
    autocomplete_fields = ["project", "workflow", "agent"]
    readonly_fields = ["current_spend", "created_by", "created_at", "updated_at"]
    inlines = [BudgetSpendInline]
    create_only = ("project",)

    @admin.display(description="Spent this period (USD)")
    def current_spend(self, obj: Budget) -> str:
        if obj.pk is None:
            return "-"
        return f"{spent(obj):.6f}"

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        values = dict(form.service_values)
        if change:
            saved = services.budget_update(
                budget=Budget.objects.get(pk=obj.pk), actor=request.user, **values
            )
        else:
            saved = services.budget_create(
                actor=request.user, project=form.cleaned_data["project"], **values
            )
        adopt(obj, saved)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # The scope was set by the service; the only inline (spend rows) is read-only.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        services.budget_delete(budget=obj, actor=request.user)


@admin.register(PolicyDecision)
class PolicyDecisionAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    list_display = [
        "created_at",
        "source_name",
        "kind",
        "mode",
        "point",
        "outcome",
        "project",
        "run",
    ]
    list_filter = ["outcome", "point", "kind", "mode"]
    list_select_related = ["project", "run"]
    search_fields = ["source_name", "reason", "node_id", "project__name", "project__slug"]
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "project",
        "policy",
        "budget",
        "source_name",
        "kind",
        "mode",
        "run",
        "workflow",
        "node_id",
        "attempt",
        "point",
        "outcome",
        "reason",
        "details_pretty",
        "key",
    )
    readonly_fields = fields

    @admin.display(description="Details")
    def details_pretty(self, obj: PolicyDecision) -> str:
        return json_block(obj.details)


_SPEND_COLUMNS = (
    "budget",
    "period_start",
    "spend",
    "calls",
    "threshold_crossed_at",
    "limit_reached_at",
)


@admin.register(BudgetSpend)
class BudgetSpendAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    scope_through = "budget"
    project_path = "budget.project"
    list_display = _SPEND_COLUMNS
    list_select_related = ["budget__project"]
    list_filter = [("budget__project", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["budget__name", "budget__project__name"]
    fields = (*_SPEND_COLUMNS, "updated_at")
    readonly_fields = fields


@admin.register(UsageRecord)
class UsageRecordAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    list_display = [
        "created_at",
        "project",
        "workflow",
        "agent",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cost",
    ]
    list_filter = ["provider", "price_unknown", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project", "workflow", "agent"]
    search_fields = ["model", "node_id", "project__name", "project__slug"]
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "project",
        "run",
        "workflow",
        "agent",
        "node_id",
        "attempt",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cost",
        "price_unknown",
    )
    readonly_fields = fields


@admin.register(AuditEvent)
class AuditEventAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    """Append-only: no add, change or delete, even for superusers."""

    list_display = [
        "created_at",
        "actor_email",
        "action",
        "object_type",
        "object_repr",
        "project_ref",
        "ip",
    ]
    list_filter = ["action", "object_type"]
    search_fields = ["actor_email", "action", "object_repr", "object_id"]
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "actor_id",
        "actor_email",
        "project_ref",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "changes_pretty",
        "ip",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # The audit log's readers, as in the API: admins and owners of the project (the model
        # sits in the bottom layer, which knows no roles, so the rule lives here).
        queryset = admin.ModelAdmin.get_queryset(self, request)
        if request.user.is_superuser:
            return queryset
        projects = Membership.objects.filter(
            user=staff_member(request), role__in=[Role.OWNER, Role.ADMIN]
        )
        return queryset.filter(project_id__in=projects.values("project_id"))

    @admin.display(description="Project")
    def project_ref(self, obj: AuditEvent) -> str:
        return str(obj.project_id or "-")

    @admin.display(description="Changes")
    def changes_pretty(self, obj: AuditEvent) -> str:
        return json_block(obj.changes)
