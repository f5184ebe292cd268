"""The rule engine's decisions without Flink: events, backfill, timers, deletes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flinkjob.logic import UserState, compile_definition, on_event, on_reevaluate, on_timer
from server.domain.events import UserEvent
from server.domain.membership import SegmentRule
from server.domain.pipeline import ReevaluationRequest
from server.domain.segment import SegmentDefinition, SegmentStatus, SegmentType

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def definition(segment_id: str, rules: dict[str, Any], version: int = 1) -> SegmentDefinition:
    return SegmentDefinition(segment_id, version, rules=rules)


HIGH = definition("high", {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]})
BURST = definition("burst", {"event": "purchase", "count": {"gte": 2}, "within": "PT10S"})


def rules(*definitions: SegmentDefinition) -> dict[str, SegmentRule]:
    compiled = {d.id: compile_definition(d) for d in definitions}
    return {k: v for k, v in compiled.items() if v is not None}


def backfill(*definitions: SegmentDefinition) -> ReevaluationRequest:
    return ReevaluationRequest("u1", definitions)


def purchase(amount: float, at: datetime = NOW, user: str = "u1") -> UserEvent:
    return UserEvent(user_id=user, event_type="purchase", event_id=f"e{at.timestamp()}{amount}", timestamp=at,
                     properties={"amount": amount}, received_at=at)


def test_event_enters_and_reports_latency_source() -> None:
    outcome = on_event(UserState(), purchase(1500), rules(HIGH), NOW)
    assert [(c.segment_id, c.change, c.segment_version) for c in outcome.changes] == [("high", "entered", 1)]
    assert outcome.changes[0].event_received_at == NOW
    assert outcome.state.memberships == {"high": 1} and outcome.profile_changed
    again = on_event(outcome.state, purchase(10), rules(HIGH), NOW)
    assert again.changes == []  # still a member: nothing new to say


def test_state_survives_json() -> None:
    state = on_event(UserState(), purchase(1500), rules(HIGH), NOW).state
    assert UserState.from_json(state.to_json()) == state
    assert UserState.from_json(None) == UserState()


def test_inactive_or_static_definitions_are_not_evaluated() -> None:
    assert compile_definition(HIGH) is not None
    assert compile_definition(replace(HIGH, status=SegmentStatus.PAUSED)) is None
    assert compile_definition(replace(HIGH, type=SegmentType.STATIC)) is None
    assert compile_definition(SegmentDefinition.tombstone("high")) is None
    assert compile_definition(replace(HIGH, rules={"field": "x", "operator": "gtt", "value": 1})) is None


def test_backfill_applies_a_new_definition_only_to_its_segment() -> None:
    state = on_event(UserState(), purchase(1500), {}, NOW).state  # no rules yet
    assert state.memberships == {}
    outcome = on_reevaluate(state, backfill(HIGH), {}, NOW)
    assert [(c.segment_id, c.change) for c in outcome.changes] == [("high", "entered")]
    assert not outcome.profile_changed
    tightened = definition("high", {"field": "totalSpent", "operator": "gt", "value": 5000}, version=2)
    exited = on_reevaluate(outcome.state, backfill(tightened), rules(HIGH), NOW)
    assert [(c.change, c.segment_version) for c in exited.changes] == [("exited", 2)]
    deleted = on_reevaluate(outcome.state, backfill(SegmentDefinition.tombstone("high")), rules(HIGH), NOW)
    assert [c.change for c in deleted.changes] == ["exited"]
    stale = on_reevaluate(outcome.state, backfill(replace(tightened, version=0)), rules(HIGH), NOW)
    assert stale.changes == []  # the job already knows a newer version: keep it
    held = on_reevaluate(outcome.state, backfill(tightened), rules(tightened), NOW)
    assert [(c.change, c.segment_version) for c in held.changes] == [("exited", 2)]  # the same version as held


def test_one_request_backfills_several_segments() -> None:
    state = on_event(UserState(), purchase(1500), {}, NOW).state
    other = definition("spender", {"field": "purchaseCount", "operator": "gte", "value": 1})
    outcome = on_reevaluate(state, backfill(HIGH, other, BURST), {}, NOW)
    assert sorted(c.segment_id for c in outcome.changes) == ["high", "spender"]
    assert outcome.state.memberships == {"high": 1, "spender": 1}


def test_backfill_of_an_unknown_user_does_nothing() -> None:
    outcome = on_reevaluate(UserState(), backfill(HIGH), {}, NOW)
    assert outcome.changes == [] and outcome.state == UserState()


def test_windowed_membership_expires_on_the_timer() -> None:
    active = rules(BURST)
    first = on_event(UserState(), purchase(5, NOW - timedelta(seconds=4)), active, NOW)
    second = on_event(first.state, purchase(5, NOW), active, NOW)
    assert [c.change for c in second.changes] == ["entered"]
    assert second.next_timer == NOW + timedelta(seconds=6)  # when the older purchase leaves the window
    early = on_timer(second.state, active, NOW + timedelta(seconds=5))
    assert early.changes == []
    late = on_timer(second.state, active, NOW + timedelta(seconds=7))
    assert [c.change for c in late.changes] == ["exited"]
    assert late.state.memberships == {}


def test_a_second_copy_of_an_event_is_applied_once() -> None:
    event = purchase(700)
    first = on_event(UserState(), event, rules(HIGH), NOW)
    again = on_event(first.state, event, rules(HIGH), NOW)  # the broker stored a producer's retry too
    assert again.state == first.state and again.changes == [] and not again.profile_changed
    assert again.state.profile is not None and again.state.profile.event_count == 1
    later = on_event(first.state, purchase(400), rules(HIGH), NOW)
    assert [c.segment_id for c in later.changes] == ["high"] and later.state.profile is not None
    assert later.state.profile.event_count == 2
    assert UserState.from_json(later.state.to_json()) == later.state


def test_only_the_latest_event_ids_are_kept() -> None:
    state = UserState()
    for i in range(40):
        state = on_event(state, purchase(i + 1), {}, NOW).state
    assert state.profile is not None
    assert len(state.profile.recent_events) == 16 and state.profile.recent_events[-1] == purchase(40).event_id


def test_an_event_that_would_overflow_the_profile_is_refused_and_changes_nothing() -> None:
    rich = on_event(UserState(), purchase(1e308), rules(HIGH), NOW)
    assert rich.refused is None and rich.state.profile is not None
    overflow = on_event(rich.state, purchase(1e308, NOW + timedelta(seconds=1)), rules(HIGH), NOW)
    assert overflow.refused is not None and "totalSpent" in overflow.refused
    assert overflow.state == rich.state and overflow.changes == [] and not overflow.profile_changed
    assert UserState.from_json(rich.state.to_json()) == rich.state  # what is kept can be read back
