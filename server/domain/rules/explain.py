"""Why a rule holds for a user: the tree with every node's result and every leaf's observed value.

`explain` is the reference interpreter again, without short-circuiting, so every node gets a result;
`flipped` compares the leaves of two evaluations (`leaf_results` before and after an event) and names those
that changed.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, datetime
from typing import Any

from server.domain.profile import MISSING, Profile
from server.domain.rules.evaluate import behaviour_value, occurred, occurrence, passes, test_value
from server.domain.rules.model import OCCURRENCES, AllOf, AnyOf, Behaviour, Condition, Not, Rule, SegmentRef
from server.domain.rules.parse import rule_to_json
from server.domain.timeutil import format_timestamp


def observed(value: Any) -> Any:
    """A leaf's value as JSON: a moment as ISO-8601, a field the profile lacks as null."""
    if value is MISSING:
        return None
    if isinstance(value, datetime):
        return format_timestamp(value)
    return value


def explain(rule: Rule, profile: Profile, now: datetime | None = None, member_of: Container[str] = frozenset(),
            path: str = "rules") -> dict[str, Any]:
    """The canonical JSON of `rule` with `"result"` on every node and `"value"`, the value observed, on every leaf
    (a condition's own value is under `"operand"`), and each node's `"path"`, as validation errors name it."""
    now = now or datetime.now(UTC)
    if isinstance(rule, AllOf | AnyOf):
        key = "all" if isinstance(rule, AllOf) else "any"
        children = [explain(c, profile, now, member_of, f"{path}.{key}[{i}]") for i, c in enumerate(rule.children)]
        results = [c["result"] for c in children]
        return {key: children, "path": path, "result": all(results) if key == "all" else any(results)}
    if isinstance(rule, Not):
        child = explain(rule.child, profile, now, member_of, f"{path}.not")
        return {"not": child, "path": path, "result": not child["result"]}
    value, result = _leaf(rule, profile, now, member_of)
    body = rule_to_json(rule)
    if "value" in body:  # a condition's own value is its `operand`: `value` is what was observed
        body = {"field": body["field"], "operator": body["operator"], "operand": body["value"]}
    body.update({"path": path, "value": observed(value), "result": result})
    return {**body, "missing": True} if value is MISSING else body


Leaves = tuple[tuple[str, Rule], ...]  # (path, leaf) of every leaf of a tree, in document order


def leaf_paths(rule: Rule, path: str = "rules") -> Leaves:
    """Every leaf of the tree with its path, as validation errors and `explain` name it."""
    if isinstance(rule, AllOf | AnyOf):
        key = "all" if isinstance(rule, AllOf) else "any"
        return tuple(leaf for i, child in enumerate(rule.children)
                     for leaf in leaf_paths(child, f"{path}.{key}[{i}]"))
    if isinstance(rule, Not):
        return leaf_paths(rule.child, f"{path}.not")
    return ((path, rule),)


def leaf_value(rule: Rule, profile: Profile, now: datetime, member_of: Container[str]) -> tuple[Any, bool]:
    """A leaf's observed value and result (the reference for `compile_leaves`)."""
    return _leaf(rule, profile, now, member_of)


def _leaf(rule: Rule, profile: Profile, now: datetime, member_of: Container[str]) -> tuple[Any, bool]:
    if isinstance(rule, Condition):
        value = profile.lookup(rule.path)
        return value, test_value(rule.operator, value, rule.value, now)
    if isinstance(rule, SegmentRef):
        return rule.segment_id in member_of, rule.segment_id in member_of
    assert isinstance(rule, Behaviour)
    value = behaviour_value(rule, profile, now)
    if rule.metric in OCCURRENCES:
        return value, occurred(rule.tests, occurrence(rule, profile, now), now)
    return value, passes(rule.tests, value, now)


def flipped(before: list[tuple[str, Any, bool]] | None, after: list[tuple[str, Any, bool]]) -> list[dict[str, Any]]:
    """The leaves of `after` whose result differs from `before` (every leaf when there is no before), as
    `{"path", "value", "result"}` plus `"was"`, the value before (`leaf_results` gives both)."""
    was = {path: (value, result) for path, value, result in before} if before is not None else {}
    changed = []
    for path, value, result in after:
        old = was.get(path)
        if old is None or old[1] != result:
            entry = {"path": path, "value": value, "result": result}
            changed.append(entry if old is None else {**entry, "was": old[0]})
    return changed
