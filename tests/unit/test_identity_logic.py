"""Identity in the rule engine without Flink: anonymous events, identify, merge, forwarding, forget.

Each keyed step is a pure function of (state, record); the tests carry the records between keys the
way the feedback topic does, and replay them the way a restarted job would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flinkjob.logic import Outcome, UserState, compile_definition, on_record
from server.domain.events import UserEvent
from server.domain.membership import SegmentRule
from server.domain.pipeline import (
    MAX_ALIASES,
    ForgetRecord,
    IdentifyRecord,
    MergeRecord,
    ProfileRemoved,
    keyed_input,
    record_key,
)
from server.domain.profile import Profile, merge_profiles
from server.domain.segment import SegmentDefinition

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
RICH = SegmentDefinition("rich", 1, rules={"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]})
VISITOR = SegmentDefinition("visitor", 1, rules={"conditions": [{"field": "eventCount", "operator": "gte",
                                                                  "value": 1}]})


def rules(*definitions: SegmentDefinition) -> dict[str, SegmentRule]:
    compiled = {d.id: compile_definition(d) for d in definitions}
    return {k: v for k, v in compiled.items() if v is not None}


RULES = rules(RICH, VISITOR)


def anonymous(amount: float, n: int, visitor: str = "anon-42", at: datetime = NOW) -> UserEvent:
    return UserEvent(visitor, "purchase", f"{visitor}-{n}", at + timedelta(seconds=n), {"amount": amount},
                     anonymous_id=visitor, anonymous=True)


def known(amount: float, n: int, user: str = "alice", **properties: object) -> UserEvent:
    return UserEvent(user, "purchase", f"{user}-{n}", NOW + timedelta(seconds=n), {"amount": amount, **properties})


class Keys:
    """The job's keyed state, and the feedback topic between keys (delivered in order)."""

    def __init__(self) -> None:
        self.state: dict[str, UserState] = {}
        self.outcomes: list[tuple[str, Outcome]] = []

    def send(self, key: str, record: object) -> Outcome:
        outcome = on_record(self.state.get(key, UserState()), record, RULES, NOW)  # type: ignore[arg-type]
        if outcome.refused is None:
            self.state[key] = outcome.state
        self.outcomes.append((key, outcome))
        for follow in outcome.feedback:  # through the topic: encoded, decoded, routed by its key
            data = follow.to_json()
            self.send(record_key(data) or "", keyed_input(data))
        return outcome

    def profile(self, key: str) -> Profile:
        profile = self.state[key].profile
        assert profile is not None
        return profile

    def changes(self) -> list[tuple[str, str, str]]:
        return [(c.user_id, c.segment_id, c.change) for _, o in self.outcomes for c in o.changes]


def identify(visitor: str = "anon-42", user: str = "alice", **traits: object) -> IdentifyRecord:
    return IdentifyRecord(visitor, user, NOW, dict(traits))


def test_two_anonymous_purchases_then_identify_merge_into_the_known_user() -> None:
    keys = Keys()
    keys.send("anon-42", anonymous(600, 1))
    keys.send("anon-42", anonymous(600, 2))
    assert keys.profile("anon-42").anonymous and keys.profile("anon-42").total_spent == 1200
    keys.send("anon-42", identify(plan="pro"))
    alice = keys.profile("alice")
    assert (alice.total_spent, alice.purchase_count, alice.event_count) == (1200, 2, 2)
    assert not alice.anonymous and alice.traits == {"plan": "pro"}
    assert keys.state["alice"].memberships.keys() == {"rich", "visitor"}
    assert keys.state["anon-42"] == UserState(alias_of="alice")
    assert ("anon-42", "rich", "exited") in keys.changes() and ("alice", "rich", "entered") in keys.changes()
    removed = [o.removed for k, o in keys.outcomes if o.removed is not None]
    assert removed == [ProfileRemoved("anon-42", "merged", NOW, into="alice")]
    later = keys.send("anon-42", anonymous(100, 3))  # only the anonymous id: lands on the known user
    assert later.changes == [] and keys.profile("alice").total_spent == 1300


def test_the_merge_adds_to_what_the_known_user_already_has() -> None:
    keys = Keys()
    keys.send("alice", known(300, 1, plan="free"))
    keys.send("anon-42", anonymous(800, 5))
    keys.send("anon-42", identify())
    alice = keys.profile("alice")
    assert (alice.total_spent, alice.event_count, alice.event_counts) == (1100, 2, {"purchase": 2})
    assert alice.first_seen == NOW + timedelta(seconds=1) and alice.last_seen == NOW + timedelta(seconds=5)
    assert keys.state["alice"].aliases == ["anon-42"]


def test_identify_twice_and_a_replayed_merge_change_nothing() -> None:
    keys = Keys()
    keys.send("anon-42", anonymous(600, 1))
    keys.send("anon-42", identify())
    after_first = keys.state["alice"]
    again = keys.send("anon-42", identify())
    assert again.feedback == () and again.changes == [] and keys.state["alice"] == after_first
    merge = MergeRecord("anon-42", "alice", NOW, Profile("anon-42", total_spent=600))
    replay = keys.send("alice", merge)  # a restarted job reads the merge it already applied
    assert replay.changes == [] and keys.profile("alice").total_spent == 600


def test_a_restart_between_identify_and_merge_counts_everything_once() -> None:
    """Checkpointed before the identify; the identify and its merge were processed, then the job died.
    Restored: the identify is read again (a second merge is sent) and so is the first merge."""
    keys = Keys()
    keys.send("anon-42", anonymous(600, 1))
    keys.send("anon-42", anonymous(600, 2))
    checkpoint = dict(keys.state)
    first = on_record(checkpoint["anon-42"], identify(), RULES, NOW)
    (merge,) = first.feedback
    keys.state = dict(checkpoint)
    keys.send("anon-42", identify())  # replayed: sends a second merge, which is applied
    keys.send("alice", merge)  # the first run's merge, still on the topic: ignored
    assert keys.profile("alice").total_spent == 1200 and keys.profile("alice").event_count == 2


def test_an_anonymous_id_linked_to_another_user_is_not_moved() -> None:
    keys = Keys()
    keys.send("anon-42", anonymous(10, 1))
    keys.send("anon-42", identify(user="alice"))
    refused = keys.send("anon-42", identify(user="bob"))
    assert refused.refused is not None and "already linked" in refused.refused
    assert keys.state["anon-42"].alias_of == "alice" and "bob" not in keys.state


def test_two_known_users_are_never_merged() -> None:
    keys = Keys()
    keys.send("bob", known(10, 1, user="bob"))
    refused = keys.send("bob", identify(visitor="bob", user="alice"))
    assert refused.refused is not None and "known user" in refused.refused
    assert keys.profile("bob").total_spent == 10 and "alice" not in keys.state


def test_a_user_takes_at_most_the_alias_limit() -> None:
    keys = Keys()
    keys.state["alice"] = UserState(Profile("alice"), aliases=[f"v{i}" for i in range(MAX_ALIASES)])
    refused = on_record(keys.state["alice"], MergeRecord("v-last", "alice", NOW, None), RULES, NOW)
    assert refused.refused is not None and str(MAX_ALIASES) in refused.refused


def test_identify_of_a_visitor_never_seen_gives_the_known_user_its_traits() -> None:
    keys = Keys()
    keys.send("anon-7", identify(visitor="anon-7", email="a@example.com"))
    alice = keys.profile("alice")
    assert alice.traits == {"email": "a@example.com"} and alice.event_count == 0
    assert keys.state["anon-7"].alias_of == "alice"


def test_forget_exits_every_membership_and_forgets_the_aliases() -> None:
    keys = Keys()
    keys.send("anon-42", anonymous(1500, 1))
    keys.send("anon-42", identify())
    keys.outcomes.clear()
    keys.send("alice", ForgetRecord("alice", NOW))
    assert sorted(keys.changes()) == [("alice", "rich", "exited"), ("alice", "visitor", "exited")]
    assert keys.state["alice"].empty and keys.state["anon-42"].empty
    removed = [o.removed for _, o in keys.outcomes]
    assert removed == [ProfileRemoved("alice", "deleted", NOW), ProfileRemoved("anon-42", "deleted", NOW)]
    fresh = keys.send("alice", known(5, 9))
    assert fresh.state.profile is not None and fresh.state.profile.total_spent == 5


def test_merged_profiles_keep_history_in_time_order_and_the_latest_traits() -> None:
    older = Profile("alice", traits={"plan": "free", "city": "Graz"}, last_seen=NOW,
                    history={"purchase": [(1.0, {"amount": 5.0}), (3.0, {"amount": 5.0})]}, recent_events=["a1"],
                    event_times={"purchase": (1.0, 3.0)})
    newer = Profile("anon-1", traits={"plan": "pro"}, last_seen=NOW + timedelta(hours=1),
                    history={"purchase": [(2.0, {"amount": 7.0})]}, anonymous=True, recent_events=["v1"],
                    event_times={"purchase": (0.5, 2.0)})
    merged = merge_profiles(older, newer, "alice", {"email": "a@example.com"})
    assert merged.traits == {"plan": "pro", "city": "Graz", "email": "a@example.com"}
    assert merged.history == {"purchase": [(1.0, {"amount": 5.0}), (2.0, {"amount": 7.0}), (3.0, {"amount": 5.0})]}
    assert merged.event_times == {"purchase": (0.5, 3.0)}
    assert merged.user_id == "alice" and not merged.anonymous and merged.recent_events == ["v1", "a1"]


def test_records_route_by_key_then_user_then_anonymous_id() -> None:
    assert record_key(identify().to_json()) == "anon-42"
    assert record_key(anonymous(1, 1).to_json()) == "anon-42"
    assert record_key(anonymous(1, 1).routed_to("alice").to_json()) == "alice"
    assert record_key(ForgetRecord("alice", NOW).to_json()) == "alice"
    assert record_key([1]) is None
    event = keyed_input(anonymous(1, 1).to_json())
    assert isinstance(event, UserEvent) and event.anonymous and event.user_id == "anon-42"
    assert "userId" not in anonymous(1, 1).to_json()
