from __future__ import annotations

import re

from django import forms
from django.contrib import admin

from projects.admin_scoping import ProjectScopedAdmin

from . import services
from .models import Invitation, Membership, Project, Role, Secret


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Project)
class ProjectAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    project_path = ""
    write_role = Role.ADMIN
    list_display = ["name", "slug", "status", "owner", "is_public", "is_template", "created_at"]
    list_filter = ["status", "is_public", "is_template"]
    list_select_related = ["owner"]
    search_fields = ["name", "slug", "description", "owner__email"]
    autocomplete_fields = ["owner"]
    readonly_fields = ["id", "created_at", "updated_at"]
    prepopulated_fields = {"slug": ("name",)}
    date_hierarchy = "created_at"
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "project"
    write_role = Role.ADMIN
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "project"]
    search_fields = ["user__email", "project__name", "project__slug"]
    autocomplete_fields = ["user", "project"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Invitation)
class InvitationAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    """Invitations are made through the API (by project admins) and answered by the invited
    person; operators see them and may revoke pending ones here."""

    scope_through = "project"
    write_role = Role.ADMIN
    list_display = ["email", "project", "role", "status", "invited_by", "created_at", "expires_at"]
    list_filter = ["status", "role"]
    list_select_related = ["project", "invited_by"]
    search_fields = ["email", "project__name", "project__slug"]
    readonly_fields = [f.name for f in Invitation._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    @admin.action(description="Revoke the selected pending invitations")
    def revoke(self, request, queryset):  # type: ignore[no-untyped-def]
        revoked = 0
        for invitation in queryset.filter(status=Invitation.Status.PENDING):
            services.invitation_revoke(invitation=invitation, actor=request.user)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} invitation(s).")


class SecretAdminForm(forms.ModelForm):
    new_value = forms.CharField(
        label="Value",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the current value.",
    )

    class Meta:
        model = Secret
        fields = ["project", "name", "description"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not re.match(Secret.NAME_RE, name):
            raise forms.ValidationError(
                "Letters, digits and underscores; not starting with a digit."
            )
        return name

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.instance.pk is None and not cleaned.get("new_value"):
            self.add_error("new_value", "A new secret needs a value.")
        return cleaned


@admin.register(Secret)
class SecretAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    write_role = Role.ADMIN
    """Values are write-only: the form never renders the stored value or its ciphertext."""

    form = SecretAdminForm
    list_display = ["name", "project", "created_at", "updated_at", "last_used_at"]
    list_select_related = ["project"]
    list_filter = [("project", admin.RelatedOnlyFieldListFilter)]  # only projects in view
    search_fields = ["name", "description", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = ["created_by", "created_at", "updated_at", "last_used_at"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "project", "name"] if obj else fields

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        value = form.cleaned_data.get("new_value")
        project = obj.project
        if value:
            saved = services.secret_set(
                project=project,
                actor=request.user,
                name=obj.name,
                value=value,
                description=obj.description,
            )
            obj.pk = saved.pk
        elif change:
            Secret.objects.filter(pk=obj.pk).update(description=obj.description)


# Outbound webhook endpoints and deliveries; files (read-only rows, download, delete).
from . import files_admin, webhook_admin  # noqa: E402, F401
