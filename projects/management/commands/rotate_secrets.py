from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from projects import services


class Command(BaseCommand):
    help = (
        "Re-encrypt every project secret with the first key of SPARKOPS_SECRET_KEYS. Prepend a new "
        "key, run this, then drop the old key."
    )

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        count = services.secrets_rotate()
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {count} secret(s)."))
