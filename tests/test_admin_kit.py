"""The admin kit's promises across the whole admin registry."""

from __future__ import annotations

from django.contrib import admin

from sparkops.adminkit import ServiceAdmin


def test_every_admin_deleting_through_a_service_bulk_deletes_through_it_too():
    """An admin whose `delete_model` calls a service is a `ServiceAdmin`: its "delete selected"
    calls `delete_model` for each object (checked and audited as one delete is), where a plain
    ModelAdmin's would be one `queryset.delete()` past the service."""
    deleting = {
        model._meta.label: model_admin
        for model, model_admin in admin.site._registry.items()
        if type(model_admin).delete_model is not admin.ModelAdmin.delete_model
    }
    assert len(deleting) >= 9, sorted(deleting)
    for label, model_admin in deleting.items():
        assert isinstance(model_admin, ServiceAdmin), label
        assert type(model_admin).delete_queryset is ServiceAdmin.delete_queryset, label
