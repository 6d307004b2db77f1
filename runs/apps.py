from django.apps import AppConfig


class RunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "runs"

    def ready(self) -> None:
        # Receivers import models, which exist only once the app registry is ready.
        from sparkops import metrics, tracing

        from . import (
            checks,  # noqa: F401  (registers the engine's system checks)
            observability,
            signals,
            webhooks,
        )
        from .triggers import receivers as triggers
        from .triggers import subworkflows

        # What reads the engine's news listens to its signals; the engine calls none of it.
        # Outbound webhooks and triggers first (the order they had as projects' and workflows').
        signals.events_appended.connect(
            webhooks.on_events_appended, dispatch_uid="projects.webhook_outbox"
        )
        signals.run_finished.connect(triggers.on_run_finished, dispatch_uid="workflows.triggers")
        signals.run_finished.connect(subworkflows.on_run_finished, dispatch_uid="runs.subworkflows")
        signals.events_appended.connect(observability.on_events_appended, dispatch_uid="obs-events")
        signals.usage_charged.connect(observability.on_usage_charged, dispatch_uid="obs-usage")
        signals.run_finished.connect(observability.on_run_finished, dispatch_uid="obs-finished")
        metrics.add_scrape_collector(observability.DatabaseCollector())
        tracing.configure_from_settings()
