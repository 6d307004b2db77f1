"""What every app's admin shares: JSON shown indented (as a form field and as a read-only
block), a service's InvalidInput turned into form errors, a service's saved row handed back to
the admin, read-only admins and inlines, and the pages of immutable versions."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Model, QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from sparkops.errors import SparkOpsError


class _Encoder(DjangoJSONEncoder):
    def default(self, o: Any) -> Any:
        try:
            return super().default(o)
        except TypeError:
            return str(o)  # shown to an operator, never parsed back


def pretty_json(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, cls=_Encoder)


def json_block(value: Any) -> str:
    """Read-only JSON for a detail page, wrapped and indented."""
    return format_html('<pre class="console-json">{}</pre>', pretty_json(value))


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows the stored value indented (`indent=None`: on one line); text
    that does not parse comes back as typed, with the parse error on the field."""

    def __init__(self, *, rows: int = 12, indent: int | None = 2, **kwargs: Any) -> None:
        attrs = {"rows": rows, "cols": 90, "class": "console-json-input"}
        kwargs.setdefault("widget", forms.Textarea(attrs=attrs))
        super().__init__(**kwargs)
        self.indent = indent

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return pretty_json(value, indent=self.indent)


class ServiceForm(forms.ModelForm):
    """A model form whose validation is a service's (called from `clean()`) and whose saving is
    too (the admin's `save_model`): the values are only copied onto the instance, for the
    admin's log and messages, without the model's own `full_clean()`."""

    def _post_clean(self) -> None:
        opts = self._meta
        self.instance = construct_instance(self, self.instance, opts.fields, opts.exclude)


def add_service_errors(
    form: forms.BaseForm, exc: SparkOpsError, *, fields: Collection[str] | None = None
) -> None:
    """Put a service's error on the form: each `errors` key on the field it starts with
    (`definition.nodes[0].id` on `definition`, prefixed with the full key), when the form has
    that field (and it is among `fields`, when given); the rest, and a bare `detail`, as
    errors of the whole form. A field that already failed its own check (JSON that does not
    parse) keeps that error alone."""
    if not exc.errors:
        form.add_error(None, str(exc.detail))
        return
    failed = set(form.errors)
    for key, problems in exc.errors.items():
        field = key.split(".", 1)[0].split("[", 1)[0]
        on_field = field in form.fields and (fields is None or field in fields)
        if on_field and field in failed:
            continue
        for problem in problems if isinstance(problems, list) else [problems]:
            if on_field:
                form.add_error(field, problem if key == field else f"{key}: {problem}")
            elif key == "__all__":
                form.add_error(None, str(problem))
            else:
                form.add_error(None, f"{key}: {problem}")


def error_text(exc: SparkOpsError) -> str:
    """A service's error in one line for an admin message: the detail, then each field's
    problems."""
    errors = "; ".join(
        f"{key}: {', '.join(map(str, problems if isinstance(problems, list) else [problems]))}"
        for key, problems in (exc.errors or {}).items()
    )
    return f"{exc.detail} {errors}".strip()


def for_each_writable(
    model_admin: Any, request: HttpRequest, objs: Iterable[Any], act: Callable[[Any], object]
) -> int:
    """An admin action's loop: `act(obj)` (a service call) on each object the staff member may
    change (`ProjectScopedAdmin.may_write`), each refusal and service error reported against
    its object, and a message `act` returns (a string) as a success. Returns how many
    succeeded."""
    done = 0
    for obj in objs:
        if not model_admin.may_write(request, obj):
            model_admin.message_user(
                request, f"{obj}: your role does not allow this.", messages.ERROR
            )
            continue
        try:
            message = act(obj)
        except SparkOpsError as exc:
            model_admin.message_user(request, f"{obj}: {error_text(exc)}", messages.ERROR)
            continue
        done += 1
        if isinstance(message, str):
            model_admin.message_user(request, message, messages.SUCCESS)
    return done


def admin_page(model_admin: Any, view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A console page of `model_admin` for its `get_urls()`: `view(model_admin, request, ...)`
    behind the admin's sign-in and staff check."""
    return model_admin.admin_site.admin_view(
        lambda request, *args, **kwargs: view(model_admin, request, *args, **kwargs)
    )


def adopt(obj: Model, saved: Model) -> None:
    """After a service saved `saved`, make the admin's `obj` that row: the admin goes on with
    `obj` (log entry, messages, redirect, inlines)."""
    for field in type(saved)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


class ServiceAdmin(admin.ModelAdmin):
    """The admin of a model its app's services write (the subclass's `save_model` and
    `delete_model` call them): a bulk delete goes through `delete_model` one object at a time,
    so each is checked and audited as a single delete is, and the `create_only` fields are
    chosen on create and read-only afterwards."""

    create_only: tuple[str, ...] = ()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += self.create_only
        return fields

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


def present(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The values among `names` that a form's cleaned data has: a service's keyword arguments."""
    return {name: data[name] for name in names if name in data}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the platform: viewable, never added, changed or deleted by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown under their parent, never added, changed or deleted there."""

    extra = 0
    max_num = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


VERSION_FIELDS = ["number", "created_by", "created_at", "snapshot_pretty"]


class VersionInline(ReadOnlyInline):
    """The versions (a `VersionBase` model) under the object they belong to, newest first."""

    fields = [*VERSION_FIELDS]
    readonly_fields = [*VERSION_FIELDS]
    ordering = ["-number"]
    show_change_link = True

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: Any) -> str:
        return json_block(obj.snapshot)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("created_by")


class VersionAdmin(ReadOnlyAdmin):
    """The list and detail pages of a `VersionBase` model. A subclass names `versioned`, the
    foreign key to the versioned object (`"agent"`); the columns, fields, ordering and the
    scoping through that object (`ProjectScopedAdmin`'s `scope_through` and `project_path`,
    put first in the bases) follow from it unless the subclass sets them."""

    versioned = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.versioned
        if not name:
            return

        @admin.display(description="Project", ordering=f"{name}__project__name")
        def project(self: VersionAdmin, obj: Any) -> Any:
            return getattr(obj, name).project

        defaults = {
            "project": project,
            "scope_through": name,
            "project_path": f"{name}.project",
            "list_display": [name, "number", "project", "created_by", "created_at"],
            "list_select_related": [f"{name}__project", "created_by"],
            "fields": [name, *VERSION_FIELDS],
            "readonly_fields": [name, *VERSION_FIELDS],
            "ordering": [name, "-number"],
        }
        for attr, value in defaults.items():
            if attr not in cls.__dict__:
                setattr(cls, attr, value)

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: Any) -> str:
        return json_block(obj.snapshot)


class VersionedAdmin(ServiceAdmin):
    """The admin of a versioned model (written by its services, as every `ServiceAdmin`): its
    versions cannot be deleted by hand (`VersionAdmin`) but go with their object, so they are
    not a missing permission on its delete page."""

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        versions = self.model._meta.get_field("versions").related_model
        perms_needed = set(perms_needed) - {str(versions._meta.verbose_name)}
        return deleted, counts, perms_needed, protected
