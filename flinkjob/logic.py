"""The rule engine's decisions as pure functions; the Flink operator is a thin shell around them.

Inputs on the keyed side are user events and re-evaluation requests (backfill after a segment
changed); the broadcast side carries segment definitions. State per user: the profile and the
segments the user is in (id -> version entered at), and the ids of the user's latest events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from server.domain.events import UserEvent
from server.domain.membership import MembershipChange, SegmentRule, evaluate_memberships
from server.domain.pipeline import ReevaluationRequest
from server.domain.profile import Profile, apply_event, prune_history
from server.domain.rules import RuleValidationError, parse_rule, window_expiry
from server.domain.segment import SegmentDefinition

# A record can reach the topic twice: a producer that gets no ack retries, and without idempotence (the
# local durable broker) the broker stores the retry too. The copy follows the original closely (same key,
# same partition), so the last few ids of the user's events are enough to count it once.
RECENT_EVENT_IDS = 16


@dataclass
class UserState:
    profile: Profile | None = None
    memberships: dict[str, int] = field(default_factory=dict)
    recent_events: list[str] = field(default_factory=list)  # eventIds, newest last

    def to_json(self, profile: dict[str, Any] | None = None) -> str:
        """The state as stored in Flink; `profile` is the profile's JSON when the caller already has it."""
        if profile is None and self.profile is not None:
            profile = self.profile.to_json()
        return orjson.dumps({"profile": profile, "memberships": self.memberships,
                             "recentEvents": self.recent_events}).decode()

    @classmethod
    def from_json(cls, text: str | None) -> UserState:
        if not text:
            return cls()
        data = orjson.loads(text)
        profile = Profile.from_json(data["profile"]) if data.get("profile") else None
        return cls(profile=profile, memberships={k: int(v) for k, v in data.get("memberships", {}).items()},
                   recent_events=[str(i) for i in data.get("recentEvents", [])])


@dataclass(frozen=True)
class Outcome:
    state: UserState
    changes: list[MembershipChange]
    profile_changed: bool
    next_timer: datetime | None
    refused: str | None = None  # why the input was not applied, when it could not be


def compile_definition(definition: SegmentDefinition) -> SegmentRule | None:
    """The compiled rule of an active definition; None if inactive or (defensively) invalid."""
    if not definition.active or definition.rules is None:
        return None
    try:
        return SegmentRule.build(definition.id, definition.version, parse_rule(definition.rules))
    except RuleValidationError:
        return None


def retention_for(rules: Mapping[str, SegmentRule]) -> timedelta:
    return max((r.retention for r in rules.values()), default=timedelta(0))


def _diff(state: UserState, profile: Profile, rules: Mapping[str, SegmentRule], now: datetime,
          received_at: datetime | None, only: str | None = None) -> tuple[dict[str, int], list[MembershipChange]]:
    """Evaluate `rules` (or just segment `only`) and return (new memberships, changes)."""
    current = state.memberships if only is None else {k: v for k, v in state.memberships.items() if k == only}
    diff = evaluate_memberships(profile, rules, current, now)
    memberships = {k: v for k, v in state.memberships.items() if only is not None and k != only}
    memberships.update(diff.current)
    changes = [MembershipChange(profile.user_id, sid, "entered", now, v, received_at) for sid, v in diff.entered]
    changes += [MembershipChange(profile.user_id, sid, "exited", now, v, received_at) for sid, v in diff.exited]
    return memberships, changes


def _next_timer(profile: Profile, rules: Mapping[str, SegmentRule], now: datetime) -> datetime | None:
    looked_through = frozenset().union(*(r.windows for r in rules.values()))
    return window_expiry(looked_through, profile, now) if looked_through else None


def on_event(state: UserState, event: UserEvent, rules: Mapping[str, SegmentRule], now: datetime) -> Outcome:
    """A user event: update the profile, evaluate every active rule, report what changed.

    An event whose id is among the user's latest is a second copy of one already applied: nothing changes.
    Nor does an event that would take the profile beyond what can be stored (totalSpent past the largest
    float): that profile could not be written, in Flink's state or in the store.
    """
    if event.event_id in state.recent_events:
        return Outcome(state, [], False, None)
    profile = apply_event(state.profile, event, retention_for(rules))
    if not math.isfinite(profile.total_spent):
        return Outcome(state, [], False, None, refused=f"event {event.event_id}: totalSpent would overflow")
    memberships, changes = _diff(state, profile, rules, now, event.received_at)
    recent = [*state.recent_events[-(RECENT_EVENT_IDS - 1):], event.event_id]
    return Outcome(UserState(profile, memberships, recent), changes, True, _next_timer(profile, rules, now))


def on_reevaluate(state: UserState, request: ReevaluationRequest, rules: Mapping[str, SegmentRule],
                  now: datetime) -> Outcome:
    """Backfill of changed segments for this user, using the definitions the request carries (the
    broadcast side may not have them yet) unless the broadcast side already has a newer one."""
    profile = state.profile
    if profile is None:
        return Outcome(state, [], False, None)
    changes: list[MembershipChange] = []
    merged = dict(rules)
    for definition in request.segments:
        known = rules.get(definition.id)
        effective = compile_definition(definition) if definition.supersedes(known) else known
        scope = {definition.id: effective} if effective is not None else {}
        memberships, found = _diff(state, profile, scope, now, None, only=definition.id)
        state = replace(state, memberships=memberships)
        changes += found
        merged.pop(definition.id, None)
        merged.update(scope)
    return Outcome(state, changes, False, _next_timer(profile, merged, now))


def on_timer(state: UserState, rules: Mapping[str, SegmentRule], now: datetime) -> Outcome:
    """A window may have passed: drop old history and re-evaluate with no new event."""
    if state.profile is None:
        return Outcome(state, [], False, None)
    profile = prune_history(state.profile, now, retention_for(rules))
    memberships, changes = _diff(state, profile, rules, now, None)
    return Outcome(replace(state, profile=profile, memberships=memberships), changes, False,
                   _next_timer(profile, rules, now))


def utc_from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)
