from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "workflows"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from runs import signals

        from . import receivers
        from .models import Schedule

        signals.run_finished.connect(receivers.on_run_finished, dispatch_uid="workflows.triggers")
        post_delete.connect(
            receivers.on_schedule_deleted, sender=Schedule, dispatch_uid="workflows.schedule_gone"
        )
