from agents.tests.factories import AgentFactory
from tests.routes import ObjectRoute


def _agent(cast):
    return {"pk": AgentFactory(project=cast.project).pk}


def _version(cast):
    return {"pk": AgentFactory(project=cast.project).pk, "number": 1}


def _project(cast):
    return {"project_pk": cast.project.pk}


def _project_agent(cast):
    return {"project_pk": cast.project.pk, "pk": AgentFactory(project=cast.project).pk}


ROUTES = {
    "agent-detail": ObjectRoute(_agent),
    "agent-versions": ObjectRoute(_agent),
    "agent-version-detail": ObjectRoute(_version),
    "agent-rollback": ObjectRoute(_agent),
    "agent-test": ObjectRoute(_agent),
    "project-agent-list": ObjectRoute(_project),
    "project-agent-detail": ObjectRoute(_project_agent),
}
