from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "workflows"

    def ready(self) -> None:
        # Receivers import models, which exist only once the app registry is ready.
        from django.db.models.signals import post_delete

        from agents import signals as agent_signals
        from projects.signals import project_status_changed

        from . import receivers
        from .models import Schedule

        agent_signals.agent_used_by.connect(
            receivers.workflows_using_agent, dispatch_uid="workflows.agent_users"
        )
        project_status_changed.connect(
            receivers.on_project_status_changed, dispatch_uid="workflows.project_status"
        )
        post_delete.connect(
            receivers.on_schedule_deleted, sender=Schedule, dispatch_uid="workflows.schedule_gone"
        )
