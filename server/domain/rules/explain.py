"""Why a rule holds for a user: the tree with every node's result and every leaf's observed value.

`explain` is the reference interpreter again, without short-circuiting, so every node gets a result;
`flipped` compares two explanations (before and after an event) and names the leaves that changed.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from datetime import UTC, datetime
from typing import Any

from server.domain.profile import MISSING, Profile
from server.domain.rules.evaluate import behaviour_value, occurred, occurrence, passes, test_value
from server.domain.rules.model import OCCURRENCES, AllOf, AnyOf, Condition, Not, Rule, SegmentRef
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
    """The canonical JSON of `rule` with `"result"` on every node and `"value"` on every leaf (and each node's
    `"path"`, as validation errors name it)."""
    now = now or datetime.now(UTC)
    if isinstance(rule, AllOf | AnyOf):
        key = "all" if isinstance(rule, AllOf) else "any"
        children = [explain(c, profile, now, member_of, f"{path}.{key}[{i}]") for i, c in enumerate(rule.children)]
        results = [c["result"] for c in children]
        return {key: children, "path": path, "result": all(results) if key == "all" else any(results)}
    if isinstance(rule, Not):
        child = explain(rule.child, profile, now, member_of, f"{path}.not")
        return {"not": child, "path": path, "result": not child["result"]}
    if isinstance(rule, Condition):
        value = profile.lookup(rule.path)
        result = test_value(rule.operator, value, rule.value, now)
    elif isinstance(rule, SegmentRef):
        value = result = rule.segment_id in member_of
    else:
        value = behaviour_value(rule, profile, now)
        result = occurred(rule.tests, occurrence(rule, profile, now), now) if rule.metric in OCCURRENCES \
            else passes(rule.tests, value, now)
    body = {**rule_to_json(rule), "path": path, "value": observed(value), "result": result}
    return {**body, "missing": True} if value is MISSING else body


def leaves(explained: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The leaves of an explanation, in document order."""
    for key in ("all", "any"):
        if key in explained:
            for child in explained[key]:
                yield from leaves(child)
            return
    if "not" in explained:
        yield from leaves(explained["not"])
        return
    yield explained


def flipped(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """The leaves of `after` whose result differs from `before` (every leaf when there is no before), as
    `{"path", "value", "result"}` plus `"was"`, the value before."""
    was = {leaf["path"]: leaf for leaf in leaves(before)} if before is not None else {}
    changed = []
    for leaf in leaves(after):
        old = was.get(leaf["path"])
        if old is None or old["result"] != leaf["result"]:
            entry = {"path": leaf["path"], "value": leaf["value"], "result": leaf["result"]}
            changed.append(entry if old is None else {**entry, "was": old["value"]})
    return changed
