"""Creates the demo user and project. Idempotent: a second run creates nothing new."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import User
from projects import services
from projects.models import Project

DEMO_EMAIL = "demo@sparkops.local"
DEMO_PROJECT_SLUG = "demo"


class Command(BaseCommand):
    help = "Create the demo user (demo@sparkops.local) and the demo project, if missing."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--password",
            default=os.environ.get("SPARKOPS_DEMO_PASSWORD", "sparkops-demo"),
            help="Password for a newly created demo user (env SPARKOPS_DEMO_PASSWORD).",
        )

    @transaction.atomic
    def handle(self, *args: Any, password: str, **options: Any) -> None:
        created = []
        user = User.objects.filter(email=DEMO_EMAIL).first()
        if user is None:
            user = User.objects.create_user(email=DEMO_EMAIL, password=password, name="Demo User")
            created.append(f"user {DEMO_EMAIL}")
        project = Project.objects.filter(slug=DEMO_PROJECT_SLUG).first()
        if project is None:
            project = services.project_create(
                actor=user,
                name="Demo",
                slug=DEMO_PROJECT_SLUG,
                description="A demo project with a simulated agent: runs with no API key.",
            )
            created.append(f"project {project.slug}")
        if created:
            self.stdout.write(self.style.SUCCESS(f"Created {', '.join(created)}."))
        else:
            self.stdout.write("Demo data already present; nothing created.")
