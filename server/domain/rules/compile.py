"""Rule tree → a tree of closures, with field getters, operator tests and history scans chosen once."""

from __future__ import annotations

import operator as op
from bisect import bisect_left
from collections.abc import Callable, Container, Mapping, Sequence
from datetime import datetime
from typing import Any

from server.domain.profile import AGGREGATES as PROFILE_AGGREGATES
from server.domain.profile import MISSING, HistoryEntry, Profile
from server.domain.rules.evaluate import (
    _COMPARE,
    NUMBER_TYPES,
    measure,
    occurred,
    passes,
    span_bounds,
    test_value,
)
from server.domain.rules.explain import leaf_paths, leaf_value, observed
from server.domain.rules.model import OCCURRENCES, AllOf, AnyOf, Behaviour, Condition, Not, Rule, SegmentRef

Predicate = Callable[[Profile, datetime, Container[str]], bool]
Probe = Callable[[Profile, datetime, Container[str]], tuple[Any, bool]]  # a leaf's (observed value, result)
Probes = tuple[tuple[str, Probe], ...]
EventFilter = Callable[[Mapping[str, Any], datetime], bool]
_TIME = op.itemgetter(0)
_ATTRIBUTES = {"totalSpent": "total_spent", "purchaseCount": "purchase_count", "eventCount": "event_count"}


def _getter(path: tuple[str, ...]) -> Callable[[Profile], Any]:
    if len(path) == 1 and path[0] in _ATTRIBUTES:
        return op.attrgetter(_ATTRIBUTES[path[0]])
    simple_trait = len(path) == 1 and path[0] not in PROFILE_AGGREGATES
    if simple_trait or (len(path) == 2 and path[0] == "traits"):
        name = path[-1]
        return lambda p: p.traits.get(name, MISSING)
    return lambda p: p.lookup(path)


def _test(operator: str, expected: Any) -> Callable[[Any, datetime], bool]:
    """`operator expected` as a test of one value, the common operators without the generic dispatch."""
    if operator in ("gt", "gte", "lt", "lte"):
        compare = _COMPARE[operator]
        return lambda v, now: v.__class__ in NUMBER_TYPES and compare(v, expected)
    if operator == "between":
        low, high = expected
        return lambda v, now: v.__class__ in NUMBER_TYPES and low <= v <= high
    if operator == "eq" and expected.__class__ is str:
        return lambda v, now: v == expected
    if operator == "in" and all(e.__class__ is str for e in expected):
        members = frozenset(expected)
        return lambda v, now: v.__class__ is str and v in members
    return lambda v, now: test_value(operator, v, expected, now)


def _condition(rule: Condition) -> Predicate:
    get, operator, expected = _getter(rule.path), rule.operator, rule.value
    # the common tests inline (one call per leaf, not two); the others through `_test`
    if operator in ("gt", "gte", "lt", "lte"):
        compare = _COMPARE[operator]
        return lambda p, now, m: (v := get(p)).__class__ in NUMBER_TYPES and compare(v, expected)
    if operator == "between":
        low, high = expected
        return lambda p, now, m: (v := get(p)).__class__ in NUMBER_TYPES and low <= v <= high
    if operator == "eq" and expected.__class__ is str:
        return lambda p, now, m: get(p) == expected
    test = _test(operator, expected)
    return lambda p, now, m: test(get(p), now)


def compile_rule(rule: Rule) -> Predicate:
    """A fast predicate equivalent to `evaluate(rule, ·, ·, ·)`."""
    if isinstance(rule, Condition):
        return _condition(rule)
    if isinstance(rule, AllOf | AnyOf):
        children = tuple(compile_rule(c) for c in rule.children)
        if len(children) == 1:
            return children[0]
        if len(children) == 2:  # the common case, without a generator's overhead
            first, second = children
            if isinstance(rule, AllOf):
                return lambda p, now, m: first(p, now, m) and second(p, now, m)
            return lambda p, now, m: first(p, now, m) or second(p, now, m)
        if isinstance(rule, AllOf):
            return lambda p, now, m: all(c(p, now, m) for c in children)
        return lambda p, now, m: any(c(p, now, m) for c in children)
    if isinstance(rule, Not):
        inner = compile_rule(rule.child)
        return lambda p, now, m: not inner(p, now, m)
    if isinstance(rule, SegmentRef):
        segment_id = rule.segment_id
        return lambda p, now, member_of: segment_id in member_of
    return _behaviour(rule)


def compile_event_filter(rule: Rule) -> EventFilter:
    """A `where` tree as a test of one event's properties (what `matches_event` decides)."""
    if isinstance(rule, Condition):
        name, operator, expected = rule.field, rule.operator, rule.value
        if operator == "eq" and expected.__class__ is str:
            return lambda props, now: props.get(name) == expected
        test = _test(operator, expected)
        return lambda props, now: test(props.get(name, MISSING), now)
    if isinstance(rule, AllOf | AnyOf):
        children = tuple(compile_event_filter(c) for c in rule.children)
        if isinstance(rule, AllOf):
            return lambda props, now: all(c(props, now) for c in children)
        return lambda props, now: any(c(props, now) for c in children)
    if isinstance(rule, Not):
        inner = compile_event_filter(rule.child)
        return lambda props, now: not inner(props, now)
    raise TypeError(f"{type(rule).__name__} cannot filter events")


def _checks(rule: Behaviour) -> Callable[[Any, datetime], bool]:
    if len(rule.tests) == 1:
        return _test(*rule.tests[0])
    tests = rule.tests
    return lambda value, now: passes(tests, value, now)


def _occurrence(rule: Behaviour) -> Predicate:
    """first/last: the moment of the first or last matching event against before/after bounds (`occurred`)."""
    index, event, tests = 0 if rule.metric == "first" else 1, rule.event, rule.tests
    fixed = all(isinstance(value, datetime) for _, value in tests)
    if rule.lifetime and fixed and len(tests) == 1:  # e.g. last purchase before 2026-01-01: no clock involved
        bound, before = tests[0][1].timestamp(), tests[0][0] == "before"

        def fixed_bound(p: Profile, now: datetime, m: Container[str]) -> bool:
            times = p.event_times.get(event)
            return times is not None and (times[index] < bound if before else times[index] > bound)

        return fixed_bound
    if rule.lifetime:
        def lifetime(p: Profile, now: datetime, m: Container[str]) -> bool:
            times = p.event_times.get(event)
            return times is not None and occurred(tests, times[index], now)

        return lifetime
    select, position = _selection(rule), 0 if rule.metric == "first" else -1

    def filtered(p: Profile, now: datetime, m: Container[str]) -> bool:
        entries = select(p.history.get(event) or (), now)
        return bool(entries) and occurred(tests, entries[position][0], now)

    return filtered


def _behaviour(rule: Behaviour) -> Predicate:
    if rule.metric in OCCURRENCES:
        return _occurrence(rule)
    check, event = _checks(rule), rule.event
    if rule.lifetime and rule.metric == "count":
        return lambda p, now, m: check(p.event_counts.get(event, 0), now)
    if rule.lifetime:  # the sum of purchases' amounts
        return lambda p, now, m: check(p.total_spent, now)
    select = _selection(rule)
    if rule.metric == "count" and rule.where is None:  # the history is in time order: two bisections count it
        start, end = rule.span.start.total_seconds() if rule.span else None, _end(rule)

        def windowed_count(p: Profile, now: datetime, m: Container[str]) -> bool:
            entries = p.history.get(event)
            if not entries:
                return check(0, now)
            ts = now.timestamp()
            first = 0 if start is None else bisect_left(entries, ts - start, key=_TIME)
            last = len(entries) if end is None else bisect_left(entries, ts - end, key=_TIME)
            return check(max(last - first, 0), now)

        return windowed_count
    metric, field = rule.metric, rule.field
    if metric == "count":
        return lambda p, now, m: check(len(select(p.history.get(event) or (), now)), now)
    return lambda p, now, m: check(measure(metric, field, select(p.history.get(event) or (), now)), now)


def _end(rule: Behaviour) -> float | None:
    return None if rule.span is None or rule.span.end is None else rule.span.end.total_seconds()


def _selection(rule: Behaviour) -> Callable[[Sequence[HistoryEntry], datetime], Sequence[HistoryEntry]]:
    """The entries of one event type inside the rule's span that pass its filter (`matching_events`)."""
    span = rule.span
    narrow = _entry_filter(rule.where) if rule.where is not None else None

    def select(entries: Sequence[HistoryEntry], now: datetime) -> Sequence[HistoryEntry]:
        if span is not None and entries:
            low, high = span_bounds(span, now)
            entries = entries[bisect_left(entries, low, key=_TIME):
                              None if high is None else bisect_left(entries, high, key=_TIME)]
        if narrow is None:
            return entries  # a slice of the history, or the history itself: callers only read it
        return narrow(entries, now)

    return select


def _entry_filter(rule: Rule) -> Callable[[Sequence[HistoryEntry], datetime], list[HistoryEntry]]:
    """The entries whose properties pass a `where` tree: a single condition is tested inline, in the list's own
    loop (the common filter, e.g. category = shoes); a tree through `compile_event_filter`."""
    if isinstance(rule, Condition):
        name, operator, expected = rule.field, rule.operator, rule.value
        if operator == "eq" and expected.__class__ is str:
            return lambda entries, now: [e for e in entries if e[1].get(name) == expected]
        test = _test(operator, expected)
        return lambda entries, now: [e for e in entries if test(e[1].get(name, MISSING), now)]
    keep = compile_event_filter(rule)
    return lambda entries, now: [e for e in entries if keep(e[1], now)]


def compile_leaves(rule: Rule) -> Probes:
    """Every leaf with its path and a probe of its (value, result), as `explain` shows them: what the rule job
    compares before and after an input to say which leaves a membership change flipped."""
    return tuple((path, _probe(leaf)) for path, leaf in leaf_paths(rule))


def _probe(leaf: Rule) -> Probe:
    if isinstance(leaf, Condition):
        get, test = _getter(leaf.path), _test(leaf.operator, leaf.value)

        def condition(p: Profile, now: datetime, m: Container[str]) -> tuple[Any, bool]:
            value = get(p)
            return value, test(value, now)

        return condition
    return lambda p, now, m: leaf_value(leaf, p, now, m)


def leaf_results(probes: Probes, profile: Profile, now: datetime, member_of: Container[str] = frozenset()
                 ) -> list[tuple[str, Any, bool]]:
    """(path, observed value, result) of every leaf: what `explain` puts on its leaves, without the tree."""
    results = []
    for path, probe in probes:
        value, result = probe(profile, now, member_of)
        results.append((path, value if value.__class__ in _PLAIN else observed(value), result))
    return results


_PLAIN = frozenset((int, float, str, bool))  # values that are their own JSON
