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
    "agent-diff": ObjectRoute(_agent),
    "agent-version-detail": ObjectRoute(_version),
    "agent-rollback": ObjectRoute(_agent),
    "agent-test": ObjectRoute(_agent),
    "project-agent-list": ObjectRoute(_project),
    "project-agent-detail": ObjectRoute(_project_agent),
}


def _model_price(cast):
    from agents import services

    price = services.model_price_create(
        actor=cast.owner,
        project=cast.project,
        provider="openai_compatible",
        model_pattern="llama*",
        input_per_million=1,
        output_per_million=2,
    )
    return {"pk": price.pk}


# A project's own model prices: its admins write them, its viewers get 403.
ROUTES["model-price-detail"] = ObjectRoute(_model_price)
