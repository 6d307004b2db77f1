from django.apps import AppConfig


class RunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "runs"

    def ready(self) -> None:
        from sparkops import tracing

        from . import observability, signals

        signals.events_appended.connect(observability.on_events_appended, dispatch_uid="obs-events")
        signals.usage_charged.connect(observability.on_usage_charged, dispatch_uid="obs-usage")
        signals.run_finished.connect(observability.on_run_finished, dispatch_uid="obs-finished")
        tracing.configure_from_settings()
