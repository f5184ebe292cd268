"""What can be known about a rule without a profile: windows it needs, when it may change, and
warnings for rules that can never match or contradict themselves."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from server.domain.profile import Profile
from server.domain.rules.evaluate import window_entries
from server.domain.rules.model import AllOf, AnyOf, Behaviour, Condition, Not, Rule, RuleIssue


def walk(rule: Rule) -> Iterator[Rule]:
    yield rule
    if isinstance(rule, AllOf | AnyOf):
        for child in rule.children:
            yield from walk(child)
    elif isinstance(rule, Not):
        yield from walk(rule.child)


Window = tuple[str, timedelta]  # a behavioural condition's (event type, window length)


def windows(rule: Rule) -> frozenset[Window]:
    """Every time window the rule's behavioural conditions look through (empty when it has none)."""
    return frozenset((n.event, n.within) for n in walk(rule) if isinstance(n, Behaviour) and n.within is not None)


def required_retention(rule: Rule) -> timedelta:
    """The longest window of any behavioural condition (zero when the rule has none)."""
    return max((within for _, within in windows(rule)), default=timedelta(0))


def window_expiry(looked_through: frozenset[Window], profile: Profile, now: datetime) -> datetime | None:
    """The next moment one of these windows loses an entry of the profile's history, or None."""
    moments = []
    for event, within in looked_through:
        entries = window_entries(profile, event, within, now)
        if entries:
            moments.append(entries[0][0] + within.total_seconds())
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
    elif isinstance(rule, Behaviour) and rule.operator in ("lt", "lte") and rule.value < 0:
        issues.append(RuleIssue(path, "a count or sum below zero never happens"))
    return issues
