from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest

from sparkops.adminkit import PrettyJSONField, json_block
from sparkops.console.scoping import ProjectScopedAdmin
from sparkops.errors import SparkOpsError

from . import services
from .models import Agent, AgentVersion


class AgentAdminForm(forms.ModelForm):
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
        fields = [
            "project",
            "name",
            "slug",
            "description",
            "status",
            "provider",
            "model",
            "base_url",
            "credentials_secret",
            "system_prompt",
            "temperature",
            "max_tokens",
            "max_iterations",
            "response_format",
            "settings",
            "tools",
        ]

    def _post_clean(self) -> None:
        # Only copy the values onto the instance (for the admin's log and messages). No
        # model.full_clean(): agent_clean below is the one validation, and saving is the
        # services' job.
        opts = self._meta
        self.instance = construct_instance(self, self.instance, opts.fields, opts.exclude)

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
            for field, problems in (exc.errors or {"__all__": [exc.detail]}).items():
                target = field if field in self.fields else None
                for problem in problems if isinstance(problems, list) else [problems]:
                    self.add_error(target, str(problem))
        self.service_values = values
        return cleaned


class AgentVersionInline(admin.TabularInline):
    model = AgentVersion
    fields = ["number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    ordering = ["-number"]

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: AgentVersion) -> str:
        return json_block(obj.snapshot)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Agent)
class AgentAdmin(ProjectScopedAdmin, admin.ModelAdmin):
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

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("project")  # an agent stays in its project (secrets, tools)
        return fields

    def save_model(self, request: HttpRequest, obj: Agent, form: Any, change: bool) -> None:
        values = dict(form.service_values)
        if change:
            current = Agent.objects.get(pk=obj.pk)
            agent = services.agent_update(agent=current, actor=request.user, **values)
        else:
            agent = services.agent_create(
                actor=request.user, project=form.cleaned_data["project"], **values
            )
        # The admin goes on with `obj` (log entry, redirect): make it the saved row.
        obj.pk = agent.pk
        obj.slug = agent.slug
        obj.version = agent.version
        obj._state.adding = False
        obj._state.db = agent._state.db

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Tools were set by the service (with the version); only inlines are left, and the
        # versions inline is read-only.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Agents used by a workflow are shown as protected, so the admin refuses to delete
        # them the same way agent_delete does.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Versions cannot be deleted by hand, but they go with their agent.
        perms_needed = set(perms_needed) - {str(AgentVersion._meta.verbose_name)}
        protected = list(protected)
        for agent in objs:
            for name in services.agent_usage(agent=agent):
                protected.append(f"Workflow “{name}” uses agent “{agent}”")
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        services.agent_delete(agent=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            services.agent_delete(agent=agent, actor=request.user)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Agent], status: str) -> None:
        changed = 0
        for agent in queryset:
            if not self.may_write(request, agent):
                self.message_user(
                    request, f"{agent}: your role does not allow this.", messages.ERROR
                )
                continue
            try:
                services.agent_set_status(agent=agent, actor=request.user, status=status)
                changed += 1
            except SparkOpsError as exc:
                self.message_user(request, f"{agent}: {exc.detail}", messages.ERROR)
        self.message_user(request, f"{changed} agent(s) set to {status}.", messages.SUCCESS)

    @admin.action(description="Enable selected agents")
    def enable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, Agent.Status.ACTIVE)

    @admin.action(description="Disable selected agents")
    def disable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._set_status(request, queryset, Agent.Status.DISABLED)


@admin.register(AgentVersion)
class AgentVersionAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    """Versions are immutable: readable, never added, changed or deleted by hand."""

    scope_through = "agent"
    project_path = "agent.project"

    list_display = ["agent", "number", "project", "created_by", "created_at"]
    list_select_related = ["agent__project", "created_by"]
    list_filter = [("agent__project", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["agent__name", "agent__slug", "agent__project__name"]
    fields = ["agent", "number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields
    ordering = ["agent", "-number"]

    @admin.display(description="Project", ordering="agent__project__name")
    def project(self, obj: AgentVersion) -> Any:
        return obj.agent.project

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: AgentVersion) -> str:
        return json_block(obj.snapshot)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
