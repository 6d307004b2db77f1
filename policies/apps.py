from django.apps import AppConfig


class PoliciesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "policies"

    def ready(self) -> None:
        # Receivers import models, which exist only once the app registry is ready.
        from . import receivers  # noqa: F401  (connects the signal receivers)
