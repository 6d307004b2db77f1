from __future__ import annotations

from django.contrib import admin

from .models import Membership, Project


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
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
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "project"]
    search_fields = ["user__email", "project__name", "project__slug"]
    autocomplete_fields = ["user", "project"]
    readonly_fields = ["created_at", "updated_at"]
