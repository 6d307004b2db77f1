"""Definition validation (one test per rule), graph helpers and run-input validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sparkops.errors import InvalidInput
from workflows.definition import (
    DEFINITION_SCHEMA,
    NODE_TYPES,
    graph,
    topological_order,
    upstream,
    validate_definition,
    validate_input,
)

AGENTS = {"researcher", "writer"}
TOOLS = {"http-get", "post-summary"}

# DESIGN.md §5
EXAMPLE: dict[str, Any] = {
    "input_schema": {
        "type": "object",
        "properties": {"topic": {"type": "string"}},
        "required": ["topic"],
    },
    "nodes": [
        {
            "id": "research",
            "type": "agent",
            "agent": "researcher",
            "prompt": "Research {{ input.topic }}",
            "retry": {"max_attempts": 3, "backoff_seconds": 2},
            "timeout_seconds": 120,
        },
        {"id": "fetch", "type": "tool", "tool": "http-get", "args": {"url": "{{ input.url }}"}},
        {"id": "review", "type": "approval", "depends_on": ["research"], "message": "Publish?"},
        {
            "id": "publish",
            "type": "tool",
            "tool": "post-summary",
            "depends_on": ["review", "fetch"],
            "when": "{{ steps.research.output.confidence > 0.5 }}",
            "args": {"text": "{{ steps.research.output.text }}"},
        },
    ],
    "output": {"summary": "{{ steps.research.output.text }}"},
}

DIAMOND: dict[str, Any] = {
    "nodes": [
        {"id": "d", "type": "transform", "depends_on": ["b", "c"], "output": "{{ steps.b }}"},
        {"id": "b", "type": "transform", "depends_on": ["a"], "output": 1},
        {"id": "c", "type": "transform", "depends_on": ["a"], "when": "input.go", "output": 2},
        {"id": "a", "type": "transform", "output": "{{ input }}"},
    ]
}


def example() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE)


def validate(definition: Any) -> None:
    validate_definition(
        definition, agent_exists=AGENTS.__contains__, tool_exists=TOOLS.__contains__
    )


def errors_of(definition: Any) -> dict[str, list[str]]:
    with pytest.raises(InvalidInput) as exc_info:
        validate(definition)
    assert exc_info.value.detail == "Invalid workflow definition."
    assert exc_info.value.status_code == 400
    assert exc_info.value.error_type == "validation_error"
    errors = exc_info.value.errors
    assert errors
    return errors


def transform(node_id: str, output: Any = None, **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "transform", "output": output, **fields}


# --- valid definitions --------------------------------------------------------------------


def test_the_design_example_is_valid() -> None:
    validate(example())


def test_the_diamond_is_valid() -> None:
    validate(DIAMOND)


def test_every_node_type_and_optional_field_is_accepted() -> None:
    validate(
        {
            "input_schema": {"type": "object"},
            "nodes": [
                {
                    "id": "a",
                    "type": "agent",
                    "agent": "writer",
                    "prompt": "{% for t in input.tags %}{{ t }} {% endfor %}",
                    "description": "Writes",
                    "retry": {"max_attempts": 20, "backoff_seconds": 0, "max_backoff_seconds": 9},
                    "timeout_seconds": 0.5,
                    "continue_on_failure": True,
                },
                {"id": "t", "type": "tool", "tool": "http-get", "depends_on": ["a"]},
                {"id": "ok", "type": "approval", "depends_on": ["t"], "when": "steps.a.status"},
                {
                    "id": "_shape-2",
                    "type": "transform",
                    "depends_on": ["ok"],
                    "output": {"text": "{{ steps['a'].output }}", "n": [1, "{{ run.id }}"]},
                },
            ],
            "output": "{{ steps['_shape-2'].output }} {{ secrets.TOKEN }}",
        }
    )


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(DEFINITION_SCHEMA)
    assert NODE_TYPES == (
        "agent",
        "tool",
        "approval",
        "transform",
        "switch",
        "map",
        "workflow",
        "loop",
    )


# --- one test per rule --------------------------------------------------------------------


def test_definition_must_be_an_object() -> None:
    assert errors_of(["nodes"]) == {"definition": ["Must be of type object."]}


def test_nodes_are_required_and_not_empty() -> None:
    assert errors_of({}) == {"definition.nodes": ["This field is required."]}
    assert errors_of({"nodes": []}) == {"definition.nodes": ["Must contain at least 1 item(s)."]}


def test_unknown_fields_are_reported_where_they_are() -> None:
    definition = example()
    definition["ouput"] = {}
    definition["nodes"][0]["promt"] = "typo"
    assert errors_of(definition) == {
        "definition.ouput": ["Unknown field."],
        "definition.nodes[0].promt": ["Unknown field."],
    }


def test_missing_fields_of_a_node_type_are_reported() -> None:
    definition = {
        "nodes": [
            {"id": "a", "type": "agent"},
            {"id": "b", "type": "tool"},
            {"id": "c", "type": "transform"},
            {"type": "approval"},
        ]
    }
    assert errors_of(definition) == {
        "definition.nodes[0].agent": ["This field is required."],
        "definition.nodes[0].prompt": ["This field is required."],
        "definition.nodes[1].tool": ["This field is required."],
        "definition.nodes[2].output": ["This field is required."],
        "definition.nodes[3].id": ["This field is required."],
    }


def test_fields_of_another_node_type_are_unknown() -> None:
    definition = {"nodes": [{"id": "a", "type": "tool", "tool": "http-get", "prompt": "x"}]}
    assert errors_of(definition) == {"definition.nodes[0].prompt": ["Unknown field."]}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("depends_on", "a", "Must be of type array."),
        ("depends_on", ["x", "x"], "Must not contain duplicates."),
        ("when", "", "should be non-empty"),
        ("when", True, "Must be of type string."),
        ("timeout_seconds", 0, "Must be greater than 0."),
        ("continue_on_failure", "yes", "Must be of type boolean."),
        ("retry", {"max_attempts": 0}, "Must be at least 1."),
        ("retry", {"max_attempts": 21}, "Must be at most 20."),
        ("retry", {"backoff_seconds": -1}, "Must be at least 0."),
        ("retry", {"attempts": 2}, "Unknown field."),
        ("args", [], "Must be of type object."),
    ],
)
def test_field_values_are_checked_with_the_path_in_the_key(
    field: str, value: Any, message: str
) -> None:
    definition = example()
    definition["nodes"][1][field] = value
    errors = errors_of(definition)
    assert any(key.startswith(f"definition.nodes[1].{field}") for key in errors), errors
    assert any(message in text for texts in errors.values() for text in texts), errors


@pytest.mark.parametrize("node_id", ["1abc", "has space", "a.b", "", "x" * 65])
def test_node_ids_must_be_identifiers(node_id: str) -> None:
    errors = errors_of({"nodes": [transform(node_id)]})
    assert list(errors) == ["definition.nodes[0].id"]
    assert "Invalid node id" in errors["definition.nodes[0].id"][0]


def test_duplicate_node_ids() -> None:
    definition = {"nodes": [transform("a"), transform("b"), transform("a")]}
    assert errors_of(definition) == {
        "definition.nodes[0].id": ["Duplicate node id 'a'."],
        "definition.nodes[2].id": ["Duplicate node id 'a'."],
    }


def test_unknown_node_type() -> None:
    definition = {"nodes": [transform("a"), {"id": "b", "type": "webhook", "url": "x"}]}
    assert errors_of(definition) == {
        "definition.nodes[1].type": [
            "Unknown node type 'webhook'; expected one of: agent, tool, approval, transform, "
            "switch, map, workflow, loop."
        ]
    }


def test_unknown_agent() -> None:
    definition = example()
    definition["nodes"][0]["agent"] = "ghostwriter"
    assert errors_of(definition) == {"definition.nodes[0].agent": ["Unknown agent 'ghostwriter'."]}


def test_unknown_tool() -> None:
    definition = example()
    definition["nodes"][1]["tool"] = "rm-rf"
    assert errors_of(definition) == {"definition.nodes[1].tool": ["Unknown tool 'rm-rf'."]}


def test_agents_and_tools_are_looked_up_once_each() -> None:
    calls: list[str] = []

    def exists(name: str) -> bool:
        calls.append(name)
        return True

    definition = example()
    definition["nodes"].append({**definition["nodes"][1], "id": "fetch2"})
    validate_definition(definition, agent_exists=exists, tool_exists=exists)
    assert sorted(calls) == ["http-get", "post-summary", "researcher"]


def test_cycles_name_their_nodes() -> None:
    definition = {
        "nodes": [
            transform("a", depends_on=["c"]),
            transform("b", depends_on=["a"]),
            transform("c", depends_on=["b"]),
            transform("d"),
        ]
    }
    errors = errors_of(definition)
    [(key, [message])] = errors.items()
    assert key.startswith("definition.nodes[") and key.endswith("].depends_on")
    assert message.startswith("Dependency cycle: ")
    nodes = message.removeprefix("Dependency cycle: ").rstrip(".").split(" -> ")
    assert set(nodes) == {"a", "b", "c"}
    assert nodes[0] == nodes[-1]


def test_a_node_depending_on_itself_is_a_cycle() -> None:
    definition = {"nodes": [transform("a", depends_on=["a"])]}
    assert errors_of(definition) == {
        "definition.nodes[0].depends_on": ["Dependency cycle: a -> a."]
    }


def test_unknown_depends_on() -> None:
    definition = example()
    definition["nodes"][3]["depends_on"] = ["review", "fetchx"]
    errors = errors_of(definition)
    assert errors == {"definition.nodes[3].depends_on": ["Unknown node 'fetchx'."]}


@pytest.mark.parametrize(
    ("node", "key"),
    [
        (
            {"id": "n", "type": "agent", "agent": "writer", "prompt": "Hi {{ input.x "},
            "definition.nodes[1].prompt",
        ),
        (
            {"id": "n", "type": "tool", "tool": "http-get", "args": {"h": {"a": ["{% if %}"]}}},
            "definition.nodes[1].args.h.a[0]",
        ),
        (
            {"id": "n", "type": "approval", "message": "{{ x|nofilter }}"},
            "definition.nodes[1].message",
        ),
        (transform("n", when="input.x >"), "definition.nodes[1].when"),
        (transform("n", when="{{ input.a }} {{ input.b }}"), "definition.nodes[1].when"),
        (transform("n", {"k": "{% for x in y %}"}), "definition.nodes[1].output.k"),
    ],
)
def test_template_syntax_errors(node: dict[str, Any], key: str) -> None:
    errors = errors_of({"nodes": [transform("first"), node]})
    assert list(errors) == [key]
    assert "syntax error" in errors[key][0] or "single expression" in errors[key][0]


def test_template_syntax_error_in_the_workflow_output() -> None:
    definition = example()
    definition["output"] = {"summary": ["{{ steps.research.output.text"]}
    errors = errors_of(definition)
    assert list(errors) == ["definition.output.summary[0]"]
    assert "line 1" in errors["definition.output.summary[0]"][0]


def test_templates_using_python_internals_are_refused_at_save_time() -> None:
    definition = example()
    definition["nodes"][0]["prompt"] = "{{ cycler.__init__.__globals__ }}"
    errors = errors_of(definition)
    [message] = errors["definition.nodes[0].prompt"]
    assert message.startswith("Line 1: access to '__") and message.endswith("is not allowed.")


def test_steps_that_are_not_upstream() -> None:
    definition = example()
    # fetch does not depend on research; research cannot read itself.
    definition["nodes"][1]["args"]["q"] = "{{ steps.research.output.text }}"
    definition["nodes"][0]["prompt"] = "Again: {{ steps['research'].output }}"
    definition["nodes"][2]["when"] = "steps.publish.status == 'succeeded'"
    errors = errors_of(definition)
    assert errors == {
        "definition.nodes[1].args.q": [
            "Step 'research' is not upstream of 'fetch'; add it to depends_on "
            "(directly or through another node)."
        ],
        "definition.nodes[0].prompt": [
            "Step 'research' is not upstream of 'research'; add it to depends_on "
            "(directly or through another node)."
        ],
        "definition.nodes[2].when": [
            "Step 'publish' is not upstream of 'review'; add it to depends_on "
            "(directly or through another node)."
        ],
    }


def test_transitive_upstream_steps_may_be_read() -> None:
    definition = example()
    # publish -> review -> research: research is upstream through review.
    definition["nodes"][3]["args"]["text"] = "{{ steps.research.output.text }}"
    validate(definition)


def test_references_to_unknown_steps() -> None:
    definition = example()
    definition["nodes"][3]["args"]["text"] = "{{ steps.resarch.output }}"
    definition["output"] = {"summary": "{{ steps.nope.output }}"}
    assert errors_of(definition) == {
        "definition.nodes[3].args.text": ["Unknown step 'resarch'."],
        "definition.output.summary": ["Unknown step 'nope'."],
    }


def test_the_workflow_output_may_read_any_step() -> None:
    definition = example()
    definition["output"] = "{{ steps.fetch.output }}{{ steps.publish.status }}"
    validate(definition)


def test_unknown_template_roots() -> None:
    definition = example()
    definition["nodes"][0]["prompt"] = (
        "{{ inputs.topic }} {% for i in input.tags %}{{ i }}{% endfor %}"
    )
    definition["output"] = "{{ env.HOME }}"
    assert errors_of(definition) == {
        "definition.nodes[0].prompt": [
            "Unknown template variable 'inputs'; use one of: input, run, secrets, steps."
        ],
        "definition.output": [
            "Unknown template variable 'env'; use one of: input, run, secrets, steps."
        ],
    }


def test_steps_must_be_referenced_by_literal_id() -> None:
    definition = example()
    definition["nodes"][3]["args"]["text"] = "{{ steps[input.which].output }}"
    errors = errors_of(definition)
    assert errors == {
        "definition.nodes[3].args.text": [
            "Refer to steps by literal id: steps.<id> or steps['<id>']."
        ]
    }


def test_input_schema_must_be_a_valid_json_schema() -> None:
    definition = example()
    definition["input_schema"] = {"type": "object", "properties": {"topic": {"type": "text"}}}
    errors = errors_of(definition)
    assert list(errors) == ["definition.input_schema.properties.topic.type"]
    assert errors["definition.input_schema.properties.topic.type"][0].startswith(
        "Not a valid JSON Schema:"
    )


def test_input_schema_must_be_an_object() -> None:
    definition = example()
    definition["input_schema"] = ["string"]
    assert errors_of(definition) == {"definition.input_schema": ["Must be of type object."]}


def test_all_errors_are_collected() -> None:
    definition = {
        "nodes": [
            {"id": "a", "type": "agent", "agent": "ghost", "prompt": "{{ steps.b.output }}"},
            {"id": "a", "type": "tool", "tool": "nope", "depends_on": ["zzz"]},
            {"id": "b", "type": "widget"},
        ],
        "output": "{{ bogus }}",
        "extra": True,
    }
    errors = errors_of(definition)
    assert set(errors) == {
        "definition.extra",
        "definition.nodes[0].id",
        "definition.nodes[0].agent",
        "definition.nodes[0].prompt",
        "definition.nodes[1].id",
        "definition.nodes[1].tool",
        "definition.nodes[1].depends_on",
        "definition.nodes[2].type",
        "definition.output",
    }


# --- graph helpers --------------------------------------------------------------------------


def test_graph_of_a_diamond() -> None:
    result = graph(DIAMOND)
    assert result["layers"] == [["a"], ["b", "c"], ["d"]]
    assert result["nodes"] == [
        {"id": "d", "type": "transform", "label": "d", "depends_on": ["b", "c"], "when": None},
        {"id": "b", "type": "transform", "label": "b", "depends_on": ["a"], "when": None},
        {"id": "c", "type": "transform", "label": "c", "depends_on": ["a"], "when": "input.go"},
        {"id": "a", "type": "transform", "label": "a", "depends_on": [], "when": None},
    ]
    assert result["edges"] == [
        {"source": "b", "target": "d", "conditional": False},
        {"source": "c", "target": "d", "conditional": False},
        {"source": "a", "target": "b", "conditional": False},
        {"source": "a", "target": "c", "conditional": True},
    ]


def test_graph_of_the_example_uses_descriptions_as_labels() -> None:
    definition = example()
    definition["nodes"][0]["description"] = "Research the topic"
    result = graph(definition)
    assert result["layers"] == [["research", "fetch"], ["review"], ["publish"]]
    assert result["nodes"][0]["label"] == "Research the topic"
    assert {"source": "fetch", "target": "publish", "conditional": True} in result["edges"]


def test_topological_order_and_upstream() -> None:
    assert topological_order(DIAMOND) == ["a", "b", "c", "d"]
    assert upstream(DIAMOND) == {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"a", "b", "c"}}
    assert upstream(EXAMPLE)["publish"] == {"review", "fetch", "research"}


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(InvalidInput) as exc_info:
        topological_order(
            {"nodes": [transform("a", depends_on=["b"]), transform("b", depends_on=["a"])]}
        )
    assert "Dependency cycle" in exc_info.value.errors["definition.nodes"][0]


# --- run input ----------------------------------------------------------------------------


def test_valid_input_passes() -> None:
    validate_input(EXAMPLE["input_schema"], {"topic": "cats"})


def test_no_input_schema_accepts_anything() -> None:
    validate_input(None, {"anything": [1, 2]})


def test_input_errors_are_listed_by_path() -> None:
    schema = {
        "type": "object",
        "properties": {
            "topic": {"type": "string"},
            "address": {
                "type": "object",
                "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "mode": {"enum": ["fast", "slow"]},
        },
        "required": ["topic", "mode"],
        "additionalProperties": False,
    }
    with pytest.raises(InvalidInput) as exc_info:
        validate_input(
            schema, {"address": {"zip": "abc"}, "tags": ["ok", 3], "mode": "medium", "x": 1}
        )
    assert exc_info.value.detail == "Invalid run input."
    assert exc_info.value.errors == {
        "input.topic": ["This field is required."],
        "input.address.zip": ["'abc' does not match '^[0-9]{5}$'"],
        "input.tags[1]": ["Must be of type string."],
        "input.mode": ["Must be one of: 'fast', 'slow'."],
        "input.x": ["Unknown field."],
    }


def test_input_of_the_wrong_type() -> None:
    with pytest.raises(InvalidInput) as exc_info:
        validate_input({"type": "object"}, ["not", "an", "object"])
    assert exc_info.value.errors == {"input": ["Must be of type object."]}


def test_input_formats_are_checked() -> None:
    schema = {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
    validate_input(schema, {"email": "a@example.com"})
    with pytest.raises(InvalidInput) as exc_info:
        validate_input(schema, {"email": "not an email"})
    assert list(exc_info.value.errors) == ["input.email"]


def test_input_patterns_run_in_linear_time() -> None:
    # `(a+)+$` backtracks exponentially in Python's `re`: 100k characters would never finish
    schema = {"type": "object", "properties": {"topic": {"type": "string", "pattern": "(a+)+$"}}}
    with pytest.raises(InvalidInput) as caught:
        validate_input(schema, {"topic": "a" * 100_000 + "!"})
    assert list(caught.value.errors or {}) == ["input.topic"]
    validate_input(schema, {"topic": "a" * 100_000})


def test_input_schema_patterns_re2_cannot_run_are_refused() -> None:
    definition = example()
    definition["input_schema"] = {
        "type": "object",
        "properties": {"topic": {"type": "string", "pattern": r"(\w)\1"}},
    }
    errors = errors_of(definition)
    assert list(errors) == ["definition.input_schema.properties.topic.pattern"], errors


# --- switch -------------------------------------------------------------------------------

ROUTED: dict[str, Any] = {
    "nodes": [
        {"id": "classify", "type": "agent", "agent": "researcher", "prompt": "Classify"},
        {
            "id": "route",
            "type": "switch",
            "depends_on": ["classify"],
            "value": "{{ steps.classify.output.category }}",
            "cases": [
                {"equals": "bug", "to": "fix"},
                {"when": "{{ steps.classify.output.urgent }}", "to": "escalate"},
            ],
            "default": "answer",
        },
        transform("fix", "fix", depends_on=["route"]),
        transform("escalate", "page", depends_on=["route"]),
        transform("answer", "reply", depends_on=["route"]),
        transform("done", "{{ steps.fix.status }}", depends_on=["fix", "escalate", "answer"]),
    ]
}


def routed() -> dict[str, Any]:
    return copy.deepcopy(ROUTED)


def test_a_switch_with_equals_when_and_default_is_valid() -> None:
    validate(routed())
    edges = {(e["source"], e["target"]): e["conditional"] for e in graph(ROUTED)["edges"]}
    assert edges[("route", "fix")] and edges[("route", "answer")]
    assert not edges[("classify", "route")] and not edges[("fix", "done")]


def test_switch_branches_must_exist_and_depend_on_the_switch() -> None:
    definition = routed()
    definition["nodes"][1]["cases"][0]["to"] = "nowhere"
    definition["nodes"][1]["cases"][1]["to"] = "route"
    definition["nodes"][1]["default"] = "classify"
    assert errors_of(definition) == {
        "definition.nodes[1].cases[0].to": ["Switch 'route' branches to unknown node 'nowhere'."],
        "definition.nodes[1].cases[1].to": ["Switch 'route' cannot branch to itself."],
        "definition.nodes[1].default": [
            "Node 'classify' must list 'route' in its depends_on to be a branch of switch 'route'."
        ],
    }


def test_switch_cases_need_one_test_and_equals_needs_a_value() -> None:
    definition = routed()
    switch = definition["nodes"][1]
    del switch["value"]
    switch["cases"].append({"to": "fix"})
    switch["cases"].append({"when": "{{ true }}", "equals": 1, "to": "fix"})
    assert errors_of(definition) == {
        "definition.nodes[1].cases[0].equals": [
            "Switch 'route' has no `value` for `equals` to compare with."
        ],
        "definition.nodes[1].cases[2]": [
            "Switch 'route': a case needs exactly one of `when` or `equals`."
        ],
        "definition.nodes[1].cases[3]": [
            "Switch 'route': a case needs exactly one of `when` or `equals`."
        ],
    }


def test_switch_expressions_are_checked_like_when() -> None:
    definition = routed()
    switch = definition["nodes"][1]
    switch["value"] = "{{ steps.fix.output }}"  # downstream of the switch
    switch["cases"][1]["when"] = "{{ steps.classify.output.urgent ==  }}"
    switch["cases"].append({"when": "{{ steps.ghost.output }}", "to": "fix"})
    errors = errors_of(definition)
    assert errors["definition.nodes[1].value"] == [
        "Step 'fix' is not upstream of 'route'; add it to depends_on (directly or through "
        "another node)."
    ]
    assert "definition.nodes[1].cases[1].when" in errors
    assert errors["definition.nodes[1].cases[2].when"] == ["Unknown step 'ghost'."]


def test_switch_schema_fields() -> None:
    definition = routed()
    switch = definition["nodes"][1]
    switch["cases"] = []
    switch["default"] = 3
    switch["otherwise"] = "x"
    assert errors_of(definition) == {
        "definition.nodes[1].cases": ["Must contain at least 1 item(s)."],
        "definition.nodes[1].default": ["Must be of type string."],
        "definition.nodes[1].otherwise": ["Unknown field."],
    }
    del switch["cases"]
    assert "definition.nodes[1].cases" in errors_of(definition)


def readme_example(name: str) -> dict[str, Any]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split(f"<!-- example: {name} -->\n```json\n", 1)[1].split("```", 1)[0]
    return json.loads(block)


def test_the_readme_switch_example_is_valid() -> None:
    example_definition = readme_example("switch")
    validate_definition(
        example_definition, agent_exists=lambda slug: True, tool_exists=lambda name: True
    )
    assert [n["type"] for n in example_definition["nodes"]][1] == "switch"


# --- map ----------------------------------------------------------------------------------


def mapped(**fields: Any) -> dict[str, Any]:
    return {
        "nodes": [
            transform("docs", ["a", "b"]),
            {
                "id": "m",
                "type": "map",
                "depends_on": ["docs"],
                "items": "{{ steps.docs.output }}",
                "node": {
                    "type": "agent",
                    "agent": "writer",
                    "prompt": "Summarise {{ item }} ({{ item_index }}) for {{ input.who }}",
                },
                "max_concurrency": 5,
                "on_item_failure": "collect",
                "retry": {"max_attempts": 2},
                **fields,
            },
            transform("all", "{{ steps.m.output }}", depends_on=["m"]),
        ]
    }


def test_a_map_is_valid_and_its_item_node_reads_item() -> None:
    validate(mapped())
    validate(mapped(items=[1, 2, 3], node={"type": "tool", "tool": "http-get", "args": {}}))


def test_the_map_item_node_is_checked_like_a_node() -> None:
    assert errors_of(mapped(node={"type": "agent", "agent": "ghost", "id": "x"})) == {
        "definition.nodes[1].node.prompt": ["This field is required."],
        "definition.nodes[1].node.id": ["Unknown field."],
        "definition.nodes[1].node.agent": ["Unknown agent 'ghost'."],
    }
    assert errors_of(mapped(node={"type": "approval"})) == {
        "definition.nodes[1].node.type": [
            "Unknown node type 'approval'; expected one of: agent, tool, transform, workflow."
        ]
    }


def test_map_templates() -> None:
    errors = errors_of(
        mapped(
            items="{{ steps.all.output }}",
            node={"type": "transform", "output": "{{ itme }} {{ steps.ghost }}"},
        )
    )
    assert errors["definition.nodes[1].items"] == [
        "Step 'all' is not upstream of 'm'; add it to depends_on (directly or through "
        "another node)."
    ]
    assert errors["definition.nodes[1].node.output"] == [
        "Unknown template variable 'itme'; use one of: input, item, item_index, run, secrets, "
        "steps.",
        "Unknown step 'ghost'.",
    ]
    # `item` is only for the item node
    definition = mapped()
    definition["nodes"][2]["output"] = "{{ item }}"
    assert "definition.nodes[2].output" in errors_of(definition)


def test_map_fields() -> None:
    assert errors_of(mapped(items=3, max_concurrency=0, on_item_failure="ignore")) == {
        "definition.nodes[1].items": ["Must be of type string or array."],
        "definition.nodes[1].max_concurrency": ["Must be at least 1."],
        "definition.nodes[1].on_item_failure": ["Must be one of: 'fail_fast', 'collect'."],
    }


def test_a_literal_list_over_the_item_limit_is_refused(settings: Any) -> None:
    settings.SPARKOPS_MAP_MAX_ITEMS = 2
    assert errors_of(mapped(items=[1, 2, 3])) == {
        "definition.nodes[1].items": [
            "Map 'm' has 3 items; at most 2 are allowed (SPARKOPS_MAP_MAX_ITEMS)."
        ]
    }
    validate(mapped(items=[1, 2]))


def test_the_readme_map_example_is_valid() -> None:
    example_definition = readme_example("map")
    validate_definition(
        example_definition, agent_exists=lambda slug: True, tool_exists=lambda name: True
    )
    assert example_definition["nodes"][0]["type"] == "map"


# --- workflow -----------------------------------------------------------------------------


def nested(**fields: Any) -> dict[str, Any]:
    return {
        "nodes": [
            transform("a", 1),
            {
                "id": "sub",
                "type": "workflow",
                "workflow": "research",
                "depends_on": ["a"],
                "input": {"topic": "{{ input.topic }}", "seed": "{{ steps.a.output }}"},
                "output": "{{ child.output.summary }}",
                **fields,
            },
        ]
    }


def test_a_workflow_node_is_valid_and_checks_its_workflow() -> None:
    validate(nested())
    known = {"research"}.__contains__
    definition = nested(workflow="elsewhere")
    validate_definition(definition, agent_exists=bool, tool_exists=bool)  # no checker: no check
    with pytest.raises(InvalidInput) as exc_info:
        validate_definition(definition, agent_exists=bool, tool_exists=bool, workflow_exists=known)
    assert exc_info.value.errors == {
        "definition.nodes[1].workflow": [
            "Node 'sub' runs unknown workflow 'elsewhere' (not in this project)."
        ]
    }


def test_workflow_node_templates() -> None:
    errors = errors_of(
        nested(input={"x": "{{ child.output }}"}, output="{{ steps.ghost }} {{ child.id }}")
    )
    assert errors["definition.nodes[1].input.x"] == [
        "Unknown template variable 'child'; use one of: input, run, secrets, steps."
    ]
    assert errors["definition.nodes[1].output"] == ["Unknown step 'ghost'."]
    assert errors_of(nested(workflow="", extra=1)) == {
        "definition.nodes[1].workflow": ["'' should be non-empty"],
        "definition.nodes[1].extra": ["Unknown field."],
    }


# --- loop ---------------------------------------------------------------------------------


def looped(**fields: Any) -> dict[str, Any]:
    return {
        "nodes": [
            transform("draft", "text"),
            {
                "id": "refine",
                "type": "loop",
                "depends_on": ["draft"],
                "node": {
                    "type": "agent",
                    "agent": "writer",
                    "prompt": "Improve {{ previous or steps.draft.output }} ({{ iteration }})",
                },
                "until": "{{ output.score > 0.8 or iteration >= 3 }}",
                "max_iterations": 5,
                **fields,
            },
        ]
    }


def test_a_loop_is_valid() -> None:
    validate(looped())
    validate(looped(node={"type": "workflow", "workflow": "w", "output": "{{ child.output }}"}))


def test_loop_body_until_and_limits_are_checked() -> None:
    errors = errors_of(
        looped(
            node={"type": "agent", "agent": "ghost", "prompt": "{{ output }}"},
            until="{{ previous }}",
            max_iterations=51,
        )
    )
    assert errors == {
        "definition.nodes[1].max_iterations": ["Must be at most 50."],
        "definition.nodes[1].node.agent": ["Unknown agent 'ghost'."],
        "definition.nodes[1].node.prompt": [
            "Unknown template variable 'output'; use one of: input, iteration, previous, run, "
            "secrets, steps."
        ],
        "definition.nodes[1].until": [
            "Unknown template variable 'previous'; use one of: input, iteration, output, run, "
            "secrets, steps."
        ],
    }
    assert errors_of(looped(node={"type": "approval"}))["definition.nodes[1].node.type"] == [
        "Unknown node type 'approval'; expected one of: agent, tool, transform, workflow."
    ]
    definition = looped()
    del definition["nodes"][1]["until"]
    assert errors_of(definition) == {"definition.nodes[1].until": ["This field is required."]}


@pytest.mark.parametrize("name", ["workflow", "loop"])
def test_the_readme_examples_are_valid(name: str) -> None:
    validate_definition(
        readme_example(name), agent_exists=lambda slug: True, tool_exists=lambda name: True
    )
