from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class SparkOpsAdminConfig(AdminConfig):
    """`django.contrib.admin` with our site (see `site.py`). Kept apart from the site because
    an app config's module is imported before models are ready."""

    default_site = "sparkops.console.site.SparkOpsAdminSite"
