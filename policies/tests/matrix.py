"""Cross-tenant routes of the policies app: each builds an object in cast.project."""

from policies.models import PolicyDecision
from policies.tests.factories import make_budget, make_policy
from tests.routes import ObjectRoute


def _policy(cast):
    return {"pk": make_policy(cast.project, cast.owner, "pii", {}).pk}


def _budget(cast):
    return {"pk": make_budget(cast.project, cast.owner).pk}


def _decision(cast):
    decision = PolicyDecision.objects.create(
        project=cast.project,
        source_name="p",
        kind="pii",
        mode="enforce",
        point="prompt",
        outcome="redact",
        reason="r",
    )
    return {"pk": decision.pk}


def _project(cast):
    return {"project_pk": cast.project.pk}


ROUTES = {
    "policy-detail": ObjectRoute(_policy),
    "budget-detail": ObjectRoute(_budget),
    "budget-usage": ObjectRoute(_budget),
    "policy-decision-detail": ObjectRoute(_decision),
    "project-usage": ObjectRoute(_project),
    # The audit log is for admins and owners: a viewer may not read it.
    "project-audit-list": ObjectRoute(_project, viewer_read=403),
}
