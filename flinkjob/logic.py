"""The rule engine's decisions as pure functions; the Flink operator is a thin shell around them.

Inputs on the keyed side are user events, re-evaluation requests (backfill after a segment
changed) and identity's records; the broadcast side carries segment definitions. State per user:
the profile (with the ids of the user's latest events), the segments the user is in (id -> version
entered at), and the anonymous ids merged into it. An anonymous id that was linked to a known user
keeps only `alias_of`: what still arrives for it is sent on to that user.

Identity, step by step (every step keyed, so a restart replays it against restored state):
1. an `IdentifyRecord` reaches the anonymous id's key, after that id's earlier events: its memberships
   exit, its profile leaves as a `MergeRecord` for the known user (on the feedback topic), and the key
   keeps `alias_of`. A second identify to the same user changes nothing.
2. the `MergeRecord` reaches the known user: the profiles merge once (the anonymous id is then among
   `aliases`, so a replayed copy is ignored) and every rule is evaluated on the result.
3. later events for the anonymous id reach its key and go on to the known user, in order, after the merge.
A `ForgetRecord` empties the key (the operator clears its state), emits its exits and a removal for the
store, and forgets each alias's key in turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from server.domain.events import UserEvent
from server.domain.membership import Change, MembershipChange, SegmentRule, as_rule_set, evaluate_memberships, reason
from server.domain.pipeline import (
    MAX_ALIASES,
    ForgetRecord,
    IdentifyRecord,
    KeyedInput,
    MergeRecord,
    ProfileRemoved,
    ReevaluationRequest,
    StaticMembership,
)
from server.domain.profile import Profile, apply_event, merge_profiles, prune_history
from server.domain.rules import RuleValidationError, parse_rule, window_expiry
from server.domain.segment import SegmentDefinition
from server.domain.timeutil import format_timestamp


@dataclass
class UserState:
    profile: Profile | None = None
    memberships: dict[str, int] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # anonymous ids merged into this user, oldest first
    alias_of: str | None = None  # this key is an anonymous id linked to that user
    static: frozenset[str] = frozenset()  # the STATIC segments the user is in (for rules that refer to them)

    @property
    def empty(self) -> bool:
        """Nothing is left to keep: the operator clears the key's state."""
        return (self.profile is None and not self.memberships and not self.aliases and self.alias_of is None
                and not self.static)

    def to_json(self, profile: dict[str, Any] | orjson.Fragment | None = None) -> str:
        """The state as stored in Flink; `profile` is the profile's JSON (or its encoding, as an orjson Fragment)
        when the caller already has it."""
        if profile is None and self.profile is not None:
            profile = self.profile.to_json()
        body: dict[str, Any] = {"profile": profile, "memberships": self.memberships}
        if self.aliases:
            body["aliases"] = self.aliases
        if self.alias_of is not None:
            body["aliasOf"] = self.alias_of
        if self.static:
            body["static"] = sorted(self.static)
        return orjson.dumps(body).decode()

    @classmethod
    def from_json(cls, text: str | None) -> UserState:
        if not text:
            return cls()
        data = orjson.loads(text)
        profile = Profile.from_json(data["profile"]) if data.get("profile") else None
        if profile is not None and "recentEvents" in data:  # state written before the ids moved into the profile
            profile.recent_events = [str(i) for i in data["recentEvents"]]
        return cls(profile=profile, memberships={k: int(v) for k, v in data.get("memberships", {}).items()},
                   aliases=[str(a) for a in data.get("aliases", [])], alias_of=data.get("aliasOf"),
                   static=frozenset(data.get("static", ())))


@dataclass(frozen=True)
class Outcome:
    state: UserState
    changes: list[MembershipChange]
    profile_changed: bool
    next_timer: datetime | None
    refused: str | None = None  # why the input was not applied, when it could not be
    feedback: tuple[KeyedInput, ...] = ()  # records for other keys, sent through the feedback topic
    removed: ProfileRemoved | None = None  # the store drops this key's rows (after `changes`)


def unchanged(state: UserState) -> Outcome:
    return Outcome(state, [], False, None)


def refusal(state: UserState, why: str) -> Outcome:
    """The input is not applied: the state stays as it was, and `why` is logged and counted."""
    return Outcome(state, [], False, None, refused=why)


def compile_definition(definition: SegmentDefinition) -> SegmentRule | None:
    """The compiled rule of an active definition; None if inactive or (defensively) invalid."""
    if not definition.active or definition.rules is None:
        return None
    try:
        return SegmentRule.build(definition.id, definition.version, parse_rule(definition.rules))
    except RuleValidationError:
        return None


def retention_for(rules: Mapping[str, SegmentRule]) -> timedelta:
    """How long a user's history keeps events: the lookback, or the longest window a live rule needs."""
    return as_rule_set(rules).retention


def _diff(state: UserState, profile: Profile, rules: Mapping[str, SegmentRule], now: datetime,
          cause: Mapping[str, Any] | Callable[[], Mapping[str, Any]], before: Profile | None = None,
          only: Container[str] | None = None,
          received_at: datetime | None = None, static_before: frozenset[str] | None = None,
          ) -> tuple[dict[str, int], list[MembershipChange]]:
    """Evaluate `rules` (or just the segments in `only`) on `profile` and return (new memberships, changes).

    Each change says why (`because`): `cause`, and the leaves of the rule that flipped since `before` (the
    profile as it was; None: every leaf, as for a rule that is new to the user). `static_before` is the user's
    STATIC segments before this input, when it changed them.
    """
    diff = evaluate_memberships(profile, rules, state.memberships, now, state.static, only)
    if not diff.entered and not diff.exited:
        return diff.current, []
    if callable(cause):  # built only when something changed: most events change nothing
        cause = cause()
    was_in = _Segments(state.memberships, state.static if static_before is None else static_before)
    now_in = _Segments(diff.current, state.static)
    changes = []
    kinds: tuple[tuple[Change, list[tuple[str, int]]], ...] = (("entered", diff.entered), ("exited", diff.exited))
    for change, found in kinds:
        for segment_id, version in found:
            rule = rules.get(segment_id)
            why = reason(rule, cause, before, profile, now, was_in, now_in)
            changes.append(MembershipChange(profile.user_id, segment_id, change, now, version, received_at,
                                            because=why))
    return diff.current, changes


@dataclass(frozen=True)
class _Segments(Container[str]):
    """The segments a user is in: dynamic (segment id -> version) and STATIC."""

    dynamic: Mapping[str, int]
    static: frozenset[str]

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self.dynamic or segment_id in self.static


def _exit_all(state: UserState, user_id: str, now: datetime, cause: Mapping[str, Any]) -> list[MembershipChange]:
    """Every membership of the key exits (it was merged into another user, or deleted)."""
    return _diff(state, state.profile or Profile(user_id), {}, now, cause)[1]


def _next_timer(profile: Profile, rules: Mapping[str, SegmentRule], now: datetime) -> datetime | None:
    looked_through = as_rule_set(rules).windows
    return window_expiry(looked_through, profile, now) if looked_through else None


def on_event(state: UserState, event: UserEvent, rules: Mapping[str, SegmentRule], now: datetime) -> Outcome:
    """A user event: update the profile, evaluate every active rule, report what changed.

    An event whose id is among the user's latest is a second copy of one already applied: nothing changes.
    Nor does an event that would take the profile beyond what can be stored (totalSpent past the largest
    float): that profile could not be written, in Flink's state or in the store.
    """
    if state.alias_of is not None:  # an anonymous id linked to a known user: the event is theirs
        return Outcome(state, [], False, None, feedback=(event.routed_to(state.alias_of),))
    if state.profile is not None and event.event_id in state.profile.recent_events:
        return unchanged(state)
    rules = as_rule_set(rules)
    profile = apply_event(state.profile, event, rules.retention, now)
    if not math.isfinite(profile.total_spent):
        return refusal(state, f"event {event.event_id}: totalSpent would overflow")
    def cause() -> dict[str, Any]:
        return {"cause": "event", "eventId": event.event_id, "eventType": event.event_type,
                "eventAt": format_timestamp(event.timestamp)}

    before = state.profile or Profile(profile.user_id)  # a first event: what flipped is measured from nothing
    memberships, changes = _diff(state, profile, rules, now, cause, before, received_at=event.received_at)
    return Outcome(replace(state, profile=profile, memberships=memberships), changes, True,
                   _next_timer(profile, rules, now))


def on_identify(state: UserState, record: IdentifyRecord, now: datetime) -> Outcome:
    """At the anonymous id's key: hand its profile to the known user, exit its memberships, keep the link."""
    if state.alias_of == record.user_id:
        return unchanged(state)  # the same identify again
    if state.alias_of is not None:
        return refusal(state, f"anonymous id {record.anonymous_id!r} is already linked to another user; "
                              "it is not moved")
    if state.aliases or (state.profile is not None and not state.profile.anonymous):
        return refusal(state, f"{record.anonymous_id!r} is a known user: two known users are never merged")
    exits = _exit_all(state, record.anonymous_id, now, {"cause": "identify", "into": record.user_id})
    merge = MergeRecord(record.anonymous_id, record.user_id, record.at, state.profile, record.traits)
    removed = ProfileRemoved(record.anonymous_id, "merged", now, into=record.user_id)
    return Outcome(UserState(alias_of=record.user_id), exits, False, None, feedback=(merge,), removed=removed)


def on_merge(state: UserState, record: MergeRecord, rules: Mapping[str, SegmentRule], now: datetime) -> Outcome:
    """At the known user's key: fold the anonymous profile in, once, and evaluate every rule on the result."""
    if record.anonymous_id in state.aliases:
        return unchanged(state)  # a replayed copy: merged already
    if state.alias_of is not None:
        return refusal(state, f"{record.user_id!r} is itself an alias of another user")
    if len(state.aliases) >= MAX_ALIASES:
        return refusal(state, f"{record.user_id!r} has {MAX_ALIASES} aliases already")
    profile = merge_profiles(state.profile, record.profile, record.user_id, record.traits)
    cause = {"cause": "identify", "anonymousId": record.anonymous_id}
    memberships, changes = _diff(state, profile, rules, now, cause, state.profile)
    return Outcome(replace(state, profile=profile, memberships=memberships,
                           aliases=[*state.aliases, record.anonymous_id]),
                   changes, True, _next_timer(profile, rules, now))


def on_forget(state: UserState, record: ForgetRecord, now: datetime) -> Outcome:
    """Delete the user: every membership exits, the store's rows go, then each alias's key is forgotten."""
    exits = _exit_all(state, record.user_id, now, {"cause": "deleted"})
    aliases = tuple(ForgetRecord(alias, record.at) for alias in state.aliases)
    return Outcome(UserState(), exits, False, None, feedback=aliases,
                   removed=ProfileRemoved(record.user_id, "deleted", now))


def on_record(state: UserState, record: KeyedInput, rules: Mapping[str, SegmentRule], now: datetime) -> Outcome:
    """Any keyed input but a probe (the operator answers those itself)."""
    if isinstance(record, UserEvent):
        return on_event(state, record, rules, now)
    if isinstance(record, ReevaluationRequest):
        return on_reevaluate(state, record, rules, now)
    if isinstance(record, IdentifyRecord):
        return on_identify(state, record, now)
    if isinstance(record, MergeRecord):
        return on_merge(state, record, rules, now)
    if isinstance(record, ForgetRecord):
        return on_forget(state, record, now)
    if isinstance(record, StaticMembership):
        return on_static(state, record, rules, now)
    raise TypeError(f"{type(record).__name__}: answered by the operator, not evaluated")


def on_static(state: UserState, record: StaticMembership, rules: Mapping[str, SegmentRule],
              now: datetime) -> Outcome:
    """The user joined or left a STATIC segment: keep it, and re-evaluate the rules that refer to it."""
    static = state.static | {record.segment_id} if record.change == "entered" else state.static - {record.segment_id}
    if static == state.static:
        return unchanged(state)  # a repeat
    updated = replace(state, static=static)
    if state.profile is None:  # nothing to evaluate yet; the first event will see it
        return Outcome(updated, [], False, None)
    rules = as_rule_set(rules)
    cause = {"cause": "membership", "segmentId": record.segment_id, "change": record.change}
    memberships, changes = _diff(updated, state.profile, rules, now, cause, state.profile,
                                 only=rules.affected([record.segment_id]), static_before=state.static)
    return Outcome(replace(updated, memberships=memberships), changes, False, None)


def on_reevaluate(state: UserState, request: ReevaluationRequest, rules: Mapping[str, SegmentRule],
                  now: datetime) -> Outcome:
    """Backfill of changed segments for this user, using the definitions the request carries (the
    broadcast side may not have them yet) unless the broadcast side already has a newer one. The
    segments referring to a changed one are evaluated again too."""
    profile = state.profile
    if profile is None:
        return Outcome(state, [], False, None)
    changes: list[MembershipChange] = []
    effective = as_rule_set(rules)
    for definition in request.segments:
        known = effective.get(definition.id)
        if definition.supersedes(known):
            effective = effective.replacing({definition.id: compile_definition(definition)})
        cause = {"cause": "definition", "segmentId": definition.id, "segmentVersion": definition.version}
        memberships, found = _diff(state, profile, effective, now, cause, only=effective.affected([definition.id]))
        state = replace(state, memberships=memberships)
        changes += found
    return Outcome(state, changes, False, _next_timer(profile, effective, now))


def on_timer(state: UserState, rules: Mapping[str, SegmentRule], now: datetime) -> Outcome:
    """A window may have passed: drop old history and re-evaluate with no new event."""
    if state.profile is None:
        return Outcome(state, [], False, None)
    rules = as_rule_set(rules)
    profile = prune_history(state.profile, now, rules.retention)
    memberships, changes = _diff(state, profile, rules, now, {"cause": "time"})
    return Outcome(replace(state, profile=profile, memberships=memberships), changes, False,
                   _next_timer(profile, rules, now))


def utc_from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)
