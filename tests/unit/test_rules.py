"""The rule language: every operator, error paths, limits, lint, and properties over random rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.events import UserEvent
from server.domain.membership import SegmentRule
from server.domain.profile import Profile, apply_event
from server.domain.rules import (
    AllOf,
    AnyOf,
    Condition,
    Not,
    RuleValidationError,
    compile_rule,
    evaluate,
    lint_rule,
    next_expiry,
    parse_rule,
    required_retention,
    rule_to_json,
    window_expiry,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def profile(**traits: Any) -> Profile:
    return Profile(user_id="u1", traits=traits, total_spent=1500.0, purchase_count=2, event_count=5,
                   first_seen=NOW - timedelta(days=40), last_seen=NOW - timedelta(hours=1),
                   event_counts={"purchase": 2, "page_view": 3})


P = profile(country="DE", plan="pro", tags=["vip", "beta"], age=34, email="a@example.com",
            address={"city": "Berlin"}, optIn=True, signup="2026-01-15T00:00:00Z")

CASES = [
    # (field, operator, value, expected on P)
    ("totalSpent", "gt", 1000, True), ("totalSpent", "gt", 1500, False), ("totalSpent", "gte", 1500, True),
    ("totalSpent", "lt", 2000, True), ("totalSpent", "lte", 1499.99, False),
    ("purchaseCount", "eq", 2, True), ("eventCount", "between", [5, 10], True), ("age", "between", [35, 40], False),
    ("country", "eq", "DE", True), ("country", "ne", "DE", False), ("country", "ne", "FR", True),
    ("country", "in", ["DE", "AT"], True), ("country", "not_in", ["DE"], False), ("plan", "in", ["free"], False),
    ("email", "contains", "@example", True), ("tags", "contains", "vip", True), ("tags", "contains", "x", False),
    ("email", "starts_with", "a@", True), ("email", "ends_with", ".org", False),
    ("traits.address.city", "eq", "Berlin", True), ("address.city", "eq", "Berlin", True),
    ("eventCounts.page_view", "gte", 3, True), ("optIn", "eq", True, True), ("age", "eq", True, False),
    ("plan", "exists", None, True), ("plan", "not_exists", None, False),
    ("lastSeen", "after", "-P1D", True), ("firstSeen", "before", "-P30D", True), ("firstSeen", "after", "-P30D", False),
    ("signup", "before", "2026-02-01T00:00:00Z", True), ("signup", "after", "2026-02-01T00:00:00+01:00", False),
    # missing fields: false, except the negations
    ("missing", "eq", 1, False), ("missing", "gt", 1, False), ("missing", "ne", 1, True),
    ("missing", "not_in", [1], True), ("missing", "exists", None, False), ("missing", "not_exists", None, True),
    ("missing", "contains", "x", False), ("missing", "before", "-P1D", False),
    # a string is not a number
    ("country", "gt", 1, False),
]


@pytest.mark.parametrize(("field", "operator", "value", "expected"), CASES)
def test_operators(field: str, operator: str, value: Any, expected: bool) -> None:
    raw: dict[str, Any] = {"field": field, "operator": operator}
    if value is not None:
        raw["value"] = value
    rule = parse_rule({"conditions": [raw]})
    assert evaluate(rule, P, NOW) is expected
    assert compile_rule(rule)(P, NOW, frozenset()) is expected


def test_seed_rule_parses_to_an_all() -> None:
    rule = parse_rule({"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]})
    assert rule == AllOf((Condition("totalSpent", "gt", 1000),))
    assert rule_to_json(rule) == {"all": [{"field": "totalSpent", "operator": "gt", "value": 1000}]}


def issues_of(raw: Any) -> list[str]:
    with pytest.raises(RuleValidationError) as info:
        parse_rule(raw)
    return [str(i) for i in info.value.issues]


def test_every_issue_is_reported_with_its_path() -> None:
    assert issues_of({"any": [
        {"field": "a", "operator": "eq", "value": 1},
        {"field": "b", "operator": "gtt", "value": 1},
        {"not": {"field": "c", "operator": "gt", "value": "abc"}},
    ]}) == [
        "rules.any[1].operator: unknown operator 'gtt'",
        "rules.any[2].not.value: operator 'gt' needs a number, got string 'abc'",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"conditions": [{"field": "x", "operator": "between", "value": [1]}]},
         "rules.conditions[0].value: operator 'between' needs [low, high] numbers"),
        ({"conditions": [{"field": "x", "operator": "in", "value": "DE"}]},
         "rules.conditions[0].value: operator 'in' needs a non-empty list of up to 1000 scalars"),
        ({"conditions": [{"field": "x", "operator": "exists", "value": 1}]},
         "rules.conditions[0].value: operator 'exists' takes no value"),
        ({"conditions": [{"field": "x", "operator": "eq"}]}, "rules.conditions[0].value: operator 'eq' needs a value"),
        ({"conditions": [{"field": "", "operator": "eq", "value": 1}]}, "rules.conditions[0].field: expected a field"),
        ({"conditions": [{"field": "x", "operator": "before", "value": "soon"}]},
         "rules.conditions[0].value: operator 'before' needs an ISO-8601 timestamp"),
        ({"all": "x"}, "rules.all: expected a list, got string"),
        ({"field": "x", "all": []}, "rules: expected exactly one of"),
        ({"event": "purchase", "count": {"gte": "3"}}, "rules.count.gte: operator 'gte' needs a number"),
        ({"event": "purchase", "count": {"gte": 3}, "within": "7 days"}, "rules.within: '7 days' is not"),
        ({"event": "purchase", "distinct": {"gte": 3}}, "rules.distinct.field: 'distinct' needs the event property"),
        ([1], "rules: expected an object, got list"),
    ],
)
def test_type_mismatches(raw: Any, message: str) -> None:
    assert any(issue.startswith(message) for issue in issues_of(raw)), issues_of(raw)


def test_depth_and_size_limits() -> None:
    deep: dict[str, Any] = {"field": "a", "operator": "exists"}
    for _ in range(20):
        deep = {"not": deep}
    assert any("nested deeper than 16" in i for i in issues_of(deep))
    wide = {"any": [{"field": "a", "operator": "eq", "value": i} for i in range(600)]}
    assert any("more than 500 nodes" in i for i in issues_of(wide))


@pytest.mark.parametrize(
    ("raw", "warning"),
    [
        ({"all": [{"field": "a", "operator": "gt", "value": 10}, {"field": "a", "operator": "lt", "value": 5}]},
         "contradictory: no value of 'a'"),
        ({"all": [{"field": "a", "operator": "eq", "value": 1}, {"field": "a", "operator": "eq", "value": 2}]},
         "contradictory: 'a' cannot equal"),
        ({"field": "a", "operator": "between", "value": [5, 1]}, "never matches: low is above high"),
        ({"any": []}, "an empty 'any' never matches"),
    ],
)
def test_lint_warns_about_rules_that_cannot_match(raw: dict[str, Any], warning: str) -> None:
    assert any(warning in str(w) for w in lint_rule(parse_rule(raw)))


def test_lint_is_quiet_for_a_sane_rule() -> None:
    rule = parse_rule({"all": [{"field": "a", "operator": "gt", "value": 1},
                               {"field": "a", "operator": "lt", "value": 5}]})
    assert lint_rule(rule) == []


def purchases(*ages: timedelta, amount: float = 100.0) -> Profile:
    p: Profile | None = None
    for i, age in enumerate(ages):
        event = UserEvent(user_id="u", event_type="purchase", event_id=str(i), timestamp=NOW - age,
                          properties={"amount": amount})
        p = apply_event(p, event, retention=timedelta(days=30))
    assert p is not None
    return p


def test_windowed_count_and_sum_and_expiry() -> None:
    rule = parse_rule({"event": "purchase", "count": {"gte": 3}, "within": "P7D"})
    assert required_retention(rule) == timedelta(days=7)
    p = purchases(timedelta(days=6), timedelta(days=2), timedelta(hours=1))
    assert evaluate(rule, p, NOW) and compile_rule(rule)(p, NOW, frozenset())
    expiry = next_expiry(rule, p, NOW)
    assert expiry == NOW + timedelta(days=1)  # the oldest purchase leaves the window then
    assert not evaluate(rule, p, expiry + timedelta(seconds=1))
    spend = parse_rule({"event": "purchase", "sum": {"field": "amount", "gte": 250}, "within": "P3D"})
    assert evaluate(spend, p, NOW) is False  # only two purchases (200) in the last 3 days
    assert evaluate(parse_rule({"event": "purchase", "sum": {"gte": 300}}), p, NOW)  # all time: totalSpent
    assert next_expiry(parse_rule({"field": "a", "operator": "exists"}), p, NOW) is None


def test_a_compiled_segment_knows_its_windows_and_the_earliest_expiry_across_them() -> None:
    rule = parse_rule({"any": [{"event": "purchase", "count": {"gte": 3}, "within": "P7D"},
                               {"not": {"event": "purchase", "sum": {"field": "amount", "gte": 50}, "within": "P3D"}},
                               {"event": "purchase", "count": {"gte": 9}, "within": "P7D"}]})
    segment = SegmentRule.build("s", 1, rule)
    assert segment.windows == {("purchase", timedelta(days=7)), ("purchase", timedelta(days=3))}
    assert segment.retention == timedelta(days=7)
    p = purchases(timedelta(days=6), timedelta(days=2, hours=12))
    # the 3-day window loses the 2.5-day-old purchase in half a day, before the 7-day one loses its oldest
    assert window_expiry(segment.windows, p, NOW) == NOW + timedelta(hours=12)
    assert window_expiry(frozenset(), p, NOW) is None
    assert SegmentRule.build("t", 1, parse_rule({"field": "a", "operator": "exists"})).retention == timedelta(0)


# -- properties over random rules and profiles -------------------------------------------

FIELDS = ("totalSpent", "purchaseCount", "country", "plan", "age", "tags", "missing", "traits.address.city")
scalars = st.one_of(st.integers(-5, 2000), st.sampled_from(["DE", "FR", "pro", "free", "Berlin", "vip"]),
                    st.booleans())
numbers = st.integers(-5, 2000)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    operator = draw(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "contains",
                                     "starts_with", "exists", "not_exists"]))
    raw: dict[str, Any] = {"field": field, "operator": operator}
    if operator in ("gt", "gte", "lt", "lte"):
        raw["value"] = draw(numbers)
    elif operator in ("eq", "ne"):
        raw["value"] = draw(scalars)
    elif operator == "between":
        raw["value"] = sorted([draw(numbers), draw(numbers)])
    elif operator in ("in", "not_in"):
        raw["value"] = draw(st.lists(scalars, min_size=1, max_size=4))
    elif operator in ("contains", "starts_with"):
        raw["value"] = draw(st.sampled_from(["D", "vip", "pr", "x"]))
    return raw


rules_json = st.recursive(
    conditions() | st.builds(lambda n: {"event": "purchase", "count": {"gte": n}, "within": "P7D"}, st.integers(0, 4)),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, max_size=3).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c}),
    ),
    max_leaves=8,
)
profiles = st.builds(
    lambda country, plan, age, tags, spent, n: Profile(
        user_id="p", traits={"country": country, "plan": plan, "age": age, "tags": tags, "address": {"city": "Berlin"}},
        total_spent=float(spent), purchase_count=n, event_count=n,
        history={"purchase": [(NOW.timestamp() - 3600 * i, {"amount": 10.0}) for i in range(n)][::-1]},
    ),
    st.sampled_from(["DE", "FR"]), st.sampled_from(["pro", "free"]), st.integers(0, 99),
    st.lists(st.sampled_from(["vip", "beta"]), max_size=2), st.integers(0, 3000), st.integers(0, 5),
)


@settings(max_examples=200, deadline=None)
@given(rules_json, profiles)
def test_compiled_agrees_with_interpreted(raw: dict[str, Any], p: Profile) -> None:
    rule = parse_rule(raw)
    assert compile_rule(rule)(p, NOW, frozenset()) == evaluate(rule, p, NOW)


@settings(max_examples=200, deadline=None)
@given(rules_json, rules_json, profiles)
def test_double_negation_and_de_morgan(a_raw: dict[str, Any], b_raw: dict[str, Any], p: Profile) -> None:
    a, b = parse_rule(a_raw), parse_rule(b_raw)
    assert evaluate(Not(Not(a)), p, NOW) == evaluate(a, p, NOW)
    assert evaluate(Not(AllOf((a, b))), p, NOW) == evaluate(AnyOf((Not(a), Not(b))), p, NOW)
    assert evaluate(Not(AnyOf((a, b))), p, NOW) == evaluate(AllOf((Not(a), Not(b))), p, NOW)


@settings(max_examples=200, deadline=None)
@given(rules_json)
def test_json_roundtrip(raw: dict[str, Any]) -> None:
    rule = parse_rule(raw)
    assert parse_rule(rule_to_json(rule)) == rule


def test_rule_benchmark_reports_its_figures() -> None:
    from server.domain.bench import measure_rule_evaluations

    figures = measure_rule_evaluations(seconds=0.05, segments=4)
    assert figures["segments"] == 4
    assert figures["condition_evaluations_per_s"] >= figures["rule_evaluations_per_s"] > 0
    assert figures["conditions_per_rule"] >= 1
