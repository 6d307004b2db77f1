from django.apps import AppConfig
from django.db.models.signals import post_delete


class ProjectsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "projects"

    def ready(self) -> None:
        # Models and what imports them load only once the app registry is ready.
        from . import files
        from .models import File

        post_delete.connect(files.bytes_follow_rows, sender=File, dispatch_uid="file-bytes")
