import io

import pytest
from django.core.management import call_command

from accounts.models import User
from projects.models import Membership, Project

pytestmark = pytest.mark.django_db


def test_seed_demo_is_idempotent():
    call_command("seed_demo", stdout=io.StringIO())
    counts = (User.objects.count(), Project.objects.count(), Membership.objects.count())
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert (User.objects.count(), Project.objects.count(), Membership.objects.count()) == counts
    assert "nothing created" in out.getvalue()
    user = User.objects.get(email="demo@sparkops.local")
    assert user.check_password("sparkops-demo")
    assert Membership.objects.get(user=user, project__slug="demo").role == "owner"
