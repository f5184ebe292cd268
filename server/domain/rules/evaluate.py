"""The meaning of every operator, in one place, and the reference interpreter built on it.

Missing fields: every test on a missing field is false, except `ne`, `not_in` and `not_exists`,
which are the negations of `eq`, `in` and `exists` and so are true.
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable, Container, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from server.domain.profile import MISSING, HistoryEntry, Profile
from server.domain.rules.model import (
    OCCURRENCES,
    AllOf,
    AnyOf,
    Behaviour,
    Condition,
    Not,
    RelativeTime,
    Rule,
    SegmentRef,
    Span,
)
from server.domain.timeutil import parse_timestamp

NUMBER_TYPES = (int, float)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": op.gt, "gte": op.ge, "lt": op.lt, "lte": op.le, "eq": op.eq, "ne": op.ne,
}


def is_number(value: Any) -> bool:
    return value.__class__ in NUMBER_TYPES


def as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return parse_timestamp(value)
        except ValueError:
            return None
    return None


def resolve_time(value: datetime | RelativeTime, now: datetime) -> datetime:
    return now + value.offset if isinstance(value, RelativeTime) else value


def test_value(operator: str, actual: Any, expected: Any, now: datetime) -> bool:
    """Whether `actual` (a profile value, or MISSING) satisfies `operator expected`."""
    if operator == "exists":
        return actual is not MISSING and actual is not None
    if operator == "not_exists":
        return actual is MISSING or actual is None
    if operator == "eq":
        return actual is not MISSING and _same(actual, expected)
    if operator == "ne":
        return actual is MISSING or not _same(actual, expected)
    if operator == "in":
        return actual is not MISSING and any(_same(actual, e) for e in expected)
    if operator == "not_in":
        return actual is MISSING or not any(_same(actual, e) for e in expected)
    if operator in ("gt", "gte", "lt", "lte"):
        return is_number(actual) and _COMPARE[operator](actual, expected)
    if operator == "between":
        return is_number(actual) and expected[0] <= actual <= expected[1]
    if operator == "contains":
        if isinstance(actual, str):
            return expected in actual
        return isinstance(actual, list) and expected in actual
    if operator == "starts_with":
        return isinstance(actual, str) and actual.startswith(expected)
    if operator == "ends_with":
        return isinstance(actual, str) and actual.endswith(expected)
    moment = as_time(actual)
    if moment is None:
        return False
    bound = resolve_time(expected, now)
    return moment < bound if operator == "before" else moment > bound


def _same(actual: Any, expected: Any) -> bool:
    # 1 == True in Python; a rule comparing to true must not match the number 1
    return bool(actual == expected and (actual.__class__ is bool) == (expected.__class__ is bool))


def span_bounds(span: Span, now: datetime) -> tuple[float, float | None]:
    """The (oldest included, newest excluded or None) epoch seconds of a span at `now`."""
    now_ts = now.timestamp()
    return now_ts - span.start.total_seconds(), None if span.end is None else now_ts - span.end.total_seconds()


def matching_events(rule: Behaviour, profile: Profile, now: datetime) -> list[HistoryEntry]:
    """The history entries of the rule's event type inside its span that match its filter, oldest first."""
    entries = profile.history.get(rule.event, [])
    if rule.span is not None:
        low, high = span_bounds(rule.span, now)
        entries = [e for e in entries if e[0] >= low and (high is None or e[0] < high)]
    if rule.where is not None:
        entries = [e for e in entries if matches_event(rule.where, e[1], now)]
    return entries


def matches_event(rule: Rule, properties: Mapping[str, Any], now: datetime) -> bool:
    """Whether one event's properties satisfy a `where` tree (conditions, all, any, not)."""
    if isinstance(rule, Condition):
        return test_value(rule.operator, properties.get(rule.field, MISSING), rule.value, now)
    if isinstance(rule, AllOf):
        return all(matches_event(c, properties, now) for c in rule.children)
    if isinstance(rule, AnyOf):
        return any(matches_event(c, properties, now) for c in rule.children)
    if isinstance(rule, Not):
        return not matches_event(rule.child, properties, now)
    raise TypeError(f"{type(rule).__name__} cannot filter events")


def measure(metric: str, field: str | None, entries: Sequence[HistoryEntry]) -> Any:
    """What `metric` makes of the matching entries: a number, a moment, or MISSING (no value to average)."""
    if metric == "count":
        return len(entries)
    if metric in ("first", "last"):
        return datetime.fromtimestamp(entries[0 if metric == "first" else -1][0], UTC) if entries else MISSING
    if field is None:
        return MISSING
    if metric == "distinct":
        return len({(v.__class__ is bool, v) for e in entries if (v := e[1].get(field)) is not None})
    numbers = [v for e in entries if (v := e[1].get(field)).__class__ in NUMBER_TYPES]
    if metric == "sum":  # sum, not math.fsum: fsum raises on an intermediate overflow, sum gives inf
        return sum(numbers)
    if not numbers:
        return MISSING
    if metric == "avg":
        return sum(numbers) / len(numbers)
    return min(numbers) if metric == "min" else max(numbers)


def lifetime_value(rule: Behaviour, profile: Profile) -> Any:
    """The value of a behavioural condition that the profile's lifetime aggregates answer (`rule.lifetime`)."""
    if rule.metric == "count":
        return profile.event_counts.get(rule.event, 0)
    if rule.metric == "sum":
        return profile.total_spent
    times = profile.event_times.get(rule.event)
    if times is None:
        return MISSING
    return datetime.fromtimestamp(times[0] if rule.metric == "first" else times[1], UTC)


def behaviour_value(rule: Behaviour, profile: Profile, now: datetime) -> Any:
    """The count, aggregate or moment the behavioural condition tests."""
    if rule.lifetime:
        return lifetime_value(rule, profile)
    return measure(rule.metric, rule.field, matching_events(rule, profile, now))


def passes(tests: Sequence[tuple[str, Any]], value: Any, now: datetime) -> bool:
    return all(test_value(operator, value, expected, now) for operator, expected in tests)


def occurrence(rule: Behaviour, profile: Profile, now: datetime) -> float | None:
    """The epoch seconds of the first or last matching event, or None when there is none."""
    if rule.lifetime:
        times = profile.event_times.get(rule.event)
        return None if times is None else times[0 if rule.metric == "first" else 1]
    entries = matching_events(rule, profile, now)
    return entries[0 if rule.metric == "first" else -1][0] if entries else None


def occurred(tests: Sequence[tuple[str, Any]], moment: float | None, now: datetime) -> bool:
    """Whether a first/last occurrence passes its before/after tests (compared in epoch seconds)."""
    if moment is None:
        return False
    for operator, expected in tests:
        bound = resolve_time(expected, now).timestamp()
        if not (moment < bound if operator == "before" else moment > bound):
            return False
    return True


def evaluate(rule: Rule, profile: Profile, now: datetime | None = None,
             member_of: Container[str] = frozenset()) -> bool:
    """The reference interpreter: slow and obviously right; `compile_rule` must agree with it.

    `member_of` holds the segments the user is in as the rule job sees them now (for segment references).
    """
    now = now or datetime.now(UTC)
    if isinstance(rule, Condition):
        return test_value(rule.operator, profile.lookup(rule.path), rule.value, now)
    if isinstance(rule, AllOf):
        return all(evaluate(c, profile, now, member_of) for c in rule.children)
    if isinstance(rule, AnyOf):
        return any(evaluate(c, profile, now, member_of) for c in rule.children)
    if isinstance(rule, Not):
        return not evaluate(rule.child, profile, now, member_of)
    if isinstance(rule, SegmentRef):
        return rule.segment_id in member_of
    if rule.metric in OCCURRENCES:
        return occurred(rule.tests, occurrence(rule, profile, now), now)
    return passes(rule.tests, behaviour_value(rule, profile, now), now)
