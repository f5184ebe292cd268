"""How events change a profile, its JSON form, and membership decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.domain.events import InvalidEvent, UserEvent
from server.domain.membership import MembershipChange, SegmentRule, evaluate_memberships
from server.domain.profile import (
    MAX_HISTORY_BYTES,
    MAX_HISTORY_EVENTS,
    MAX_HISTORY_PROPERTIES,
    MAX_HISTORY_TEXT,
    Profile,
    apply_event,
    merge_profiles,
    prune_history,
)
from server.domain.rules import parse_rule

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def event(kind: str, at: datetime, **properties: object) -> UserEvent:
    return UserEvent(user_id="u1", event_type=kind, event_id=f"{kind}-{at.timestamp()}", timestamp=at,
                     properties=properties)


def test_aggregates_and_traits() -> None:
    p = apply_event(None, event("page_view", T0 + timedelta(hours=1), page="/home", plan="free"), timedelta(0))
    p = apply_event(p, event("purchase", T0, amount=1500, category="electronics"), timedelta(0))
    p = apply_event(p, event("purchase", T0 + timedelta(hours=2), amount=20.5, plan="pro"), timedelta(0))
    p = apply_event(p, event("add_to_cart", T0, amount=999), timedelta(0))  # amount on non-purchase: not spent
    assert p.total_spent == 1520.5
    assert p.purchase_count == 2
    assert p.event_count == 4
    assert p.first_seen == T0 and p.last_seen == T0 + timedelta(hours=2)
    assert p.event_counts == {"page_view": 1, "purchase": 2, "add_to_cart": 1}
    assert p.traits == {"page": "/home", "plan": "pro", "category": "electronics"}
    assert "amount" not in p.traits
    assert p.history == {}  # no rule needs a window


def test_apply_event_does_not_modify_its_input() -> None:
    first = apply_event(None, event("purchase", T0, amount=10), timedelta(days=1))
    apply_event(first, event("purchase", T0, amount=10, plan="x"), timedelta(days=1))
    assert first.total_spent == 10 and first.traits == {} and len(first.history["purchase"]) == 1


def test_history_is_pruned_to_the_retention_and_capped_in_entries() -> None:
    p: Profile | None = None
    for i in range(MAX_HISTORY_EVENTS + 50):
        p = apply_event(p, event("page_view" if i % 2 else "click", T0 + timedelta(seconds=i)), timedelta(days=1))
    assert p is not None and sum(map(len, p.history.values())) == MAX_HISTORY_EVENTS
    assert p.history["click"][0][0] == (T0 + timedelta(seconds=50)).timestamp()  # the oldest went, of any type
    p = apply_event(p, event("page_view", T0 + timedelta(days=3)), timedelta(days=1))
    assert len(p.history["page_view"]) == 1
    assert p.event_times["click"] == (T0.timestamp(), (T0 + timedelta(seconds=MAX_HISTORY_EVENTS + 48)).timestamp())
    assert prune_history(p, T0 + timedelta(days=5), timedelta(days=1)).history == {}


def test_history_keeps_filterable_properties_and_is_bounded_in_bytes() -> None:
    wide = {f"p{i}": i for i in range(MAX_HISTORY_PROPERTIES + 5)}
    p = apply_event(None, event("view", T0, note="x" * (MAX_HISTORY_TEXT + 1), tags=["a"], ok=True, **wide),
                    timedelta(days=1))
    kept = p.history["view"][0][1]
    assert "note" not in kept and "tags" not in kept and kept["ok"] is True  # long text and lists are not kept
    assert len(kept) == MAX_HISTORY_PROPERTIES
    big = "y" * MAX_HISTORY_TEXT
    for i in range(400):
        p = apply_event(p, event("view", T0 + timedelta(seconds=i + 1), a=big, b=big), timedelta(days=1))
    assert p.history_bytes <= MAX_HISTORY_BYTES < p.history_bytes + 2 * (MAX_HISTORY_TEXT + 30)
    assert len(p.history["view"]) < 400 and p.event_counts["view"] == 401
    assert Profile.from_json(p.to_json()).history_bytes == p.history_bytes


def test_out_of_order_events_keep_the_history_in_time_order() -> None:
    p = None
    for hours in (5, 1, 3):
        p = apply_event(p, event("purchase", T0 + timedelta(hours=hours), amount=hours), timedelta(days=1))
    assert p is not None and [props["amount"] for _, props in p.history["purchase"]] == [1, 3, 5]


def test_history_written_before_it_held_properties_is_read() -> None:
    p = Profile.from_json({"userId": "u1", "history": {"purchase": [[1.0, 25.0], [2.0, 0.0]]}})
    assert p.history == {"purchase": [(1.0, {"amount": 25.0}), (2.0, {})]}
    assert p.history_bytes > 0


def test_merged_histories_stay_bounded() -> None:
    a = b = None
    for i in range(MAX_HISTORY_EVENTS):
        a = apply_event(a, event("view", T0 + timedelta(seconds=2 * i)), timedelta(days=1))
        b = apply_event(b, event("view", T0 + timedelta(seconds=2 * i + 1)), timedelta(days=1))
    merged = merge_profiles(a, b, "u1")
    assert len(merged.history["view"]) == MAX_HISTORY_EVENTS
    assert merged.history["view"][0][0] == (T0 + timedelta(seconds=MAX_HISTORY_EVENTS)).timestamp()


def test_profile_json_roundtrip() -> None:
    p = apply_event(None, event("purchase", T0, amount=5, city="Oslo"), timedelta(days=7))
    assert Profile.from_json(p.to_json()) == p


def test_event_json_roundtrip_and_errors() -> None:
    e = UserEvent(user_id="u", event_type="purchase", event_id="e1", timestamp=T0, properties={"amount": 1},
                  received_at=T0)
    assert UserEvent.from_json(e.to_json()) == e
    with pytest.raises(InvalidEvent, match="userId: required"):
        UserEvent.from_json({"eventType": "x", "eventId": "1", "timestamp": "2026-01-01T00:00:00Z"})
    with pytest.raises(InvalidEvent, match="timestamp"):
        UserEvent.from_json({"userId": "u", "eventType": "x", "eventId": "1", "timestamp": "yesterday"})


def test_memberships_enter_stay_across_versions_and_exit() -> None:
    rich = parse_rule({"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]})
    p = apply_event(None, event("purchase", T0, amount=1500), timedelta(0))
    v1 = {"s1": SegmentRule.build("s1", 1, rich)}
    diff = evaluate_memberships(p, v1, {}, T0)
    assert diff.entered == [("s1", 1)] and diff.exited == [] and diff.current == {"s1": 1}
    v2 = {"s1": SegmentRule.build("s1", 2, rich)}
    again = evaluate_memberships(p, v2, diff.current, T0)
    assert again.entered == [] and again.current == {"s1": 2}  # no second 'entered' for a new version
    stricter = {"s1": SegmentRule.build("s1", 3, parse_rule({"field": "totalSpent", "operator": "gt", "value": 5000}))}
    assert evaluate_memberships(p, stricter, again.current, T0).exited == [("s1", 3)]
    assert evaluate_memberships(p, {}, again.current, T0).exited == [("s1", 2)]  # segment deleted


def test_membership_change_json() -> None:
    change = MembershipChange("u1", "1d1f0e2c-3b4a-4c5d-8e6f-7a8b9c0d1e2f", "entered", T0, 3, event_received_at=T0)
    assert MembershipChange.from_json(change.to_json()) == change
    assert change.to_json()["change"] == "entered"
    with pytest.raises(ValueError, match="change"):
        MembershipChange.from_json({**change.to_json(), "change": "joined"})
