"""The rule forms marketers write: event filters, aggregates, bounded windows, first/last, segment references,
and the explanation of a result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.events import UserEvent
from server.domain.membership import RuleSet, SegmentRule, evaluate_memberships
from server.domain.profile import Profile, apply_event
from server.domain.rules import (
    RuleValidationError,
    compile_leaves,
    compile_rule,
    evaluate,
    explain,
    flipped,
    leaf_results,
    lint_rule,
    parse_rule,
    reference_paths,
    references,
    required_retention,
    rule_to_json,
    window_expiry,
    windows,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
VIP, CHURNED, BUYERS = ("00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b",
                        "00000000-0000-4000-8000-00000000000c")


def shopper(*purchases: tuple[timedelta, dict[str, Any]], kind: str = "purchase") -> Profile:
    """A profile from purchases (age, properties), oldest first or not."""
    p: Profile | None = None
    for i, (age, properties) in enumerate(purchases):
        event = UserEvent(user_id="u", event_type=kind, event_id=str(i), timestamp=NOW - age, properties=properties)
        p = apply_event(p, event, retention=timedelta(days=120))
    assert p is not None
    return p


def holds(raw: dict[str, Any], p: Profile, member_of: frozenset[str] = frozenset(), now: datetime = NOW) -> bool:
    """The interpreter's answer, checked against the compiled predicate's."""
    rule = parse_rule(raw)
    interpreted = evaluate(rule, p, now, member_of)
    assert compile_rule(rule)(p, now, member_of) is interpreted
    return interpreted


SHOES = {"field": "category", "operator": "eq", "value": "shoes"}
DAYS = timedelta(days=1)


def test_bought_shoes_twice_in_30_days() -> None:
    p = shopper((40 * DAYS, {"category": "shoes"}), (20 * DAYS, {"category": "shoes"}),
                (10 * DAYS, {"category": "books"}), (5 * DAYS, {"category": "shoes", "amount": 80}))
    twice = {"event": "purchase", "where": SHOES, "count": {"gte": 2}, "within": "P30D"}
    assert holds(twice, p)
    assert not holds({**twice, "within": "P15D"}, p)
    assert holds({"event": "purchase", "where": {"not": SHOES}, "count": {"eq": 1}, "within": "P30D"}, p)
    assert holds({"event": "purchase", "where": {"any": [SHOES, {"field": "amount", "operator": "gt", "value": 50}]},
                  "count": {"gte": 2, "lte": 3}, "within": "P30D"}, p)


def test_aggregates_over_any_property() -> None:
    p = shopper((80 * DAYS, {"amount": 300, "sku": "a"}), (20 * DAYS, {"amount": 50, "sku": "b"}),
                (2 * DAYS, {"amount": 100, "sku": "a"}), (1 * DAYS, {"note": "no amount", "sku": None}))
    assert holds({"event": "purchase", "avg": {"field": "amount", "gte": 150}, "within": "P90D"}, p)  # 450 / 3
    assert not holds({"event": "purchase", "avg": {"field": "amount", "gte": 100}, "within": "P30D"}, p)  # 75
    assert holds({"event": "purchase", "min": {"field": "amount", "eq": 50}}, p)
    assert holds({"event": "purchase", "max": {"field": "amount", "between": [250, 300]}, "within": "P90D"}, p)
    assert holds({"event": "purchase", "sum": {"field": "amount", "eq": 150}, "within": "P30D"}, p)
    assert holds({"event": "purchase", "distinct": {"field": "sku", "eq": 2}}, p)  # null is no value
    # no number to average: every comparison fails, as on a missing field
    assert not holds({"event": "purchase", "avg": {"field": "missing", "gte": 0}}, p)
    assert not holds({"event": "purchase", "avg": {"field": "missing", "lt": 0}}, p)
    assert holds({"event": "purchase", "sum": {"field": "missing", "eq": 0}}, p)


def test_bounded_windows_and_their_edges() -> None:
    p = shopper((60 * DAYS, {}), (31 * DAYS, {}), (29 * DAYS, {}), (3 * DAYS, {}))
    between = {"event": "purchase", "count": {"eq": 2}, "between": ["P90D", "P30D"]}
    assert holds(between, p)
    assert holds({**between, "count": {"eq": 1}, "between": ["P30D", "P7D"]}, p)
    rule = parse_rule(between)
    assert windows(rule) == {("purchase", 90 * DAYS), ("purchase", 30 * DAYS)}
    assert required_retention(rule) == 90 * DAYS
    # the next edge: the 29-day-old purchase enters the 90..30-day span in a day, with no new event
    edge = window_expiry(windows(rule), p, NOW)
    assert edge == NOW + DAYS
    assert not holds(between, p, now=edge + timedelta(seconds=1))  # three purchases are in it then


def test_first_and_last_occurrence() -> None:
    p = shopper((60 * DAYS, {"category": "shoes"}), (40 * DAYS, {"category": "books"}))
    lapsed = {"event": "purchase", "last": {"before": "-P30D", "after": "-P90D"}}  # 30-90 days ago, not since
    assert holds(lapsed, p)
    assert not holds({"event": "purchase", "last": {"after": "-P30D"}}, p)
    assert holds({"event": "purchase", "first": {"before": "2026-10-01T00:00:00Z"}}, p)
    assert holds({"event": "purchase", "where": SHOES, "last": {"before": "-P50D"}}, p)
    assert not holds({"event": "signup", "last": {"before": "-P1D"}}, p)  # never happened
    assert windows(parse_rule(lapsed)) == {("purchase", 30 * DAYS), ("purchase", 90 * DAYS)}
    # the first purchase reaches 90 days in 30 days (an edge of the purchase times, whichever is first or last)
    assert window_expiry(windows(parse_rule(lapsed)), p, NOW) == NOW + 30 * DAYS


def test_first_and_last_outlive_the_history() -> None:
    p = shopper((100 * DAYS, {}))
    p.history.clear()  # pruned: the lookback is over, the first and last times are kept
    assert holds({"event": "purchase", "last": {"before": "-P90D"}}, p)


def test_segment_references() -> None:
    p = shopper((1 * DAYS, {}))
    vip_not_churned = {"all": [{"segment": VIP}, {"not": {"segment": CHURNED}}]}
    assert holds(vip_not_churned, p, frozenset({VIP}))
    assert not holds(vip_not_churned, p, frozenset({VIP, CHURNED}))
    rule = parse_rule(vip_not_churned)
    assert references(rule) == {VIP, CHURNED}
    assert list(reference_paths(rule)) == [("rules.all[0].segment", VIP), ("rules.all[1].not.segment", CHURNED)]


def test_references_are_evaluated_in_dependency_order_within_one_pass() -> None:
    def segment(segment_id: str, raw: dict[str, Any]) -> SegmentRule:
        return SegmentRule.build(segment_id, 1, parse_rule(raw))

    # listed referrer first: the order of evaluation must not depend on it
    rules = RuleSet({VIP: segment(VIP, {"all": [{"segment": BUYERS}, {"field": "plan", "operator": "eq",
                                                                      "value": "pro"}]}),
                     BUYERS: segment(BUYERS, {"event": "purchase", "count": {"gte": 1}})})
    assert list(rules) == [BUYERS, VIP]
    p = shopper((DAYS, {"plan": "pro"}))
    diff = evaluate_memberships(p, rules, {}, NOW)
    assert diff.entered == [(BUYERS, 1), (VIP, 1)]
    assert rules.affected([BUYERS]) == {BUYERS, VIP}
    # a STATIC segment the user is in counts as membership
    static_ref = RuleSet({CHURNED: segment(CHURNED, {"segment": VIP})})
    assert evaluate_memberships(p, static_ref, {}, NOW, static=frozenset({VIP})).entered == [(CHURNED, 1)]


def test_a_cycle_that_slipped_through_is_evaluated_not_looped() -> None:
    a = SegmentRule.build(VIP, 1, parse_rule({"segment": CHURNED}))
    b = SegmentRule.build(CHURNED, 1, parse_rule({"not": {"segment": VIP}}))
    rules = RuleSet({VIP: a, CHURNED: b})
    assert sorted(rules) == sorted([VIP, CHURNED])
    evaluate_memberships(shopper((DAYS, {})), rules, {}, NOW)  # terminates


def test_the_lookback_keeps_history_no_live_rule_needs() -> None:
    assert RuleSet({}).retention == timedelta(days=30)
    assert RuleSet({}, lookback=timedelta(days=7)).retention == timedelta(days=7)
    long = SegmentRule.build(VIP, 1, parse_rule({"event": "x", "count": {"gte": 1}, "within": "P90D"}))
    assert RuleSet({VIP: long}).retention == 90 * DAYS


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"event": "purchase", "where": {"event": "x", "count": {"gte": 1}}, "count": {"gte": 1}},
         "rules.where: expected exactly one of conditions, all, any, not, field, got event"),
        ({"event": "purchase", "where": {"segment": VIP}, "count": {"gte": 1}}, "rules.where: expected exactly one"),
        ({"event": "purchase", "where": {"field": "x", "operator": "gtt", "value": 1}, "count": {"gte": 1}},
         "rules.where.operator: unknown operator 'gtt'"),
        ({"event": "purchase", "count": {"gte": 1}, "between": ["P30D", "P90D"]},
         "rules.between: the first duration (P30D) must reach further back"),
        ({"event": "purchase", "count": {"gte": 1}, "between": "P30D"}, "rules.between: expected [older, newer]"),
        ({"event": "purchase", "count": {"gte": 1}, "between": ["P30D", 7]}, "rules.between[1]: expected an ISO"),
        ({"event": "purchase", "count": {"gte": 1}, "within": "P1D", "between": ["P3D", "P1D"]},
         "rules: give one of within, between"),
        ({"event": "purchase", "last": {"before": "-P3D"}, "within": "P7D"},
         "rules.within: 'last' takes before/after, not a window"),
        ({"event": "purchase", "last": {"gte": 3}}, "rules.last.gte: unknown operator 'gte': expected before, after"),
        ({"event": "purchase", "last": {"before": "soon"}}, "rules.last.before: operator 'before' needs"),
        ({"event": "purchase", "last": {}}, "rules.last: expected at least one of before, after"),
        ({"event": "purchase", "avg": {"field": 3, "gte": 1}}, "rules.avg.field: expected the event property"),
        ({"event": "purchase", "count": {"field": "x", "gte": 1}}, "rules.count.field: 'count' takes no field"),
        ({"event": "purchase", "avg": {"field": "amount", "eq": "high"}}, "rules.avg.eq: needs a number"),
        ({"event": "purchase", "count": {"gte": 1}, "sum": {"gte": 1}},
         "rules: a behavioural condition needs exactly one of count, sum, avg"),
        ({"all": [{"segment": "vip"}]}, "rules.all[0].segment: expected a segment id (a UUID), got 'vip'"),
        ({"segment": VIP, "field": "x"}, "rules: expected exactly one of"),
    ],
)
def test_errors_name_their_path(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleValidationError) as caught:
        parse_rule(raw)
    assert any(str(issue).startswith(message) for issue in caught.value.issues), caught.value.issues


def test_lint_knows_the_new_forms() -> None:
    never = parse_rule({"event": "purchase", "distinct": {"field": "sku", "lt": 0}})
    assert [i.message for i in lint_rule(never)] == ["a distinct below zero never happens"]


def test_explain_annotates_every_node() -> None:
    p = shopper((5 * DAYS, {"category": "shoes", "amount": 80}), (2 * DAYS, {"category": "shoes", "amount": 20}))
    rule = parse_rule({"all": [{"event": "purchase", "where": SHOES, "count": {"gte": 2}, "within": "P30D"},
                               {"any": [{"field": "plan", "operator": "eq", "value": "pro"},
                                        {"event": "purchase", "avg": {"field": "amount", "gt": 100}}]},
                               {"segment": VIP}]})
    tree = explain(rule, p, NOW, frozenset({VIP}))
    assert tree["result"] is False and tree["path"] == "rules"
    count, either, member = tree["all"]
    assert (count["value"], count["result"], count["path"]) == (2, True, "rules.all[0]")
    assert count["where"] == SHOES and count["within"] == "P30D"
    assert either["result"] is False
    assert either["any"][0] == {"field": "plan", "operator": "eq", "operand": "pro", "value": None,
                                "path": "rules.all[1].any[0]", "result": False, "missing": True}
    assert either["any"][1]["value"] == 50.0
    assert member == {"segment": VIP, "path": "rules.all[2]", "value": True, "result": True}
    # what flipped between two profiles: the average crossed 100
    richer = shopper((5 * DAYS, {"category": "shoes", "amount": 280}), (2 * DAYS, {"category": "shoes", "amount": 20}))
    after = explain(rule, richer, NOW, frozenset({VIP}))
    assert after["result"] is True
    leaves = compile_leaves(rule)
    was, now = leaf_results(leaves, p, NOW, frozenset({VIP})), leaf_results(leaves, richer, NOW, frozenset({VIP}))
    assert [path for path, _, _ in now] == ["rules.all[0]", "rules.all[1].any[0]", "rules.all[1].any[1]",
                                            "rules.all[2]"]
    assert flipped(was, now) == [{"path": "rules.all[1].any[1]", "value": 150.0, "result": True, "was": 50.0}]


# -- property: the compiled predicate agrees with the reference interpreter on every form --------

CATEGORIES = ("shoes", "books", "garden")
properties = st.fixed_dictionaries({}, optional={
    "amount": st.one_of(st.integers(0, 500), st.floats(0, 500, allow_nan=False), st.just("n/a")),
    "category": st.sampled_from(CATEGORIES), "vip": st.booleans(),
})
shoppers = st.lists(st.tuples(st.integers(0, 100 * 24), st.sampled_from(("purchase", "view")), properties),
                    max_size=12).map(lambda events: _profile_of(events))


def _profile_of(events: list[tuple[int, str, dict[str, Any]]]) -> Profile:
    p = Profile("p")
    for i, (hours, kind, props) in enumerate(events):
        p = apply_event(p, UserEvent("p", kind, str(i), NOW - timedelta(hours=hours), props), timedelta(days=60))
    return p


filters = st.recursive(
    st.one_of(
        st.builds(lambda v: {"field": "category", "operator": "eq", "value": v}, st.sampled_from(CATEGORIES)),
        st.builds(lambda v: {"field": "amount", "operator": "gte", "value": v}, st.integers(0, 500)),
        st.builds(lambda v: {"field": "category", "operator": "in", "value": v},
                  st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2)),
        st.just({"field": "vip", "operator": "eq", "value": True}),
        st.just({"field": "amount", "operator": "exists"}),
    ),
    lambda children: st.one_of(st.lists(children, min_size=1, max_size=2).map(lambda c: {"any": c}),
                               children.map(lambda c: {"not": c})),
    max_leaves=3,
)
durations = st.sampled_from(["PT12H", "P1D", "P7D", "P30D", "P45D", "P90D"])
spans = st.one_of(
    st.just({}), durations.map(lambda d: {"within": d}),
    st.tuples(st.integers(2, 90), st.integers(0, 60)).filter(lambda b: b[0] > b[1])
      .map(lambda b: {"between": [f"P{b[0]}D", f"P{b[1]}D"]}),
)
aggregate_tests = st.one_of(
    st.builds(lambda op, v: {op: v}, st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), st.integers(0, 600)),
    st.builds(lambda a, b: {"between": sorted([a, b])}, st.integers(0, 600), st.integers(0, 600)),
)
moment = st.one_of(st.sampled_from(["-P1D", "-P10D", "-P30D", "-P60D"]), st.just("2026-10-01T00:00:00Z"))


@st.composite
def behaviours(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {"event": draw(st.sampled_from(("purchase", "view", "signup")))}
    if draw(st.booleans()):
        raw["where"] = draw(filters)
    metric = draw(st.sampled_from(["count", "sum", "avg", "min", "max", "distinct", "first", "last"]))
    if metric in ("first", "last"):
        raw[metric] = draw(st.dictionaries(st.sampled_from(["before", "after"]), moment, min_size=1))
        return raw
    spec = draw(aggregate_tests)
    if metric != "count":
        spec = {"field": "category" if metric == "distinct" else "amount", **spec}
    return {**raw, metric: spec, **draw(spans)}


rules = st.recursive(
    st.one_of(behaviours(), st.sampled_from([{"segment": VIP}, {"segment": CHURNED}]),
              st.builds(lambda v: {"field": "category", "operator": "eq", "value": v}, st.sampled_from(CATEGORIES))),
    lambda children: st.one_of(st.lists(children, max_size=3).map(lambda c: {"all": c}),
                               st.lists(children, max_size=3).map(lambda c: {"any": c}),
                               children.map(lambda c: {"not": c})),
    max_leaves=6,
)
memberships = st.sets(st.sampled_from([VIP, CHURNED])).map(frozenset)


@settings(max_examples=400, deadline=None)
@given(rules, shoppers, memberships, st.integers(-48, 48))
def test_compiled_agrees_with_interpreted_on_every_form(raw: dict[str, Any], p: Profile, member_of: frozenset[str],
                                                        shift_hours: int) -> None:
    rule = parse_rule(raw)
    now = NOW + timedelta(hours=shift_hours)
    assert compile_rule(rule)(p, now, member_of) == evaluate(rule, p, now, member_of)
    assert explain(rule, p, now, member_of)["result"] == evaluate(rule, p, now, member_of)
    leaves = {leaf["path"]: (leaf["value"], leaf["result"]) for leaf in _leaves(explain(rule, p, now, member_of))}
    assert leaves == {path: (value, result) for path, value, result in leaf_results(compile_leaves(rule), p, now,
                                                                                    member_of)}


def _leaves(tree: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("all", "any"):
        if key in tree:
            return [leaf for child in tree[key] for leaf in _leaves(child)]
    return _leaves(tree["not"]) if "not" in tree else [tree]


@settings(max_examples=300, deadline=None)
@given(rules)
def test_every_form_round_trips_through_json(raw: dict[str, Any]) -> None:
    rule = parse_rule(raw)
    assert parse_rule(rule_to_json(rule)) == rule


@settings(max_examples=200, deadline=None)
@given(rules, shoppers, memberships)
def test_no_edge_is_missed(raw: dict[str, Any], p: Profile, member_of: frozenset[str]) -> None:
    """Between now and the next edge `window_expiry` names, the rule's value does not change."""
    rule = parse_rule(raw)
    edge = window_expiry(windows(rule), p, NOW)
    until = edge if edge is not None else NOW + timedelta(days=120)
    value = evaluate(rule, p, NOW, member_of)
    for fraction in (0.25, 0.5, 0.75, 0.999):
        assert evaluate(rule, p, NOW + (until - NOW) * fraction, member_of) == value


def test_a_relative_time_on_a_profile_field_has_its_own_timer() -> None:
    p = shopper((10 * DAYS, {}))
    inactive = parse_rule({"field": "lastSeen", "operator": "before", "value": "-P30D"})
    assert windows(inactive) == {(("lastSeen",), 30 * DAYS)}
    edge = window_expiry(windows(inactive), p, NOW)
    assert edge == NOW + 20 * DAYS  # the last event turns 30 days old then
    assert not evaluate(inactive, p, edge - timedelta(seconds=1)) and evaluate(inactive, p, edge + timedelta(seconds=1))
