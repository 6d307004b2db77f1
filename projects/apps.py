from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "projects"

    def ready(self) -> None:
        from runs import signals

        from . import receivers

        signals.events_appended.connect(
            receivers.on_events_appended, dispatch_uid="projects.webhook_outbox"
        )
