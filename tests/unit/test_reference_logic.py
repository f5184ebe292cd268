"""The rule job's decisions on segment references, STATIC memberships, the lookback and the reason of each change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flinkjob.logic import UserState, compile_definition, on_event, on_record, on_reevaluate, on_timer
from server.domain.events import UserEvent
from server.domain.membership import RuleSet
from server.domain.pipeline import ReevaluationRequest, StaticMembership, keyed_input
from server.domain.segment import SegmentDefinition

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
VIP, CHURNED, KEEP = ("00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2",
                      "00000000-0000-4000-8000-0000000000a3")


def definition(segment_id: str, rules: dict[str, Any], version: int = 1) -> SegmentDefinition:
    return SegmentDefinition(segment_id, version, rules=rules)


VIP_RULE = definition(VIP, {"field": "totalSpent", "operator": "gt", "value": 100})
KEEP_RULE = definition(KEEP, {"all": [{"segment": VIP}, {"not": {"segment": CHURNED}}]})  # CHURNED is STATIC


def rules(*definitions: SegmentDefinition, lookback: timedelta = timedelta(days=30)) -> RuleSet:
    compiled = {d.id: compile_definition(d) for d in definitions}
    return RuleSet({k: v for k, v in compiled.items() if v is not None}, lookback)


def purchase(amount: float, at: datetime = NOW, **properties: Any) -> UserEvent:
    return UserEvent(user_id="u1", event_type="purchase", event_id=f"e{at.timestamp()}{amount}", timestamp=at,
                     properties={"amount": amount, **properties}, received_at=at)


def test_one_event_enters_a_segment_and_the_one_referring_to_it_with_reasons() -> None:
    outcome = on_event(UserState(), purchase(150), rules(KEEP_RULE, VIP_RULE), NOW)
    assert [(c.segment_id, c.change) for c in outcome.changes] == [(VIP, "entered"), (KEEP, "entered")]
    vip, keep = (c.because for c in outcome.changes)
    assert vip is not None and keep is not None
    assert vip["cause"] == "event" and vip["eventType"] == "purchase"
    assert vip["leaves"] == [{"path": "rules", "value": 150.0, "result": True, "was": 0.0}]
    assert keep["leaves"] == [{"path": "rules.all[0]", "value": True, "result": True, "was": False}]


def test_a_static_membership_reevaluates_the_rules_referring_to_it_with_no_event() -> None:
    live = rules(VIP_RULE, KEEP_RULE)
    state = on_event(UserState(), purchase(150), live, NOW).state
    record = keyed_input(StaticMembership("u1", CHURNED, "entered", NOW).to_json())
    assert isinstance(record, StaticMembership)
    joined = on_record(state, record, live, NOW)
    assert [(c.segment_id, c.change) for c in joined.changes] == [(KEEP, "exited")]
    assert joined.changes[0].because == {"cause": "membership", "segmentId": CHURNED, "change": "entered",
                                         "leaves": [{"path": "rules.all[1].not", "value": True, "result": True,
                                                     "was": False}]}
    assert joined.state.static == {CHURNED} and joined.state.memberships == {VIP: 1}
    assert UserState.from_json(joined.state.to_json()) == joined.state
    assert on_record(joined.state, record, live, NOW).changes == []  # a repeat changes nothing
    left = on_record(joined.state, StaticMembership("u1", CHURNED, "exited", NOW), live, NOW)
    assert [(c.segment_id, c.change) for c in left.changes] == [(KEEP, "entered")]


def test_a_static_membership_before_any_event_is_kept_for_later() -> None:
    live = rules(VIP_RULE, KEEP_RULE)
    first = on_record(UserState(), StaticMembership("u1", CHURNED, "entered", NOW), live, NOW)
    assert first.changes == [] and first.state.static == {CHURNED} and not first.state.empty
    after = on_event(first.state, purchase(150), live, NOW)
    assert [(c.segment_id, c.change) for c in after.changes] == [(VIP, "entered")]  # churned: not kept


def test_backfill_of_a_referenced_segment_reaches_the_segments_referring_to_it() -> None:
    live = rules(VIP_RULE, KEEP_RULE)
    state = on_event(UserState(), purchase(150), live, NOW).state
    stricter = definition(VIP, {"field": "totalSpent", "operator": "gt", "value": 1000}, version=2)
    outcome = on_reevaluate(state, ReevaluationRequest("u1", (stricter,)), live, NOW)
    assert [(c.segment_id, c.change) for c in outcome.changes] == [(VIP, "exited"), (KEEP, "exited")]
    assert all(c.because and c.because["cause"] == "definition" and c.because["segmentId"] == VIP
               for c in outcome.changes)
    assert outcome.state.memberships == {}


def test_history_is_kept_for_the_lookback_whatever_the_live_rules_need() -> None:
    live = rules(VIP_RULE, lookback=timedelta(days=30))
    state = UserState()
    for days in (40, 25, 24):
        state = on_event(state, purchase(10, NOW - timedelta(days=days), category="shoes"), live, NOW).state
    assert state.profile is not None
    assert [props["category"] for _, props in state.profile.history["purchase"]] == ["shoes", "shoes"]
    later = definition(CHURNED, {"event": "purchase", "count": {"gte": 2}, "within": "P28D",
                                 "where": {"field": "category", "operator": "eq", "value": "shoes"}})
    outcome = on_reevaluate(state, ReevaluationRequest("u1", (later,)), live, NOW)
    assert [(c.segment_id, c.change) for c in outcome.changes] == [(CHURNED, "entered")]


def test_a_bounded_window_changes_membership_on_its_timer() -> None:
    entering = definition(VIP, {"event": "purchase", "count": {"gte": 1}, "between": ["P30D", "P7D"]})
    live = rules(entering)
    outcome = on_event(UserState(), purchase(10, NOW - timedelta(days=6)), live, NOW)
    assert outcome.changes == [] and outcome.next_timer == NOW + timedelta(days=1)
    fired = on_timer(outcome.state, live, outcome.next_timer + timedelta(milliseconds=1))
    assert [(c.segment_id, c.change) for c in fired.changes] == [(VIP, "entered")]
    assert fired.changes[0].because is not None and fired.changes[0].because["cause"] == "time"
    assert fired.next_timer == NOW - timedelta(days=6) + timedelta(days=30)  # when it leaves the span
