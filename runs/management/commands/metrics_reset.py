"""`manage.py metrics_reset`: empty prometheus-client's multiprocess directory. Run it while no
web or worker process is up (`make run` does, before starting them)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from sparkops import metrics


class Command(BaseCommand):
    help = "Empty PROMETHEUS_MULTIPROC_DIR (only while no web or worker process is running)."

    def handle(self, *args: Any, **options: Any) -> None:
        path = metrics.reset_multiprocess_dir()
        if path:
            self.stdout.write(f"Emptied {path}")
        else:
            self.stdout.write("PROMETHEUS_MULTIPROC_DIR is off: nothing to reset.")
