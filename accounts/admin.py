from __future__ import annotations

import contextlib

from django import forms
from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm as BaseUserChangeForm
from django.contrib.auth.forms import UserCreationForm as BaseUserCreationForm
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from rest_framework_simplejwt.token_blacklist.admin import (
    BlacklistedTokenAdmin as BaseBlacklistedTokenAdmin,
)
from rest_framework_simplejwt.token_blacklist.admin import (
    OutstandingTokenAdmin as BaseOutstandingTokenAdmin,
)
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from .models import APIKey, User


class UserCreationForm(BaseUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "name")


class UserChangeForm(BaseUserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "name", "is_active", "is_staff", "date_joined", "last_login"]
    list_filter = ["is_active", "is_staff", "is_superuser"]
    search_fields = ["email", "name"]
    readonly_fields = ["date_joined", "last_login"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name", "settings")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "name", "password1", "password2")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        # Staff who are not superusers see themselves and the members of their projects (as
        # the API's member lists do), and so do the user autocompletes and raw-id pop-ups of
        # every other admin, which read this queryset.
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        co_members = User.objects.filter(
            memberships__project__memberships__user=request.user
        ).values("pk")
        return queryset.filter(Q(pk=request.user.pk) | Q(pk__in=co_members))


class APIKeyForm(forms.ModelForm):
    class Meta:
        model = APIKey
        fields = ["name", "expires_at", "revoked_at"]


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys are issued through the API (the raw key is shown once there); operators can only
    inspect, expire or revoke them here."""

    form = APIKeyForm
    list_display = [
        "name",
        "user",
        "prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at", "expires_at"]
    list_select_related = ["user"]
    search_fields = ["name", "prefix", "user__email"]
    readonly_fields = ["user", "prefix", "hashed_key", "created_at", "last_used_at"]
    raw_id_fields = ["user"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        # Keys belong to users, not projects: staff who are not superusers see their own.
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)


for _model in (OutstandingToken, BlacklistedToken):
    with contextlib.suppress(NotRegistered):
        admin.site.unregister(_model)

# simplejwt's token admins list every user's refresh tokens, and the change page shows the
# token itself: enough to take over an account. Staff who are not superusers see their own.


@admin.register(OutstandingToken)
class OutstandingTokenAdmin(BaseOutstandingTokenAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        user = request.user
        return queryset if user.is_superuser else queryset.filter(user=user)


@admin.register(BlacklistedToken)
class BlacklistedTokenAdmin(BaseBlacklistedTokenAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        user = request.user
        return queryset if user.is_superuser else queryset.filter(token__user=user)
