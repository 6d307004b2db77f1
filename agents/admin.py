from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.admin_scoping import ProjectScopedAdmin
from projects.models import Role
from sparkops.adminkit import (
    PrettyJSONField,
    ServiceAdmin,
    ServiceForm,
    VersionAdmin,
    VersionedAdmin,
    VersionInline,
    add_service_errors,
    adopt,
    for_each_writable,
)
from sparkops.errors import SparkOpsError

from . import services
from .models import Agent, AgentVersion, ModelPrice


class AgentAdminForm(ServiceForm):
    """Validated by `services.agent_clean`, the same check as the API; the admin then saves
    through the services (so versions are written)."""

    response_format = PrettyJSONField(
        required=False, help_text="Empty (null) for a text reply, or a JSON Schema."
    )
    settings = PrettyJSONField(required=False, help_text="A JSON object of provider options.")
    # The model's URLField refuses bare hosts such as http://ollama:11434/v1.
    base_url = forms.CharField(max_length=500, required=False)
    slug = forms.CharField(
        max_length=100, required=False, help_text="Derived from the name when left empty."
    )

    class Meta:
        model = Agent
        fields = ["project", *Agent.EDITABLE_FIELDS]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        project = self.instance.project if self.instance.pk else cleaned.get("project")
        if project is None:
            return cleaned
        values = {name: cleaned.get(name) for name in services.CONFIG_FIELDS}
        values["tools"] = list(cleaned.get("tools") or [])
        if values["settings"] is None:
            values["settings"] = {}
        current = Agent.objects.get(pk=self.instance.pk) if self.instance.pk else None
        try:
            services.agent_clean(project=project, values=values, agent=current)
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        self.service_values = values
        return cleaned


class AgentVersionInline(VersionInline):
    model = AgentVersion


@admin.register(Agent)
class AgentAdmin(ProjectScopedAdmin, VersionedAdmin):
    form = AgentAdminForm
    list_display = [
        "name",
        "slug",
        "project",
        "provider",
        "model",
        "status",
        "version",
        "updated_at",
    ]
    list_filter = ["provider", "status", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project"]
    search_fields = ["name", "slug", "description", "model", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    filter_horizontal = ["tools"]
    readonly_fields = ["version", "created_by", "created_at", "updated_at"]
    date_hierarchy = "created_at"
    inlines = [AgentVersionInline]
    actions = ["enable", "disable"]
    fieldsets = [
        (None, {"fields": ["project", "name", "slug", "description", "status"]}),
        (
            "Model",
            {"fields": ["provider", "model", "base_url", "credentials_secret", "settings"]},
        ),
        (
            "Behaviour",
            {
                "fields": [
                    "system_prompt",
                    "temperature",
                    "max_tokens",
                    "max_iterations",
                    "response_format",
                    "tools",
                ]
            },
        ),
        ("Audit", {"fields": ["version", "created_by", "created_at", "updated_at"]}),
    ]

    # An agent stays in its project (secrets, tools).
    create_only = ("project",)

    def save_model(self, request: HttpRequest, obj: Agent, form: Any, change: bool) -> None:
        values = dict(form.service_values)
        if change:
            current = Agent.objects.get(pk=obj.pk)
            agent = services.agent_update(agent=current, actor=request.user, **values)
        else:
            agent = services.agent_create(
                actor=request.user, project=form.cleaned_data["project"], **values
            )
        adopt(obj, agent)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Tools were set by the service (with the version); only inlines are left, and the
        # versions inline is read-only.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Agents used by a workflow are shown as protected, so the admin refuses to delete
        # them the same way agent_delete does.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        protected = list(protected)
        for agent in objs:
            for name in services.agent_usage(agent=agent):
                protected.append(f"Workflow “{name}” uses agent “{agent}”")
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        services.agent_delete(agent=obj, actor=request.user)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Agent], status: str) -> None:
        changed = for_each_writable(
            self,
            request,
            queryset,
            lambda agent: services.agent_set_status(agent=agent, actor=request.user, status=status),
        )
        self.message_user(request, f"{changed} agent(s) set to {status}.", messages.SUCCESS)

    @admin.action(description="Enable selected agents")
    def enable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, Agent.Status.ACTIVE)

    @admin.action(description="Disable selected agents")
    def disable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, Agent.Status.DISABLED)


@admin.register(AgentVersion)
class AgentVersionAdmin(ProjectScopedAdmin, VersionAdmin):
    versioned = "agent"
    list_filter = [("agent__project", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["agent__name", "agent__slug", "agent__project__name"]


class ModelPriceAdminForm(ServiceForm):
    """Checked by the same services as the API (`model_price_clean`, the uniqueness check)."""

    class Meta:
        model = ModelPrice
        fields = ["project", *ModelPrice.EDITABLE_FIELDS]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.errors:
            return cleaned
        values = {name: cleaned.get(name) for name in ModelPrice.EDITABLE_FIELDS}
        if values["valid_from"] is None:
            values.pop("valid_from")
        project = self.instance.project if self.instance.pk else cleaned.get("project")
        candidate = ModelPrice(pk=self.instance.pk, project=project, **values)
        try:
            services.model_price_clean(values)
            services.model_price_check_unique(price=candidate)
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        self.service_values = values
        return cleaned


@admin.register(ModelPrice)
class ModelPriceAdmin(ProjectScopedAdmin, ServiceAdmin):
    """Operators keep the global price table; staff who are not superusers see the overrides
    of their projects and change those of projects they administer. Saves go through the
    services, as in the API."""

    write_role = Role.ADMIN
    form = ModelPriceAdminForm
    list_display = [
        "provider",
        "model_pattern",
        "scope",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "valid_from",
    ]
    list_filter = ["provider", ("project", admin.EmptyFieldListFilter)]
    list_select_related = ["project"]
    search_fields = ["model_pattern", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = ["created_at", "updated_at"]
    create_only = ("project",)

    @admin.display(description="Scope", ordering="project__name")
    def scope(self, obj: ModelPrice) -> str:
        return obj.project.name if obj.project_id else "global"

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        values = dict(form.service_values)
        if change:
            saved = services.model_price_update(
                price=ModelPrice.objects.get(pk=obj.pk), actor=request.user, **values
            )
        else:
            saved = services.model_price_create(
                actor=request.user, project=form.cleaned_data.get("project"), **values
            )
        adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: ModelPrice) -> None:
        services.model_price_delete(price=obj, actor=request.user)
