"""Rule tree → a tree of closures, with field getters and operator tests chosen once."""

from __future__ import annotations

import operator as op
from bisect import bisect_left
from collections.abc import Callable
from datetime import datetime
from typing import Any

from server.domain.profile import AGGREGATES, MISSING, Profile
from server.domain.rules.evaluate import _COMPARE, NUMBER_TYPES, behaviour_value, test_value
from server.domain.rules.model import AllOf, AnyOf, Behaviour, Condition, Not, Rule

Predicate = Callable[[Profile, datetime], bool]
Getter = Callable[[Profile], Any]
_TIME = op.itemgetter(0)

_ATTRIBUTES = {"totalSpent": "total_spent", "purchaseCount": "purchase_count", "eventCount": "event_count"}


def _getter(path: tuple[str, ...]) -> Getter:
    if len(path) == 1 and path[0] in _ATTRIBUTES:
        return op.attrgetter(_ATTRIBUTES[path[0]])
    simple_trait = len(path) == 1 and path[0] not in AGGREGATES
    if simple_trait or (len(path) == 2 and path[0] == "traits"):
        name = path[-1]
        return lambda p: p.traits.get(name, MISSING)
    return lambda p: p.lookup(path)


def _condition(rule: Condition) -> Predicate:
    get, expected, operator = _getter(rule.path), rule.value, rule.operator
    if operator in ("gt", "gte", "lt", "lte"):
        compare = _COMPARE[operator]
        return lambda p, now: (v := get(p)).__class__ in NUMBER_TYPES and compare(v, expected)
    if operator == "eq" and expected.__class__ is str:
        return lambda p, now: get(p) == expected
    if operator == "in" and all(e.__class__ is str for e in expected):
        members = frozenset(expected)
        return lambda p, now: (v := get(p)).__class__ is str and v in members
    return lambda p, now: test_value(operator, get(p), expected, now)


def compile_rule(rule: Rule) -> Predicate:
    """A fast predicate equivalent to `evaluate(rule, ·, ·)`."""
    if isinstance(rule, Condition):
        return _condition(rule)
    if isinstance(rule, AllOf | AnyOf):
        children = tuple(compile_rule(c) for c in rule.children)
        if len(children) == 1:
            return children[0]
        if len(children) == 2:  # the common case, without a generator's overhead
            first, second = children
            if isinstance(rule, AllOf):
                return lambda p, now: first(p, now) and second(p, now)
            return lambda p, now: first(p, now) or second(p, now)
        if isinstance(rule, AllOf):
            return lambda p, now: all(c(p, now) for c in children)
        return lambda p, now: any(c(p, now) for c in children)
    if isinstance(rule, Not):
        inner = compile_rule(rule.child)
        return lambda p, now: not inner(p, now)
    return _behaviour(rule)


def _behaviour(rule: Behaviour) -> Predicate:
    compare, value, event = _COMPARE[rule.operator], rule.value, rule.event
    if rule.metric == "count" and rule.within is not None:
        window = rule.within.total_seconds()

        def windowed_count(p: Profile, now: datetime) -> bool:
            entries = p.history.get(event)
            if not entries:
                return bool(compare(0, value))
            # history is sorted by time: bisect for the first entry inside the window
            start = bisect_left(entries, now.timestamp() - window, key=_TIME)
            return bool(compare(len(entries) - start, value))

        return windowed_count
    return lambda p, now: compare(behaviour_value(rule, p, now), value)
