from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class SparkOpsAdminConfig(AdminConfig):
    """`django.contrib.admin` with our site (see `site.py`). Kept apart from the site because
    an app config's module is imported before models are ready."""

    default_site = "sparkops.console.site.SparkOpsAdminSite"

    def ready(self) -> None:
        super().ready()  # every app's admin.py
        # The ModelAdmins that show or start runs (workflows, runs, triggers) are the console's,
        # above the engine; they register once models are ready, hence this import here.
        from . import runs_admin, triggers_admin, workflows_admin  # noqa: F401
