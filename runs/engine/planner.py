"""Pure planning: from a definition's nodes and the current step statuses, what happens next.

No database, no Celery: the run engine (runs.services.planning) feeds it the statuses it read
under the run's row lock and applies the plan. Kept pure so its rules are unit-tested alone.

Rules (DESIGN.md §6):
- a node is ready when every upstream node is finished;
- a ready node whose every upstream was skipped is skipped (so are nodes downstream of only
  skipped nodes, transitively); `when` is evaluated by the caller, which needs the outputs;
- a branch of a `switch` is skipped once the switch is finished unless the switch succeeded
  and picked it (`chosen`, read by the caller from the switch's output); its downstream then
  follows the rule above;
- a failed node fails the run unless it says `continue_on_failure`;
- a run with a fatal failure finishes `failed` (remaining nodes are cancelled by the caller);
  a run whose nodes are all finished finishes `succeeded`; one with nothing queued or running
  but a node waiting for approval is `waiting_approval`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from workflows.definition import switch_branches

PENDING = "pending"
QUEUED = "queued"
RUNNING = "running"
WAITING_APPROVAL = "waiting_approval"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})
IN_FLIGHT = frozenset({QUEUED, RUNNING})


@dataclass(frozen=True)
class NodeSpec:
    id: str
    type: str
    depends_on: tuple[str, ...] = ()
    continue_on_failure: bool = False
    when: str | None = None
    branches: tuple[str, ...] = ()  # a switch's possible targets

    @classmethod
    def from_definition(cls, node: dict[str, Any]) -> NodeSpec:
        return cls(
            id=node["id"],
            type=node["type"],
            depends_on=tuple(node.get("depends_on") or ()),
            continue_on_failure=bool(node.get("continue_on_failure", False)),
            when=node.get("when"),
            branches=tuple(switch_branches(node)),
        )


def nodes_of(definition: dict[str, Any]) -> list[NodeSpec]:
    return [NodeSpec.from_definition(node) for node in definition.get("nodes", [])]


@dataclass
class Plan:
    ready: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    # Why a node in `skip` is skipped, when not because its every upstream was.
    skip_reasons: dict[str, str] = field(default_factory=dict)
    # "succeeded" | "failed" when the run is over, else "running" | "waiting_approval".
    run_status: str = RUNNING

    @property
    def finished(self) -> bool:
        return self.run_status in (SUCCEEDED, FAILED)


def plan(
    nodes: Iterable[NodeSpec], statuses: dict[str, str], chosen: dict[str, str] | None = None
) -> Plan:
    """`chosen`: the branch each succeeded switch picked. Called on every step's end with
    every node: one pass over the nodes where nothing can cascade (no skipped node, no
    finished switch), which is the common case."""
    nodes = nodes if isinstance(nodes, list | tuple) else list(nodes)
    chosen = chosen or {}
    result = Plan()
    result.fatal = [
        node.id
        for node in nodes
        if not node.continue_on_failure and statuses.get(node.id) == FAILED
    ]
    if result.fatal:
        result.run_status = FAILED
        return result

    if SKIPPED in statuses.values() or any(
        node.branches and statuses.get(node.id) in FINISHED for node in nodes
    ):
        statuses = _cascade(nodes, dict(statuses), chosen, result)

    all_finished = True
    in_flight = waiting = False
    for node in nodes:
        status = statuses.get(node.id)
        if status in FINISHED:
            continue
        all_finished = False
        if status == PENDING:
            if all(statuses.get(dep) in FINISHED for dep in node.depends_on):
                result.ready.append(node.id)
        elif status in IN_FLIGHT:
            in_flight = True
        elif status == WAITING_APPROVAL:
            waiting = True

    if all_finished:
        result.run_status = SUCCEEDED
    elif not result.ready and not in_flight and waiting:
        result.run_status = WAITING_APPROVAL
    return result


def _cascade(
    nodes: list[NodeSpec] | tuple[NodeSpec, ...],
    statuses: dict[str, str],
    chosen: dict[str, str],
    result: Plan,
) -> dict[str, str]:
    """Skips cascade: skipping one node can make its downstream skippable in the same pass.
    Only a skipped node or a finished switch starts one. Returns `statuses` with the skips."""
    by_id = {node.id: node for node in nodes}
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if statuses.get(node.id) != PENDING or not node.depends_on:
                continue
            switch = _not_taken(node, by_id, statuses, chosen)
            if switch is not None:
                statuses[node.id] = SKIPPED
                result.skip.append(node.id)
                result.skip_reasons[node.id] = f"switch '{switch}' took another branch"
                changed = True
                continue
            upstream = [statuses.get(dep) for dep in node.depends_on if dep in by_id]
            if upstream and all(status == SKIPPED for status in upstream):
                statuses[node.id] = SKIPPED
                result.skip.append(node.id)
                changed = True
    return statuses


def _not_taken(
    node: NodeSpec, by_id: dict[str, NodeSpec], statuses: dict[str, str], chosen: dict[str, str]
) -> str | None:
    """The finished switch upstream of `node` that did not pick it, if any."""
    for dep in node.depends_on:
        switch = by_id.get(dep)
        if (
            switch is not None
            and node.id in switch.branches
            and statuses.get(dep) in FINISHED
            and not (statuses.get(dep) == SUCCEEDED and chosen.get(dep) == node.id)
        ):
            return dep
    return None
