"""What can be known about a rule without a profile: windows it needs, when it may change, and
warnings for rules that can never match or contradict themselves."""

from __future__ import annotations

import operator as op
from bisect import bisect_left
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from server.domain.profile import Profile
from server.domain.rules.evaluate import as_time
from server.domain.rules.model import AllOf, AnyOf, Behaviour, Condition, Not, RelativeTime, Rule, RuleIssue, SegmentRef

_TIME = op.itemgetter(0)


def walk(rule: Rule) -> Iterator[Rule]:
    """Every node of the tree, parents first (not the nodes inside a behavioural condition's `where`)."""
    yield rule
    if isinstance(rule, AllOf | AnyOf):
        for child in rule.children:
            yield from walk(child)
    elif isinstance(rule, Not):
        yield from walk(rule.child)


# A moment a rule's value can change with no new event: `delta` after the time of an event of this type
# (an event type), or after the time a profile field holds (a field path).
Window = tuple[str | tuple[str, ...], timedelta]


def windows(rule: Rule) -> frozenset[Window]:
    """Every edge in time the rule looks at (empty when time alone never changes its value)."""
    edges: set[Window] = set()
    for node in walk(rule):
        if isinstance(node, Behaviour):
            if node.span is not None:
                edges.add((node.event, node.span.start))
                if node.span.end is not None:
                    edges.add((node.event, node.span.end))
            edges.update((node.event, -value.offset) for _, value in node.tests if isinstance(value, RelativeTime))
        elif isinstance(node, Condition) and isinstance(node.value, RelativeTime):
            edges.add((node.path, -node.value.offset))  # e.g. lastSeen before -P30D: 30 days after lastSeen
    return frozenset(edges)


def required_retention(rule: Rule) -> timedelta:
    """How far back the rule's windows reach (zero when it has none): the history it needs at least."""
    return max((n.span.start for n in walk(rule) if isinstance(n, Behaviour) and n.span is not None),
               default=timedelta(0))


def references(rule: Rule) -> frozenset[str]:
    """The segments the rule refers to."""
    return frozenset(n.segment_id for n in walk(rule) if isinstance(n, SegmentRef))


def reference_paths(rule: Rule, path: str = "rules") -> Iterator[tuple[str, str]]:
    """(path, segment id) of every segment reference, with paths as in the rule's canonical JSON."""
    if isinstance(rule, SegmentRef):
        yield f"{path}.segment", rule.segment_id
    elif isinstance(rule, AllOf | AnyOf):
        key = "all" if isinstance(rule, AllOf) else "any"
        for i, child in enumerate(rule.children):
            yield from reference_paths(child, f"{path}.{key}[{i}]")
    elif isinstance(rule, Not):
        yield from reference_paths(rule.child, f"{path}.not")


def window_expiry(looked_through: frozenset[Window], profile: Profile, now: datetime) -> datetime | None:
    """The next moment (at or after `now`) one of these edges passes for the profile, or None."""
    now_ts, moments = now.timestamp(), []
    for key, delta in looked_through:
        shift = delta.total_seconds()
        if isinstance(key, tuple):
            moment = as_time(profile.lookup(key))
            if moment is not None and moment.timestamp() + shift >= now_ts:
                moments.append(moment.timestamp() + shift)
            continue
        entries = profile.history.get(key)
        if entries:  # in time order: the first entry whose edge is still ahead
            i = bisect_left(entries, now_ts - shift, key=_TIME)
            if i < len(entries):
                moments.append(entries[i][0] + shift)
        times = profile.event_times.get(key)
        if times is not None:
            moments += [t + shift for t in times if t + shift >= now_ts]
    return datetime.fromtimestamp(min(moments), UTC) if moments else None


def next_expiry(rule: Rule, profile: Profile, now: datetime) -> datetime | None:
    """The next moment a windowed condition's value can change with no new event, or None."""
    return window_expiry(windows(rule), profile, now)


def _bounds(conditions: list[Condition]) -> tuple[float | None, bool, float | None, bool]:
    """The tightest (low, low_inclusive, high, high_inclusive) the numeric conditions allow."""
    low: float | None = None
    high: float | None = None
    low_inc = high_inc = True
    for c in conditions:
        if c.operator in ("gt", "gte") and (low is None or c.value > low or (c.value == low and c.operator == "gt")):
            low, low_inc = c.value, c.operator == "gte"
        elif c.operator in ("lt", "lte") and (
            high is None or c.value < high or (c.value == high and c.operator == "lt")
        ):
            high, high_inc = c.value, c.operator == "lte"
        elif c.operator == "between":
            if low is None or c.value[0] > low:
                low, low_inc = c.value[0], True
            if high is None or c.value[1] < high:
                high, high_inc = c.value[1], True
    return low, low_inc, high, high_inc


def _lint_all(rule: AllOf, path: str, issues: list[RuleIssue]) -> None:
    by_field: dict[str, list[Condition]] = {}
    for child in rule.children:
        if isinstance(child, Condition):
            by_field.setdefault(child.field, []).append(child)
    for field, conditions in by_field.items():
        low, low_inc, high, high_inc = _bounds(conditions)
        if low is not None and high is not None and (low > high or (low == high and not (low_inc and high_inc))):
            issues.append(RuleIssue(path, f"contradictory: no value of '{field}' is both ≥{low} and ≤{high}"))
        equals = {repr(c.value) for c in conditions if c.operator == "eq"}
        if len(equals) > 1:
            issues.append(RuleIssue(path, f"contradictory: '{field}' cannot equal {' and '.join(sorted(equals))}"))
        unequal = {repr(c.value) for c in conditions if c.operator == "ne"}
        if equals & unequal:
            issues.append(RuleIssue(path, f"contradictory: '{field}' both equals and differs from {equals & unequal}"))
        if {c.operator for c in conditions} >= {"exists", "not_exists"}:
            issues.append(RuleIssue(path, f"contradictory: '{field}' cannot both exist and not exist"))


def lint_rule(rule: Rule, path: str = "rules") -> list[RuleIssue]:
    """Warnings (not errors): parts that can never match, or that contradict each other."""
    issues: list[RuleIssue] = []
    if isinstance(rule, AnyOf):
        if not rule.children:
            issues.append(RuleIssue(path, "an empty 'any' never matches"))
        for i, child in enumerate(rule.children):
            issues += lint_rule(child, f"{path}.any[{i}]")
    elif isinstance(rule, AllOf):
        if not rule.children:
            issues.append(RuleIssue(path, "an empty 'all' matches every profile"))
        _lint_all(rule, path, issues)
        for i, child in enumerate(rule.children):
            issues += lint_rule(child, f"{path}.all[{i}]")
    elif isinstance(rule, Not):
        issues += lint_rule(rule.child, f"{path}.not")
    elif isinstance(rule, Condition) and rule.operator == "between" and rule.value[0] > rule.value[1]:
        issues.append(RuleIssue(path, f"between {list(rule.value)} never matches: low is above high"))
    elif isinstance(rule, Behaviour) and rule.metric in ("count", "distinct"):
        for operator, value in rule.tests:
            if (operator == "lt" and value <= 0) or (operator == "lte" and value < 0) or (
                    operator == "between" and value[1] < 0):
                issues.append(RuleIssue(path, f"a {rule.metric} below zero never happens"))
    return issues
