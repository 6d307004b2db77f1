"""Writes for agents, and the provider plumbing the `test` endpoint and the run engine share.

Every create or change goes through `agent_clean` (also used by the admin form), and every
change of the configuration writes an immutable `AgentVersion`."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.utils.text import slugify
from jsonschema.exceptions import SchemaError

from accounts.models import User
from projects.models import Membership, Project, Role, Secret
from projects.secrets import SecretBag
from sparkops import egress
from sparkops.audit import audit_record
from sparkops.errors import Conflict, Forbidden, InvalidInput, SparkOpsError
from sparkops.regex import check_user_schema
from sparkops.services import duplicate_as, object_update
from sparkops.versioning import version_record, version_restore_fields
from tools.mcp_services import check_attachments
from tools.models import Tool

from . import signals
from .models import Agent, AgentVersion, ModelPrice
from .providers import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ProviderConfig,
    ProviderError,
    ToolSpec,
    get_provider,
)
from .providers.base import config_error
from .providers.simulated import SimulatedProvider

# The plain fields a caller may set (the many-to-many `tools` is set apart).
CONFIG_FIELDS = tuple(name for name in Agent.EDITABLE_FIELDS if name != "tools")
EDITABLE = frozenset(Agent.EDITABLE_FIELDS)
# What a version pins and a rollback restores. Not the slug (workflows address the agent by
# it, so a rollback must not move it) and not the status (switching an agent off and on is
# operations, not configuration, and a rollback must not silently re-enable it).
VERSIONED_FIELDS = [name for name in Agent.EDITABLE_FIELDS if name not in ("slug", "status")]
DEFAULTS: dict[str, Any] = {
    "slug": "",
    "description": "",
    "base_url": "",
    "credentials_secret": "",
    "system_prompt": "",
    "temperature": None,
    "max_tokens": None,
    "max_iterations": 8,
    "response_format": None,
    "settings": {},
    "status": Agent.Status.ACTIVE,
    "tools": [],
    "mcp_tools": [],
}

# Providers that cannot be called without an API key.
NEEDS_CREDENTIALS = {Agent.Provider.OPENAI, Agent.Provider.ANTHROPIC}
# Providers that may point at another endpoint (a proxy, a gateway, a self-hosted server).
TAKES_BASE_URL = {
    Agent.Provider.OPENAI,
    Agent.Provider.ANTHROPIC,
    Agent.Provider.OPENAI_COMPATIBLE,
}
CREDENTIAL_LABELS = {Agent.Provider.OPENAI: "OpenAI", Agent.Provider.ANTHROPIC: "Anthropic"}
MAX_ITERATIONS = 50
MAX_TOKENS = 1_000_000
MAX_TIMEOUT_SECONDS = 600.0
DEFAULT_TIMEOUT_SECONDS = 60.0
MAX_PROMPT_CHARS = 100_000


# --- validation -------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_base_url(value: str) -> str | None:
    """A problem with `value` as a base URL, or None. Syntax, and what the egress guard refuses
    whatever DNS answers (a literal or numeric private address); the guard checks the
    address at call time (DNS answers change, and allow-lists are per deployment)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        return f"Not a valid URL: {exc}."
    if parts.scheme not in ("http", "https"):
        return "Must be an http:// or https:// URL."
    if not parts.hostname:
        return "The URL has no host."
    if parts.username is not None or parts.password is not None:
        return "Put credentials in a project secret, not in the URL."
    if parts.query or parts.fragment:
        return "A base URL has no query string or fragment."
    if any(ord(ch) <= 0x20 for ch in value):
        return "The URL contains whitespace."
    problem = egress.static_url_problem(value)
    if problem is not None:
        return f"Refused by the outbound-traffic guard: {problem}."
    return None


def _check_settings(provider: str, model: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return ["Must be a JSON object."]
    problems = []
    if "timeout_seconds" in value:
        timeout = value["timeout_seconds"]
        if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            problems.append(
                f"timeout_seconds must be a number above 0 and at most {MAX_TIMEOUT_SECONDS:g}."
            )
    if "stream" in value and not isinstance(value["stream"], bool):
        problems.append("stream must be true or false.")
    if provider == Agent.Provider.SIMULATED:
        try:
            SimulatedProvider(ProviderConfig(provider=provider, model=model, settings=value))
        except ProviderError as exc:
            problems.append(exc.detail)
    return problems


def _resolve_tools(project: Project, value: Any) -> tuple[list[Tool], list[str]]:
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__iter__"):
        return [], ["Must be a list of tool ids."]
    ids: list[int] = []
    for item in value:
        pk = item.pk if isinstance(item, Tool) else item
        if not _is_int(pk):
            return [], ["Must be a list of tool ids."]
        if pk not in ids:
            ids.append(pk)
    found = {tool.pk: tool for tool in Tool.objects.usable_in(project).filter(pk__in=ids)}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        listed = ", ".join(str(pk) for pk in missing)
        return [], [f"Not a tool of this project nor a global tool: {listed}."]
    return [found[pk] for pk in ids], []


_STRING_FIELDS = (
    "name",
    "slug",
    "description",
    "model",
    "base_url",
    "credentials_secret",
    "system_prompt",
)
_PROSE_FIELDS = ("description", "system_prompt")

Add = Callable[[str, str], None]


def agent_clean(
    *, project: Project, values: dict[str, Any], agent: Agent | None = None
) -> dict[str, Any]:
    """Checks a complete configuration (a create's fields over the defaults, or an update's
    changes over the agent's current values) and returns it normalised, with `tools` (when
    given) as Tool objects. Raises InvalidInput naming every bad field at once, or Conflict for
    a slug already taken. The API and the admin form both call this.

    Row checks (secret, tools) are made only for what changes, so an agent whose secret was
    deleted can still be edited (its `test` says what is missing)."""
    errors: dict[str, list[str]] = {}
    clean = dict(values)

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    def changed(field: str) -> bool:
        return agent is None or getattr(agent, field) != clean.get(field)

    _clean_strings(clean, add)
    _check_identity(clean, add, editing=agent is not None)
    _check_model(clean, add)
    _check_credentials(project, clean, add, changed=changed("credentials_secret"))
    _check_numbers(clean, add)
    _check_response_format(clean.get("response_format"), add)
    if clean.get("settings") is None:
        clean["settings"] = {}
    for problem in _check_settings(str(clean.get("provider")), clean["model"], clean["settings"]):
        add("settings", problem)
    if clean.get("status") not in Agent.Status.values:
        add("status", f"Must be one of: {', '.join(Agent.Status.values)}.")
    if clean.get("mcp_tools") is None:
        clean["mcp_tools"] = []
    if changed("mcp_tools"):
        for problem in check_attachments(project, clean["mcp_tools"]):
            add("mcp_tools", problem)
    if "tools" in clean:
        tools, problems = _resolve_tools(project, clean["tools"] or [])
        for problem in problems:
            add("tools", problem)
        clean["tools"] = tools

    if errors:
        raise InvalidInput("Invalid agent configuration.", errors=errors)
    if clean["slug"] and changed("slug"):
        taken = Agent.objects.filter(project=project, slug=clean["slug"])
        if agent is not None:
            taken = taken.exclude(pk=agent.pk)
        if taken.exists():
            raise Conflict(
                "An agent with this slug already exists in the project.",
                errors={"slug": ["Taken."]},
            )
    return clean


def _clean_strings(clean: dict[str, Any], add: Add) -> None:
    for field in _STRING_FIELDS:
        value = clean.get(field)
        if value is None:
            value = ""
        if not isinstance(value, str):
            add(field, "Must be a string.")
            value = ""
        # Identifiers and URLs lose stray whitespace; prose keeps it.
        clean[field] = value if field in _PROSE_FIELDS else value.strip()


def _check_identity(clean: dict[str, Any], add: Add, *, editing: bool) -> None:
    if not clean["name"]:
        add("name", "This field is required.")
    elif len(clean["name"]) > 200:
        add("name", "At most 200 characters.")
    if clean["slug"]:
        try:
            validate_slug(clean["slug"])
        except Exception:
            add("slug", "Use only letters, numbers, underscores or hyphens.")
        if len(clean["slug"]) > 100:
            add("slug", "At most 100 characters.")
    elif editing:
        add("slug", "This field may not be blank.")


def _check_model(clean: dict[str, Any], add: Add) -> None:
    provider = clean.get("provider")
    if provider not in Agent.Provider.values:
        add("provider", f"Must be one of: {', '.join(Agent.Provider.values)}.")
    if not clean["model"]:
        add("model", "This field is required.")
    elif len(clean["model"]) > 200:
        add("model", "At most 200 characters.")
    base_url = clean["base_url"]
    if base_url:
        problem = _check_base_url(base_url)
        if problem:
            add("base_url", problem)
        elif len(base_url) > 500:
            add("base_url", "At most 500 characters.")
        elif provider == Agent.Provider.SIMULATED:
            add("base_url", "The simulated provider makes no network call; leave this empty.")
    elif provider == Agent.Provider.OPENAI_COMPATIBLE:
        add("base_url", "An OpenAI-compatible agent needs the server's base URL (e.g. …/v1).")


def _check_credentials(project: Project, clean: dict[str, Any], add: Add, *, changed: bool) -> None:
    secret = clean["credentials_secret"]
    if not secret:
        return
    if not re.match(Secret.NAME_RE, secret):
        add("credentials_secret", "Not a valid secret name.")
    elif changed and not Secret.objects.filter(project=project, name=secret).exists():
        add("credentials_secret", f"No secret named '{secret}' in this project.")


def _check_numbers(clean: dict[str, Any], add: Add) -> None:
    temperature = clean.get("temperature")
    if temperature is not None:
        high = 1.0 if clean.get("provider") == Agent.Provider.ANTHROPIC else 2.0
        if not _is_number(temperature) or not 0 <= temperature <= high:
            add("temperature", f"Must be a number from 0 to {high:g}.")
        else:
            clean["temperature"] = float(temperature)
    max_tokens = clean.get("max_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS):
        add("max_tokens", f"Must be a whole number from 1 to {MAX_TOKENS}.")
    max_iterations = clean.get("max_iterations")
    if not _is_int(max_iterations) or not 1 <= max_iterations <= MAX_ITERATIONS:
        add("max_iterations", f"Must be a whole number from 1 to {MAX_ITERATIONS}.")


def _check_response_format(response_format: Any, add: Add) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        add("response_format", "Must be null (text) or a JSON Schema object.")
        return
    try:
        check_user_schema(response_format)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        add(
            "response_format",
            f"Not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}",
        )


def _unique_slug(project: Project, name: str) -> str:
    base = slugify(name)[:90].strip("-") or "agent"
    slug = base
    while Agent.objects.filter(project=project, slug=slug).exists():
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


def _refuse_unknown(fields: dict[str, Any]) -> None:
    unknown = set(fields) - EDITABLE
    if unknown:
        raise InvalidInput(
            f"Cannot set {', '.join(sorted(unknown))}.",
            errors={name: ["Unknown or read-only field."] for name in sorted(unknown)},
        )


def _slug_conflict() -> Conflict:
    return Conflict(
        "An agent with this slug already exists in the project.", errors={"slug": ["Taken."]}
    )


# --- writes -----------------------------------------------------------------------------------


@transaction.atomic
def agent_create(*, actor: User | None, project: Project, **fields: Any) -> Agent:
    _refuse_unknown(fields)
    clean = agent_clean(project=project, values={**DEFAULTS, **fields})
    tools = clean.pop("tools")
    if not clean["slug"]:
        clean["slug"] = _unique_slug(project, clean["name"])
    with duplicate_as(_slug_conflict):
        agent = Agent.objects.create(project=project, created_by=actor, **clean)
    agent.tools.set(tools)
    version_record(obj=agent, fields=VERSIONED_FIELDS, actor=actor)
    audit_record(
        actor=actor,
        project=project,
        action="agent.create",
        obj=agent,
        changes={**clean, "tools": [t.pk for t in tools]},
    )
    return agent


@transaction.atomic
def agent_update(*, agent: Agent, actor: User | None, **fields: Any) -> Agent:
    """Applies `fields` (any of EDITABLE); a new version is written only if the versioned
    configuration actually changed. Returns `agent`, reloaded and saved."""
    _refuse_unknown(fields)

    def clean(locked: Agent) -> dict[str, Any]:
        values = {name: getattr(locked, name) for name in CONFIG_FIELDS}
        return agent_clean(project=locked.project, values={**values, **fields}, agent=locked)

    update = object_update(
        agent,
        actor=actor,
        clean=clean,
        versioned_fields=VERSIONED_FIELDS,
        conflict=_slug_conflict,
    )
    changes = {name: value for name, value in update.changed.items() if name != "tools"}
    if "tools" in update.cleaned:
        changes["tools"] = [tool.pk for tool in update.cleaned["tools"]]
    audit_record(
        actor=actor, project=agent.project, action="agent.update", obj=agent, changes=changes
    )
    return agent


def agent_set_status(*, agent: Agent, actor: User | None, status: str) -> Agent:
    return agent_update(agent=agent, actor=actor, status=status)


@transaction.atomic
def agent_rollback(*, agent: Agent, actor: User | None, version: int) -> Agent:
    """Restores the configuration (fields and tools) of version `version`; that writes a new
    version equal to it (history is never rewritten). Rolling back to what is already current
    changes nothing."""
    target = AgentVersion.objects.filter(agent=agent, number=version).first()
    if target is None:
        raise InvalidInput(
            f"Agent '{agent.slug}' has no version {version}.",
            errors={"version": [f"No version {version}."]},
        )
    values = version_restore_fields(obj=agent, version=target, fields=VERSIONED_FIELDS)
    if "tools" in target.snapshot:
        values["tools"] = [int(pk) for pk in target.snapshot["tools"]]
    try:
        return agent_update(agent=agent, actor=actor, **values)
    except InvalidInput as exc:
        raise InvalidInput(
            f"Version {version} cannot be restored: {exc.detail}", errors=exc.errors
        ) from None


def agent_usage(*, agent: Agent) -> list[str]:
    """Names of what uses this agent (the project's non-archived workflows with an agent node
    naming it). Workflows sit above agents, so they answer through `signals.agent_used_by`."""
    return [
        name for _, names in signals.agent_used_by.send(sender=Agent, agent=agent) for name in names
    ]


@transaction.atomic
def agent_delete(*, agent: Agent, actor: User | None) -> None:
    used_by = agent_usage(agent=agent)
    if used_by:
        raise Conflict(
            f"Agent '{agent.slug}' is used by workflow(s): {', '.join(used_by)}; change or "
            "archive them first.",
            extra={"workflows": used_by},
        )
    audit_record(actor=actor, project=agent.project, action="agent.delete", obj=agent)
    agent.delete()


# --- model prices ----------------------------------------------------------------------------

PRICE_FIELDS = frozenset(ModelPrice.EDITABLE_FIELDS)
_RATES = ("input_per_million", "output_per_million", "cached_input_per_million")


def model_price_require_write(*, actor: Any, project: Project | None) -> None:
    """Global prices are staff's; a project's own prices, its admins' (and staff's)."""
    if actor is not None and getattr(actor, "is_staff", False):
        return
    if project is None:
        raise Forbidden("Only staff can change global model prices.")
    if not Membership.objects.has_role(actor, project, Role.ADMIN):
        raise Forbidden("Only the project's admins can change its model prices.")


def model_price_clean(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - PRICE_FIELDS
    errors: dict[str, list[str]] = {name: ["This field cannot be set here."] for name in unknown}
    if "provider" in fields and fields["provider"] not in Agent.Provider.values:
        errors["provider"] = [f"One of: {', '.join(Agent.Provider.values)}."]
    if "model_pattern" in fields and not str(fields["model_pattern"] or "").strip():
        errors["model_pattern"] = ["A model name or pattern (`gpt-4o-mini*`) is required."]
    for name in _RATES:
        value = fields.get(name)
        if value is not None and value < 0:
            errors[name] = ["Must be zero or more."]
    if errors:
        raise InvalidInput("Invalid input.", errors=dict(sorted(errors.items())))
    cleaned = dict(fields)
    if "model_pattern" in cleaned:
        cleaned["model_pattern"] = str(cleaned["model_pattern"]).strip()
    return cleaned


def _price_taken() -> Conflict:
    return Conflict(
        "A price for this provider and pattern, valid from the same moment, already exists "
        "in this scope.",
        errors={"model_pattern": ["Already priced from this valid_from."]},
    )


def model_price_check_unique(*, price: ModelPrice) -> None:
    """One price per (scope, provider, pattern, valid_from): a 409 before the save (the admin
    form calls this too); the constraint catches a lost race the same way."""
    taken = ModelPrice.objects.filter(
        project=price.project,
        provider=price.provider,
        model_pattern=price.model_pattern,
        valid_from=price.valid_from,
    )
    if price.pk is not None:
        taken = taken.exclude(pk=price.pk)
    if taken.exists():
        raise _price_taken()


def _price_save(price: ModelPrice, update_fields: list[str] | None = None) -> None:
    model_price_check_unique(price=price)
    try:
        with transaction.atomic():
            price.save(update_fields=update_fields)
    except IntegrityError as exc:
        raise _price_taken() from exc


@transaction.atomic
def model_price_create(*, actor: Any, project: Project | None = None, **fields: Any) -> ModelPrice:
    model_price_require_write(actor=actor, project=project)
    cleaned = model_price_clean(fields)
    missing = [
        name
        for name in ("provider", "model_pattern", "input_per_million", "output_per_million")
        if cleaned.get(name) is None
    ]
    if missing:
        raise InvalidInput(
            "Invalid input.", errors={name: ["This field is required."] for name in missing}
        )
    price = ModelPrice(project=project, **cleaned)
    _price_save(price)
    audit_record(
        actor=actor, project=project, action="model_price.create", obj=price, changes=fields
    )
    return price


@transaction.atomic
def model_price_update(*, price: ModelPrice, actor: Any, **fields: Any) -> ModelPrice:
    model_price_require_write(actor=actor, project=price.project)
    cleaned = model_price_clean(fields)
    for name, value in cleaned.items():
        setattr(price, name, value)
    _price_save(price, update_fields=[*cleaned, "updated_at"])
    audit_record(
        actor=actor, project=price.project, action="model_price.update", obj=price, changes=fields
    )
    return price


@transaction.atomic
def model_price_delete(*, price: ModelPrice, actor: Any) -> None:
    model_price_require_write(actor=actor, project=price.project)
    audit_record(actor=actor, project=price.project, action="model_price.delete", obj=price)
    price.delete()


# --- provider calls ---------------------------------------------------------------------------


def agent_provider_config(*, agent: Agent, secrets: SecretBag) -> ProviderConfig:
    """The adapter configuration of `agent`, with its API key read from `secrets` (so the caller
    can redact whatever it records afterwards). Config problems raise a non-retryable
    ProviderError answering 400."""
    api_key = None
    if agent.credentials_secret:
        if agent.credentials_secret not in secrets:
            raise config_error(
                f"Agent '{agent.slug}' uses the secret '{agent.credentials_secret}', which does "
                "not exist in this project.",
                provider=agent.provider,
            )
        api_key = secrets[agent.credentials_secret]
    elif agent.provider in NEEDS_CREDENTIALS:
        raise config_error(
            f"Agent '{agent.slug}' has no credentials: set credentials_secret to the name of a "
            f"project secret holding the {CREDENTIAL_LABELS[agent.provider]} API key.",
            provider=agent.provider,
        )
    settings = dict(agent.settings or {})
    timeout = settings.pop("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    settings.pop("stream", None)  # the engine's choice (agent_streams), not the SDK's
    return ProviderConfig(
        provider=agent.provider,
        model=agent.model,
        api_key=api_key,
        base_url=agent.base_url or None,
        settings=settings,
        timeout=float(timeout),
    )


def agent_streams(agent: Agent) -> bool:
    """Whether the agent's model calls stream their answer (`llm.delta` events): its
    `settings.stream`, else SPARKOPS_STREAM_DELTAS."""
    value = (agent.settings or {}).get("stream")
    return bool(django_settings.SPARKOPS_STREAM_DELTAS if value is None else value)


def agent_tool_specs(*, agent: Agent) -> list[ToolSpec]:
    """The agent's active tools as the model sees them."""
    return [
        ToolSpec(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters or {"type": "object", "properties": {}},
        )
        for tool in agent.tools.filter(status=Tool.Status.ACTIVE).order_by("name")
    ]


def agent_response_format(*, agent: Agent) -> dict[str, Any] | None:
    if agent.response_format is None:
        return None
    return {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": agent.response_format},
    }


def agent_chat_request(*, agent: Agent, messages: list[ChatMessage]) -> ChatRequest:
    """A request carrying the agent's settings, tools and response format; `messages` should
    start with `agent_messages(...)`."""
    return ChatRequest(
        model=agent.model,
        messages=messages,
        tools=agent_tool_specs(agent=agent),
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        response_format=agent_response_format(agent=agent),
    )


def agent_messages(*, agent: Agent, prompt: str) -> list[ChatMessage]:
    messages = []
    if agent.system_prompt:
        messages.append(ChatMessage(role="system", content=agent.system_prompt))
    messages.append(ChatMessage(role="user", content=prompt))
    return messages


def agent_test(*, agent: Agent, actor: User | None, prompt: str) -> ChatResponse:
    """One real call through the agent's provider with `prompt` (tools are offered but not
    run; the reply's tool calls are returned as they are). Provider failures raise
    ProviderError (502, 504 on timeouts, 400 for configuration problems)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("Invalid input.", errors={"prompt": ["This field is required."]})
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            "Invalid input.", errors={"prompt": [f"At most {MAX_PROMPT_CHARS} characters."]}
        )
    bag = SecretBag(agent.project)
    config = agent_provider_config(agent=agent, secrets=bag)
    request = agent_chat_request(agent=agent, messages=agent_messages(agent=agent, prompt=prompt))
    try:
        response = get_provider(config).chat(request)
    except ProviderError:
        raise
    except SparkOpsError as exc:  # e.g. the egress guard refusing the base URL
        raise ProviderError(bag.redact(exc.detail), provider=agent.provider) from exc
    # Nothing that came back may carry the key (an echoing proxy, a chatty error page).
    response.content = bag.redact(response.content)
    for call in response.tool_calls:
        call.raw_arguments = bag.redact(call.raw_arguments)
        call.arguments = bag.redact(call.arguments)
    return response
