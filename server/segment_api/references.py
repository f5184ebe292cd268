"""Segment references as a graph of the live segments: what a rule may refer to, and who refers to whom.

A rule may refer (`{"segment": id}`) to any segment that is not deleted, DYNAMIC or STATIC, active or
paused; never to itself, never so as to close a cycle, and at most `MAX_REFERENCE_DEPTH` levels deep
counting the segments that refer to the one being written. The graph is read from the stored rules
(`SegmentRepository.reference_graph`), under `REFERENCE_LOCK` when a write depends on it, so two writes
racing each other cannot create a cycle or a reference to a segment being deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from server.domain.rules import Rule, RuleIssue, RuleValidationError, parse_rule, reference_paths, references
from server.runtime.errors import InvalidInput

MAX_REFERENCE_DEPTH: Final = 8
# The key of the transaction-scoped advisory lock every write that adds references, and every delete, takes
# ("am_refs" in ASCII): one writer at a time sees and changes the graph.
REFERENCE_LOCK: Final = 0x616D5F72656673
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class SegmentNode:
    """A live segment as the graph sees it: its name, and the segments its rule refers to."""

    name: str
    references: frozenset[str] = frozenset()


def stored_references(rules: Mapping[str, Any] | None) -> frozenset[str]:
    """The segments a stored rule refers to (none for a STATIC segment, or a rule the language no longer reads)."""
    if rules is None:
        return frozenset()
    try:
        return references(parse_rule(rules))
    except RuleValidationError:  # stored rules were valid when written; one that no longer parses refers to nothing
        return frozenset()


class ReferenceGraph:
    """Every live segment by id; `problems` checks a rule against it, `referrers` answers who refers to a segment."""

    def __init__(self, nodes: Mapping[str, SegmentNode]) -> None:
        self.nodes = dict(nodes)

    def name(self, segment_id: str) -> str:
        node = self.nodes.get(segment_id)
        return node.name if node is not None else segment_id

    def referrers(self, segment_id: str) -> list[tuple[str, str]]:
        """(id, name) of the other live segments whose rule refers to this one, by name."""
        found = [(sid, node.name) for sid, node in self.nodes.items()
                 if segment_id in node.references and sid != segment_id]
        return sorted(found, key=lambda item: (item[1], item[0]))

    def problems(self, rule: Rule, segment_id: str | None = None, name: str = "") -> list[RuleIssue]:
        """What is wrong with the references of `rule` as the rule of segment `segment_id` (None: a new segment,
        or a preview), named `name`: each with the path of the reference."""
        graph = dict(self.nodes)
        if segment_id is not None:  # the rule replaces what the segment refers to now
            graph[segment_id] = SegmentNode(name, references(rule))
        issues: list[RuleIssue] = []
        # the segments above this one (referring to it), not through its own new references
        above = [] if segment_id is None else _longest(segment_id,
                                                       _referrers_of({**graph, segment_id: SegmentNode(name)}))
        for path, target in reference_paths(rule):
            if target != segment_id and target not in self.nodes:
                issues.append(RuleIssue(path, f"no segment {target}"))
                continue
            loop = [] if segment_id is None else _route(target, segment_id, graph)
            if loop:
                names = [name, *(graph[sid].name for sid in loop)]
                issues.append(RuleIssue(path, "reference cycle " + " → ".join(names)))
                continue
            chain: list[str | None] = [*reversed(above), *_longest(target, {s: n.references for s, n in graph.items()})]
            if segment_id is None:
                chain = [None, *chain]  # the previewed rule is the first level
            if len(chain) - 1 > MAX_REFERENCE_DEPTH:
                names = [(name or "(this rule)") if sid is None or sid == segment_id else graph[sid].name
                         for sid in chain]
                issues.append(RuleIssue(path, f"references nest {len(chain) - 1} levels deep, at most "
                                              f"{MAX_REFERENCE_DEPTH}: " + " → ".join(names)))
        return issues


def _referrers_of(graph: Mapping[str, SegmentNode]) -> dict[str, set[str]]:
    referrers: dict[str, set[str]] = {}
    for sid, node in graph.items():
        for target in node.references:
            referrers.setdefault(target, set()).add(sid)
    return referrers


def _route(start: str, goal: str, graph: Mapping[str, SegmentNode]) -> list[str]:
    """A path of references from `start` to `goal` (both included), or [] when there is none."""
    came_from: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        current = todo.pop()
        if current == goal:
            path: list[str] = []
            step: str | None = current
            while step is not None:
                path.append(step)
                step = came_from[step]
            return path[::-1]
        node = graph.get(current)
        for target in sorted(node.references) if node is not None else ():
            if target not in came_from:
                came_from[target] = current
                todo.append(target)
    return []


def _longest(start: str, edges: Mapping[str, Iterable[str]]) -> list[str]:
    """The longest path along `edges` from `start` (itself included), never through a segment twice."""
    best: dict[str, list[str]] = {}

    def walk(node: str, on_path: frozenset[str]) -> list[str]:
        if node in best:
            return best[node]
        longest: list[str] = []
        for target in sorted(edges.get(node, ())):
            if target not in on_path:  # a cycle stored before the checks existed: not followed round again
                candidate = walk(target, on_path | {target})
                if len(candidate) > len(longest):
                    longest = candidate
        best[node] = [node, *longest]
        return best[node]

    return walk(start, frozenset({start}))


def invalid_rules(issues: list[RuleIssue]) -> InvalidInput:
    """The 422 for problems in `body.rules`, each at its location (`rules.all[0].segment`: body.rules.all.0.segment)."""
    return InvalidInput("; ".join(map(str, issues)), [(_location(i.path), str(i)) for i in issues])


def _location(path: str) -> list[str | int]:
    return ["body", *(name or int(index) for name, index in _PATH_PART.findall(path))]
