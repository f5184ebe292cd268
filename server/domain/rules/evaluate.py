"""The meaning of every operator, in one place, and the reference interpreter built on it.

Missing fields: every test on a missing field is false, except `ne`, `not_in` and `not_exists`,
which are the negations of `eq`, `in` and `exists` and so are true.
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from server.domain.profile import MISSING, Profile
from server.domain.rules.model import AllOf, AnyOf, Behaviour, Condition, Not, RelativeTime, Rule
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


def window_entries(profile: Profile, event: str, within: timedelta | None, now: datetime) -> list[tuple[float, float]]:
    entries = profile.history.get(event, [])
    if within is None:
        return entries
    horizon = now.timestamp() - within.total_seconds()
    return [e for e in entries if e[0] >= horizon]


def behaviour_value(rule: Behaviour, profile: Profile, now: datetime) -> float:
    """The count or amount sum the behavioural condition compares."""
    if rule.within is None:
        if rule.metric == "count":
            return profile.event_counts.get(rule.event, 0)
        if rule.event == "purchase":
            return profile.total_spent
    entries = window_entries(profile, rule.event, rule.within, now)
    return len(entries) if rule.metric == "count" else sum(amount for _, amount in entries)


def evaluate(rule: Rule, profile: Profile, now: datetime | None = None) -> bool:
    """The reference interpreter: slow and obviously right; `compile_rule` must agree with it."""
    now = now or datetime.now(UTC)
    if isinstance(rule, Condition):
        return test_value(rule.operator, profile.lookup(rule.path), rule.value, now)
    if isinstance(rule, AllOf):
        return all(evaluate(c, profile, now) for c in rule.children)
    if isinstance(rule, AnyOf):
        return any(evaluate(c, profile, now) for c in rule.children)
    if isinstance(rule, Not):
        return not evaluate(rule.child, profile, now)
    return _COMPARE[rule.operator](behaviour_value(rule, profile, now), rule.value)
