"""Compare Schedules with the django-celery-beat entries mirroring them; exit 1 on drift.

manage.py check_schedules          # report (exit status 1 if anything differs)
manage.py check_schedules --fix    # re-sync every schedule, drop orphan entries
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from workflows import schedules


class Command(BaseCommand):
    help = "Check that every Schedule matches its django-celery-beat PeriodicTask (exit 1 if not)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--fix", action="store_true", help="Re-sync every schedule before checking."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["fix"]:
            count = schedules.schedules_sync_all()
            self.stdout.write(f"Re-synced {count} schedule(s).")
        drift = schedules.schedule_drift()
        if not drift:
            self.stdout.write(self.style.SUCCESS("Schedules and beat entries are in sync."))
            return
        for line in drift:
            self.stderr.write(line)
        self.stderr.write(self.style.ERROR(f"{len(drift)} difference(s); run with --fix."))
        raise SystemExit(1)
