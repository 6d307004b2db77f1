"""Workflow definitions (DESIGN.md §5): the JSON Schema, the checks a schema cannot express
(unique ids, known agents and tools, no cycles, templates that only read upstream steps),
and graph helpers shared with the run engine. Pure Python: callers pass in what needs the
database (`agent_exists`, `tool_exists`)."""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from sparkops import templating
from sparkops.errors import InvalidInput
from sparkops.regex import FORMAT_CHECKER, UserSchemaValidator, check_user_schema
from sparkops.templating import TemplateError

NODE_TYPES = ("agent", "tool", "approval", "transform", "switch", "map", "workflow", "loop")
LOOP_ITEM_TYPES = ("agent", "tool", "transform", "workflow")
LOOP_MAX_ITERATIONS = 50
MAP_ITEM_TYPES = ("agent", "tool", "transform", "workflow")
# What the templates of a map's item node may read besides the usual roots.
ITEM_ROOTS = frozenset({"item", "item_index"})
# What a workflow node's `output` mapping may read besides the usual roots: the child run.
CHILD_ROOTS = frozenset({"child"})
# A loop's body reads the previous iteration's output; its `until`, the iteration just done.
BODY_ROOTS = frozenset({"previous", "iteration"})
UNTIL_ROOTS = frozenset({"output", "iteration"})
SWITCH_MAX_CASES = 100
AGENT_MAX_FILES = 20
NODE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"

_NODE_COMMON: dict[str, Any] = {
    "id": {
        "type": "string",
        "pattern": NODE_ID_PATTERN,
        "description": "Unique in the workflow; templates read its result as steps.<id>.",
    },
    "description": {"type": "string", "maxLength": 2000},
    "depends_on": {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
        "description": "Nodes that must finish first.",
    },
    "when": {
        "type": "string",
        "minLength": 1,
        "description": "Condition, e.g. `{{ steps.a.output.score > 0.5 }}`; false skips the node.",
    },
    "retry": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 20},
            "backoff_seconds": {"type": "number", "minimum": 0},
            "max_backoff_seconds": {"type": "number", "minimum": 0},
        },
    },
    "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
    "continue_on_failure": {"type": "boolean"},
}

_NODE_FIELDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "agent": (
        {
            "agent": {"type": "string", "minLength": 1, "description": "The agent's slug."},
            "prompt": {"type": "string", "description": "Template of the user prompt."},
            "files": {
                "type": "array",
                "maxItems": AGENT_MAX_FILES,
                "items": {"type": "string", "minLength": 1},
                "description": (
                    "Files the model reads with the prompt: templates that each give a file "
                    "(`{{ input.photo }}`, `{{ steps.report.output.file }}`) or a list of files. "
                    "Images go to the model as images, text files and PDFs as their text."
                ),
            },
        },
        ["agent", "prompt"],
    ),
    "tool": (
        {
            "tool": {"type": "string", "minLength": 1, "description": "The tool's name."},
            "args": {"type": "object", "description": "Tool arguments; strings are templates."},
        },
        ["tool"],
    ),
    "approval": (
        {"message": {"type": "string", "description": "Template shown to the approver."}},
        [],
    ),
    "transform": (
        {"output": {"description": "Any JSON; its strings are templates, rendered as the result."}},
        ["output"],
    ),
    "switch": (
        {
            "value": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "Template the cases' `equals` compare with, e.g. "
                    "`{{ steps.classify.output.category }}` (a field of an agent's structured "
                    "output)."
                ),
            },
            "cases": {
                "type": "array",
                "minItems": 1,
                "maxItems": SWITCH_MAX_CASES,
                "description": (
                    "Tried in order; the first that holds picks its branch (`to`). Each has "
                    "a `when` condition or an `equals` value compared with `value`."
                ),
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["to"],
                    "properties": {
                        "when": {"type": "string", "minLength": 1},
                        "equals": {"description": "Any JSON, compared with `value`."},
                        "to": {
                            "type": "string",
                            "description": "The branch: a node that depends on this switch.",
                        },
                    },
                },
            },
            "default": {
                "type": "string",
                "description": "The branch taken when no case holds (without it, the step fails).",
            },
        },
        ["cases"],
    ),
}


def _item_node_schema(node_type: str) -> dict[str, Any]:
    fields, required = _NODE_FIELDS[node_type]
    return {
        "type": "object",
        "properties": {"type": {"const": node_type}, **fields},
        "required": ["type", *required],
        "additionalProperties": False,
    }


_NODE_FIELDS["workflow"] = (
    {
        "workflow": {
            "type": "string",
            "minLength": 1,
            "description": "The slug of a workflow of the same project, run as a child run.",
        },
        "input": {
            "description": "The child run's input: any JSON; its strings are templates.",
        },
        "output": {
            "description": (
                "This step's output: any JSON whose strings are templates that read the "
                "child run as `child` (`{{ child.output.summary }}`); without it, the child "
                "run's output."
            ),
        },
    },
    ["workflow"],
)


def _body_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "The node each iteration runs (agent, tool, transform or workflow, without id or "
            "depends_on); its templates read the previous iteration's output as `previous` "
            "(null at first) and the iteration number as `iteration` (from 0). The loop's "
            "`retry` and `timeout_seconds` apply to each iteration."
        ),
        "required": ["type"],
        "properties": {"type": {"enum": list(LOOP_ITEM_TYPES)}},
        "allOf": [
            {
                "if": {"properties": {"type": {"const": item_type}}, "required": ["type"]},
                "then": _item_node_schema(item_type),
            }
            for item_type in LOOP_ITEM_TYPES
        ],
    }


_NODE_FIELDS["loop"] = (
    {
        "node": _body_schema(),
        "until": {
            "type": "string",
            "minLength": 1,
            "description": (
                "Condition checked after each iteration, reading its output as `output` and "
                "its number as `iteration`: true ends the loop with that output."
            ),
        },
        "max_iterations": {
            "type": "integer",
            "minimum": 1,
            "maximum": LOOP_MAX_ITERATIONS,
            "description": "Iterations at most (default 10); reaching it without `until` fails.",
        },
    },
    ["node", "until"],
)

_NODE_FIELDS["map"] = (
    {
        "items": {
            # anyOf, not a type list: the definitions' schema is also part of the OpenAPI 3.0
            # document, which has no type lists.
            "anyOf": [{"type": "string"}, {"type": "array"}],
            "description": (
                "The list to map over: a template such as `{{ input.documents }}` or "
                "`{{ steps.search.output.hits }}`, or a literal list."
            ),
        },
        "node": {
            "type": "object",
            "description": (
                "The node run once per item (agent, tool, transform, or workflow: a child run "
                "per item; without id or depends_on); its templates read the item as `item` "
                "and its position as `item_index`. The map's `retry` and `timeout_seconds` "
                "apply to each item."
            ),
            "required": ["type"],
            "properties": {"type": {"enum": list(MAP_ITEM_TYPES)}},
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": item_type}}, "required": ["type"]},
                    "then": _item_node_schema(item_type),
                }
                for item_type in MAP_ITEM_TYPES
            ],
        },
        "max_concurrency": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1000,
            "description": "Items in flight at once (default 10).",
        },
        "on_item_failure": {
            "enum": ["fail_fast", "collect"],
            "description": (
                "fail_fast (default): the first item that fails for good fails the map and "
                "cancels the rest; collect: every item runs, a failed one's output is null."
            ),
        },
    },
    ["items", "node"],
)


def _node_schema(node_type: str) -> dict[str, Any]:
    fields, required = _NODE_FIELDS[node_type]
    return {
        "type": "object",
        "properties": {**_NODE_COMMON, "type": {"const": node_type}, **fields},
        "required": ["id", "type", *required],
        "additionalProperties": False,
    }


# Self-contained (no $ref) so that it can also be embedded in the OpenAPI document.
DEFINITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A workflow definition: an input schema, a DAG of nodes and an output.",
    "additionalProperties": False,
    "required": ["nodes"],
    "properties": {
        "input_schema": {
            "type": "object",
            "description": (
                "JSON Schema (2020-12) of a run's input. A property "
                '`{"type": "object", "format": "file"}` takes a file: `{"file": "<id>"}`.'
            ),
        },
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type"],
                "properties": {
                    "id": _NODE_COMMON["id"],
                    "type": {"enum": list(NODE_TYPES)},
                },
                "allOf": [
                    {
                        "if": {"properties": {"type": {"const": node_type}}, "required": ["type"]},
                        "then": _node_schema(node_type),
                    }
                    for node_type in NODE_TYPES
                ],
            },
        },
        "output": {"description": "Any JSON; its strings are templates, rendered at the end."},
    },
}

_definition_validator = Draft202012Validator(DEFINITION_SCHEMA)

# Which fields of a node are templates. `when` is a condition (a single expression).
_TEMPLATE_FIELDS = {
    "agent": ("prompt", "files"),
    "tool": ("args",),
    "approval": ("message",),
    "transform": ("output",),
    "switch": ("value",),
    "workflow": ("input",),
}


class _Errors(dict[str, list[str]]):
    def add(self, key: str, message: str) -> None:
        messages = self.setdefault(key, [])
        if message not in messages:
            messages.append(message)


def _location(root: str, path: Any) -> str:
    return root + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


_BOUND_MESSAGES = {
    "minimum": "Must be at least {}.",
    "maximum": "Must be at most {}.",
    "exclusiveMinimum": "Must be greater than {}.",
    "minItems": "Must contain at least {} item(s).",
    "uniqueItems": "Must not contain duplicates.",
}


def _schema_messages(error: ValidationError, root: str) -> Iterator[tuple[str, str]]:
    """(location, message) for a jsonschema error, in words a workflow author understands.
    Missing and unknown fields are reported at the field itself."""
    path = list(error.absolute_path)
    where = _location(root, path)
    value = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in value:
            if name not in error.instance:
                yield _location(root, [*path, name]), "This field is required."
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        for name in error.instance:
            if name not in known:
                yield _location(root, [*path, name]), "Unknown field."
    elif error.validator == "type":
        expected = " or ".join(value) if isinstance(value, list) else value
        yield where, f"Must be of type {expected}."
    elif error.validator == "anyOf" and all(list(choice) == ["type"] for choice in value):
        # A type list written as anyOf (see the map's `items`).
        yield where, f"Must be of type {' or '.join(choice['type'] for choice in value)}."
    elif error.validator == "enum" and root == "definition" and path[-1:] == ["type"]:
        # A map's or loop's body: the types its schema lists.
        expected = ", ".join(value if path[-2:-1] == ["node"] else NODE_TYPES)
        yield where, f"Unknown node type {error.instance!r}; expected one of: {expected}."
    elif error.validator == "enum":
        yield where, "Must be one of: " + ", ".join(repr(option) for option in value) + "."
    elif error.validator == "pattern" and root == "definition" and path[-1:] == ["id"]:
        yield (
            where,
            (
                f"Invalid node id {error.instance!r}: use letters, digits, '_' or '-', starting "
                "with a letter or '_', at most 64 characters."
            ),
        )
    elif error.validator in _BOUND_MESSAGES:
        yield where, _BOUND_MESSAGES[error.validator].format(value)
    else:
        message = error.message
        yield where, message if len(message) <= 300 else message[:297] + "..."


# --- graph helpers (assume a definition that passed validate_definition) ------------------


def _nodes(definition: Any) -> list[dict[str, Any]]:
    nodes = definition.get("nodes") if isinstance(definition, dict) else None
    if not isinstance(nodes, list):
        return []
    return [node for node in nodes if isinstance(node, dict) and isinstance(node.get("id"), str)]


def _dependencies(definition: Any) -> dict[str, list[str]]:
    """Each node's known dependencies, in definition order (first node wins on duplicate ids;
    unknown ids are dropped)."""
    deps: dict[str, list[str]] = {}
    for node in _nodes(definition):
        depends_on = node.get("depends_on")
        deps.setdefault(node["id"], depends_on if isinstance(depends_on, list) else [])
    return {
        node_id: [dep for dep in node_deps if isinstance(dep, str) and dep in deps]
        for node_id, node_deps in deps.items()
    }


def switch_branches(node: Any) -> list[str]:
    """The nodes a switch may pick (its cases' `to`, then its `default`), each once."""
    if not isinstance(node, dict) or node.get("type") != "switch":
        return []
    cases = node.get("cases")
    targets = (
        [case.get("to") for case in cases if isinstance(case, dict)]
        if isinstance(cases, list)
        else []
    )
    targets.append(node.get("default"))
    return list(dict.fromkeys(t for t in targets if isinstance(t, str)))


def _layers(deps: dict[str, list[str]]) -> list[list[str]]:
    """Nodes by rank (longest path from a root), each layer in definition order.
    Raises graphlib.CycleError."""
    order = {node_id: index for index, node_id in enumerate(deps)}
    sorter = graphlib.TopologicalSorter(deps)
    sorter.prepare()
    layers = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        layers.append(ready)
        sorter.done(*ready)
    return layers


def _cycle_error(exc: graphlib.CycleError) -> InvalidInput:
    cycle = exc.args[1]
    return InvalidInput(
        "Invalid workflow definition.",
        errors={"definition.nodes": [f"Dependency cycle: {' -> '.join(cycle)}."]},
    )


def topological_order(definition: Any) -> list[str]:
    """Node ids, dependencies first (rank by rank, definition order within a rank)."""
    try:
        return [node_id for layer in _layers(_dependencies(definition)) for node_id in layer]
    except graphlib.CycleError as exc:
        raise _cycle_error(exc) from None


def upstream(definition: Any) -> dict[str, set[str]]:
    """Each node's transitive dependencies. Tolerates cycles (validation reports them)."""
    deps = _dependencies(definition)
    ancestors: dict[str, set[str]] = {}
    for node_id in deps:
        seen: set[str] = set()
        stack = list(deps[node_id])
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(deps[dep])
        ancestors[node_id] = seen
    return ancestors


def graph(definition: Any) -> dict[str, Any]:
    """What the UI draws: nodes, edges (dependency -> dependent; conditional when the
    dependent has a `when` or is a branch of the switch it depends on) and layers by
    topological rank."""
    deps = _dependencies(definition)
    seen: set[str] = set()
    nodes = []
    edges = []
    branches = {
        (node["id"], target) for node in _nodes(definition) for target in switch_branches(node)
    }
    for node in _nodes(definition):
        node_id = node["id"]
        if node_id in seen:
            continue
        seen.add(node_id)
        when = node.get("when")
        nodes.append(
            {
                "id": node_id,
                "type": node.get("type"),
                "label": node.get("description") or node_id,
                "depends_on": deps[node_id],
                "when": when,
            }
        )
        edges.extend(
            {
                "source": dep,
                "target": node_id,
                "conditional": bool(when) or (dep, node_id) in branches,
            }
            for dep in deps[node_id]
        )
    try:
        layers = _layers(deps)
    except graphlib.CycleError as exc:
        raise _cycle_error(exc) from None
    return {"nodes": nodes, "edges": edges, "layers": layers}


# --- validation ---------------------------------------------------------------------------


def _template_strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _template_strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _template_strings(item, f"{where}[{index}]")


def _check_template(
    errors: _Errors,
    where: str,
    source: str,
    *,
    condition: bool,
    step_ids: set[str],
    allowed_steps: set[str] | None,
    node_id: str | None,
    extra_roots: frozenset[str] = frozenset(),
) -> None:
    """Syntax, roots and step references of one template string. `allowed_steps` None means
    any existing step may be read (the workflow's output)."""
    try:
        if condition:
            templating.check_condition(source)
        else:
            templating.check_syntax(source)
        roots = templating.referenced_roots(source, condition=condition)
        steps = templating.referenced_steps(source, condition=condition)
        dynamic = templating.has_dynamic_step_access(source, condition=condition)
    except TemplateError as exc:
        errors.add(where, exc.detail)
        return
    for name in sorted(roots - templating.ROOTS - extra_roots):
        errors.add(
            where,
            f"Unknown template variable {name!r}; use one of: "
            + ", ".join(sorted(templating.ROOTS | extra_roots))
            + ".",
        )
    if dynamic:
        errors.add(where, "Refer to steps by literal id: steps.<id> or steps['<id>'].")
    for step in sorted(steps):
        if step not in step_ids:
            errors.add(where, f"Unknown step {step!r}.")
        elif allowed_steps is not None and step not in allowed_steps:
            errors.add(
                where,
                f"Step {step!r} is not upstream of {node_id!r}; add it to depends_on "
                "(directly or through another node).",
            )


def _reads_secrets(args: Any) -> bool:
    try:
        return "secrets" in templating.referenced_roots(args)
    except InvalidInput:
        return False  # the syntax error is reported on its own


def validate_definition(
    definition: Any,
    *,
    agent_exists: Callable[[str], bool],
    tool_exists: Callable[[str], bool],
    tool_host_from_args: Callable[[str], bool] | None = None,
    workflow_exists: Callable[[str], bool] | None = None,
) -> None:
    """Raise InvalidInput("Invalid workflow definition.") with every problem found, keyed by
    location (`definition.nodes[2].depends_on`). `tool_host_from_args(name)` says whether a
    tool's URL takes its scheme, host or port from the arguments: such a tool gets no secret
    in its arguments (it could send it anywhere)."""
    errors = _Errors()
    for error in _definition_validator.iter_errors(definition):
        for where, message in _schema_messages(error, "definition"):
            errors.add(where, message)
    if not isinstance(definition, dict):
        raise InvalidInput("Invalid workflow definition.", errors=errors)
    _check_input_schema(errors, definition.get("input_schema"))
    raw_nodes = definition.get("nodes")
    indexed = [
        (index, node)
        for index, node in enumerate(raw_nodes if isinstance(raw_nodes, list) else [])
        if isinstance(node, dict)
    ]
    positions = _node_positions(errors, indexed)
    references = _References(errors, agent_exists, tool_exists, tool_host_from_args)
    references.depends_on = _dependencies(definition)
    references.workflow_exists = workflow_exists
    for index, node in indexed:
        references.check(index, node, step_ids=set(positions))
    _check_cycles(errors, definition, positions)
    _check_templates(errors, definition, indexed, step_ids=set(positions))
    if errors:
        raise InvalidInput("Invalid workflow definition.", errors=dict(errors))


def _check_input_schema(errors: _Errors, input_schema: Any) -> None:
    if not isinstance(input_schema, dict):
        return
    try:
        check_user_schema(input_schema)
    except SchemaError as exc:
        where = _location("definition.input_schema", exc.absolute_path)
        errors.add(where, f"Not a valid JSON Schema: {exc.message}")


def _node_positions(errors: _Errors, indexed: list[tuple[int, dict]]) -> dict[str, list[int]]:
    """Where each node id stands; duplicates are reported at every occurrence, so each is
    easy to find."""
    positions: dict[str, list[int]] = {}
    for index, node in indexed:
        if isinstance(node.get("id"), str):
            positions.setdefault(node["id"], []).append(index)
    for node_id, where_found in positions.items():
        if len(where_found) > 1:
            for index in where_found:
                errors.add(f"definition.nodes[{index}].id", f"Duplicate node id {node_id!r}.")
    return positions


class _References:
    """Agents, tools and upstream nodes a node names, each looked up once per definition."""

    def __init__(
        self,
        errors: _Errors,
        agent_exists: Callable[[str], bool],
        tool_exists: Callable[[str], bool],
        tool_host_from_args: Callable[[str], bool] | None,
    ) -> None:
        self.errors = errors
        self.agent_exists = agent_exists
        self.tool_exists = tool_exists
        self.tool_host_from_args = tool_host_from_args
        self.agents: dict[str, bool] = {}
        self.tools: dict[str, bool] = {}
        self.depends_on: dict[str, list[str]] = {}
        self.workflow_exists: Callable[[str], bool] | None = None

    def check(
        self, index: int, node: dict[str, Any], *, step_ids: set[str], base: str = ""
    ) -> None:
        base = base or f"definition.nodes[{index}]"
        node_type = node.get("type")
        if node_type == "agent" and isinstance(node.get("agent"), str) and node["agent"]:
            slug = node["agent"]
            if slug not in self.agents:
                self.agents[slug] = self.agent_exists(slug)
            if not self.agents[slug]:
                self.errors.add(f"{base}.agent", f"Unknown agent {slug!r}.")
        if node_type == "tool" and isinstance(node.get("tool"), str) and node["tool"]:
            self._check_tool(base, node["tool"], node.get("args"))
        depends_on = node.get("depends_on")
        for dep in depends_on if isinstance(depends_on, list) else []:
            if isinstance(dep, str) and dep not in step_ids:
                self.errors.add(f"{base}.depends_on", f"Unknown node {dep!r}.")
        if node_type == "switch":
            self._check_switch(base, node, step_ids)
        if node_type == "map":
            self._check_map(base, node)
        body = node.get("node") if node_type == "loop" else None
        if isinstance(body, dict) and body.get("type") in LOOP_ITEM_TYPES:
            self.check(-1, {**body, "id": node.get("id")}, step_ids=set(), base=f"{base}.node")
        slug = node.get("workflow")
        exists = self.workflow_exists or (lambda slug: True)
        if node_type == "workflow" and isinstance(slug, str) and not exists(slug):
            self.errors.add(
                f"{base}.workflow",
                f"Node {node.get('id')!r} runs unknown workflow {slug!r} (not in this project).",
            )

    def _check_map(self, base: str, node: dict[str, Any]) -> None:
        """The item node's agent or tool exists; a literal list is within the item limit."""
        inner = node.get("node")
        if isinstance(inner, dict) and inner.get("type") in MAP_ITEM_TYPES:
            self.check(-1, inner, step_ids=set(), base=f"{base}.node")
        items = node.get("items")
        limit = settings.SPARKOPS_MAP_MAX_ITEMS
        if isinstance(items, list) and len(items) > limit:
            self.errors.add(
                f"{base}.items",
                f"Map {node.get('id')!r} has {len(items)} items; at most {limit} are allowed "
                "(SPARKOPS_MAP_MAX_ITEMS).",
            )

    def _check_switch(self, base: str, node: dict[str, Any], step_ids: set[str]) -> None:
        """Every branch is a node that depends on the switch directly; each case has one test;
        `equals` needs the switch's `value`."""
        switch_id = node.get("id")
        cases = node.get("cases")
        places = [
            (f"{base}.cases[{index}]", case)
            for index, case in enumerate(cases if isinstance(cases, list) else [])
            if isinstance(case, dict)
        ]
        for where, case in places:
            if ("when" in case) == ("equals" in case):
                self.errors.add(
                    where, f"Switch {switch_id!r}: a case needs exactly one of `when` or `equals`."
                )
            elif "equals" in case and "value" not in node:
                self.errors.add(
                    f"{where}.equals",
                    f"Switch {switch_id!r} has no `value` for `equals` to compare with.",
                )
        targets = [(f"{where}.to", case.get("to")) for where, case in places]
        targets.append((f"{base}.default", node.get("default")))
        for where, target in targets:
            if not isinstance(target, str):
                continue
            if target == switch_id:
                self.errors.add(where, f"Switch {switch_id!r} cannot branch to itself.")
            elif target not in step_ids:
                self.errors.add(where, f"Switch {switch_id!r} branches to unknown node {target!r}.")
            elif switch_id not in self.depends_on.get(target, ()):
                self.errors.add(
                    where,
                    f"Node {target!r} must list {switch_id!r} in its depends_on to be a branch "
                    f"of switch {switch_id!r}.",
                )

    def _check_tool(self, base: str, name: str, args: Any) -> None:
        if name not in self.tools:
            self.tools[name] = self.tool_exists(name)
        if not self.tools[name]:
            self.errors.add(f"{base}.tool", f"Unknown tool {name!r}.")
        elif (
            self.tool_host_from_args is not None
            and _reads_secrets(args)
            and self.tool_host_from_args(name)
        ):
            self.errors.add(
                f"{base}.args",
                f"Secrets cannot be passed to tool {name!r}: its URL takes the scheme or "
                "host from the arguments, so a secret could be sent anywhere.",
            )


def _check_cycles(errors: _Errors, definition: Any, positions: dict[str, list[int]]) -> None:
    try:
        _layers(_dependencies(definition))
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        # cycle[1] depends on cycle[0]: report it where that dependency is written.
        index = positions[cycle[1]][0]
        errors.add(
            f"definition.nodes[{index}].depends_on",
            f"Dependency cycle: {' -> '.join(cycle)}.",
        )


def _check_templates(
    errors: _Errors, definition: Any, indexed: list[tuple[int, dict]], *, step_ids: set[str]
) -> None:
    """Every template a node or the output holds parses and reads only steps upstream of it."""
    ancestors = upstream(definition)
    for index, node in indexed:
        node_id = node.get("id") if isinstance(node.get("id"), str) else None
        # Without a usable id (already an error) only unknown steps are reported.
        allowed = ancestors.get(node_id, set()) if node_id is not None else None
        base = f"definition.nodes[{index}]"
        # A `type` that is not a string is already an error; it has no template fields.
        node_type = node.get("type") if isinstance(node.get("type"), str) else None
        sources = [
            (where, source, False)
            for field in _TEMPLATE_FIELDS.get(node_type, ())
            if field in node
            for where, source in _template_strings(node[field], f"{base}.{field}")
        ]
        if isinstance(node.get("when"), str):
            sources.append((f"{base}.when", node["when"], True))
        if node_type == "workflow" and "output" in node:
            for where, source in _template_strings(node["output"], f"{base}.output"):
                _check_template(
                    errors,
                    where,
                    source,
                    condition=False,
                    step_ids=step_ids,
                    allowed_steps=allowed,
                    node_id=node_id,
                    extra_roots=CHILD_ROOTS,
                )
        if node_type == "loop":
            _loop_templates(errors, base, node, step_ids, allowed, node_id)
        if node_type == "map" and isinstance(node.get("items"), str):
            sources.append((f"{base}.items", node["items"], False))
        inner = node.get("node") if node_type == "map" else None
        if isinstance(inner, dict) and isinstance(inner.get("type"), str):
            fields = list(_TEMPLATE_FIELDS.get(inner["type"], ()))
            if inner["type"] == "workflow":
                fields.append("output")
            for field in fields:
                child = inner["type"] == "workflow" and field == "output"
                roots = ITEM_ROOTS | (CHILD_ROOTS if child else frozenset())
                for where, source in _template_strings(inner.get(field), f"{base}.node.{field}"):
                    _check_template(
                        errors,
                        where,
                        source,
                        condition=False,
                        step_ids=step_ids,
                        allowed_steps=allowed,
                        node_id=node_id,
                        extra_roots=roots,
                    )
        if node_type == "switch" and isinstance(node.get("cases"), list):
            sources.extend(
                (f"{base}.cases[{i}].when", case["when"], True)
                for i, case in enumerate(node["cases"])
                if isinstance(case, dict) and isinstance(case.get("when"), str)
            )
        for where, source, condition in sources:
            _check_template(
                errors,
                where,
                source,
                condition=condition,
                step_ids=step_ids,
                allowed_steps=allowed,
                node_id=node_id,
            )
    if "output" in definition:
        for where, source in _template_strings(definition["output"], "definition.output"):
            _check_template(
                errors,
                where,
                source,
                condition=False,
                step_ids=step_ids,
                allowed_steps=None,
                node_id=None,
            )


def _loop_templates(
    errors: _Errors,
    base: str,
    node: dict[str, Any],
    step_ids: set[str],
    allowed: set[str] | None,
    node_id: str | None,
) -> None:
    body = node.get("node")
    sources: list[tuple[str, str, bool, frozenset[str]]] = []
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        fields = list(_TEMPLATE_FIELDS.get(body["type"], ()))
        if body["type"] == "workflow":
            fields.append("output")
        for field in fields:
            roots = BODY_ROOTS | (CHILD_ROOTS if field == "output" else frozenset())
            sources.extend(
                (where, source, False, roots)
                for where, source in _template_strings(body.get(field), f"{base}.node.{field}")
            )
    if isinstance(node.get("until"), str):
        sources.append((f"{base}.until", node["until"], True, UNTIL_ROOTS))
    for where, source, condition, roots in sources:
        _check_template(
            errors,
            where,
            source,
            condition=condition,
            step_ids=step_ids,
            allowed_steps=allowed,
            node_id=node_id,
            extra_roots=roots,
        )


FILE_FORMAT = "file"


def is_file_schema(schema: Any) -> bool:
    """A property that holds a file: `{"type": "object", "format": "file"}`. A run's input gives
    `{"file": "<id>"}` there; `run_create` checks the file and stores its metadata instead."""
    return isinstance(schema, dict) and schema.get("format") == FILE_FORMAT


def expand_files(
    input_schema: Any, data: Any, resolve: Callable[[Any, str], Any], where: str = "input"
) -> Any:
    """`data` with every value its schema marks as a file (is_file_schema) replaced by
    `resolve(value, location)`, looking through `properties` and `items` (not through `$ref`,
    `anyOf` and the like). Call once the input is valid against its schema."""
    if not isinstance(input_schema, dict):
        return data
    if is_file_schema(input_schema):
        return resolve(data, where)
    properties = input_schema.get("properties")
    if isinstance(properties, dict) and isinstance(data, dict):
        return {
            key: (
                expand_files(properties[key], value, resolve, f"{where}.{key}")
                if key in properties
                else value
            )
            for key, value in data.items()
        }
    items = input_schema.get("items")
    if isinstance(items, dict) and isinstance(data, list):
        return [
            expand_files(items, value, resolve, f"{where}[{index}]")
            for index, value in enumerate(data)
        ]
    return data


def validate_input(input_schema: dict[str, Any] | None, data: Any) -> None:
    """Check a run's input against the workflow's input_schema (none: anything goes).
    Raises InvalidInput("Invalid run input.") with errors keyed `input.<path>`."""
    if input_schema is None:
        return
    try:
        check_user_schema(input_schema)
    except SchemaError as exc:
        raise InvalidInput(
            "Invalid run input.",
            errors={"input_schema": [f"Not a valid JSON Schema: {exc.message}"]},
        ) from None
    validator = UserSchemaValidator(input_schema, format_checker=FORMAT_CHECKER)
    errors = _Errors()
    for error in validator.iter_errors(data):
        for where, message in _schema_messages(error, "input"):
            errors.add(where, message)
    if errors:
        raise InvalidInput("Invalid run input.", errors=dict(errors))


def child_workflows(definition: Any) -> list[tuple[str, str]]:
    """(location, slug) of each workflow a definition runs as a child: `workflow` nodes and
    loops whose body is a workflow (`definition.nodes[2].workflow`, `...node.workflow`)."""
    found: list[tuple[str, str]] = []
    nodes = definition.get("nodes") if isinstance(definition, dict) else None
    for index, node in enumerate(nodes if isinstance(nodes, list) else []):
        if not isinstance(node, dict):
            continue
        base = f"definition.nodes[{index}]"
        body = node.get("node")
        if node.get("type") == "workflow" and isinstance(node.get("workflow"), str):
            found.append((f"{base}.workflow", node["workflow"]))
        elif (
            isinstance(body, dict)
            and body.get("type") == "workflow"
            and isinstance(body.get("workflow"), str)
        ):
            found.append((f"{base}.node.workflow", body["workflow"]))
    return found
