"""Which segments a profile belongs to, and what changed: the rule job's per-user decision."""

from __future__ import annotations

from collections.abc import Container, ItemsView, Iterable, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from server.domain.profile import HISTORY_LOOKBACK, Profile
from server.domain.records import (
    MAX_VERSION,
    integer,
    json_object,
    one_of,
    optional_timestamp,
    timestamp,
    user_id,
    uuid_text,
)
from server.domain.rules import (
    Predicate,
    Probes,
    Rule,
    Window,
    compile_leaves,
    compile_rule,
    flipped,
    leaf_results,
    references,
    required_retention,
    windows,
)
from server.domain.timeutil import format_timestamp

Change = Literal["entered", "exited"]
# Who decided the change: the rule engine (a DYNAMIC segment's rule) or the Segment API (a STATIC
# segment's explicit members, already applied to the store when the record is published).
Source = Literal["rule", "static"]
MAX_REASON_LEAVES = 20


@dataclass(frozen=True)
class SegmentRule:
    """An active dynamic segment, compiled once when its definition arrives."""

    segment_id: str
    version: int
    rule: Rule
    predicate: Predicate = field(compare=False)
    windows: frozenset[Window] = frozenset()  # edges in time its behavioural conditions look at
    retention: timedelta = timedelta(0)  # how much event history it needs at least: its longest window
    references: frozenset[str] = frozenset()  # the segments it refers to
    leaves: Probes = ()  # its leaves with their paths, probed for the reason of each change

    @classmethod
    def build(cls, segment_id: str, version: int, rule: Rule) -> SegmentRule:
        return cls(segment_id, version, rule, compile_rule(rule), windows(rule), required_retention(rule),
                   references(rule), compile_leaves(rule))


class RuleSet(Mapping[str, SegmentRule]):
    """The live rules in evaluation order, a referenced segment before those referring to it, with what the job
    derives from them once: how long to keep history (`lookback`, or a longer window a rule needs), the edges in
    time they look at, and which segments depend on which.

    The Segment API refuses reference cycles; two updates racing each other could still make one, and then the
    segments in it are evaluated in the order they were given (each sees the other's previous membership).
    """

    def __init__(self, rules: Mapping[str, SegmentRule], lookback: timedelta = HISTORY_LOOKBACK) -> None:
        self._rules = _in_dependency_order(rules)
        self.lookback = lookback
        self.retention = max([lookback, *(r.retention for r in rules.values())])
        self.windows: frozenset[Window] = frozenset().union(*(r.windows for r in rules.values()))
        self.referring = any(r.references for r in rules.values())  # whether any rule refers to a segment
        self._referrers: dict[str, set[str]] = {}
        for rule in rules.values():
            for target in rule.references:
                self._referrers.setdefault(target, set()).add(rule.segment_id)

    def __getitem__(self, segment_id: str) -> SegmentRule:
        return self._rules[segment_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    # the dict's own views and lookups: Mapping's generic ones cost a Python call per item on the hot path
    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._rules

    def get(self, segment_id: str, default: Any = None) -> Any:
        return self._rules.get(segment_id, default)

    def items(self) -> ItemsView[str, SegmentRule]:
        return self._rules.items()

    def values(self) -> ValuesView[SegmentRule]:
        return self._rules.values()

    def affected(self, segment_ids: Iterable[str]) -> set[str]:
        """These segments and every segment that refers to one of them, directly or not."""
        found, todo = set(segment_ids), list(segment_ids)
        while todo:
            for referrer in self._referrers.get(todo.pop(), ()):
                if referrer not in found:
                    found.add(referrer)
                    todo.append(referrer)
        return found

    def replacing(self, replacements: Mapping[str, SegmentRule | None]) -> RuleSet:
        """The rule set with these segments' rules replaced (None: the segment is not live)."""
        rules = {k: v for k, v in self._rules.items() if k not in replacements}
        rules.update({k: v for k, v in replacements.items() if v is not None})
        return RuleSet(rules, self.lookback)


def as_rule_set(rules: Mapping[str, SegmentRule]) -> RuleSet:
    return rules if isinstance(rules, RuleSet) else RuleSet(rules)


def _in_dependency_order(rules: Mapping[str, SegmentRule]) -> dict[str, SegmentRule]:
    ordered: dict[str, SegmentRule] = {}
    visiting: set[str] = set()

    def visit(segment_id: str) -> None:
        if segment_id in ordered or segment_id in visiting or segment_id not in rules:
            return  # done, a cycle (broken here), or not a live rule
        visiting.add(segment_id)
        for target in sorted(rules[segment_id].references):
            visit(target)
        visiting.discard(segment_id)
        ordered[segment_id] = rules[segment_id]

    for segment_id in rules:
        visit(segment_id)
    return ordered


@dataclass(frozen=True)
class MembershipDiff:
    entered: list[tuple[str, int]]
    exited: list[tuple[str, int]]
    current: dict[str, int]  # segment id -> version the user entered (or was last confirmed) at


def evaluate_memberships(
    profile: Profile, rules: Mapping[str, SegmentRule], current: Mapping[str, int], now: datetime,
    static: Container[str] = frozenset(), only: Container[str] | None = None,
) -> MembershipDiff:
    """Evaluate every rule (or the segments in `only`) in order; a user stays a member across versions without a
    second `entered`. A segment reference sees `static` (the STATIC segments the user is in) and the memberships
    as this pass leaves them, so a change to a referenced segment reaches the segments referring to it at once.

    Memberships of segments no longer in `rules` (deleted or paused) are exited.
    """
    entered: list[tuple[str, int]] = []
    exited: list[tuple[str, int]] = []
    after = {sid: v for sid, v in current.items() if only is not None and sid not in only}
    referring = rules.referring if isinstance(rules, RuleSet) else any(r.references for r in rules.values())
    # only a rule set with references needs the memberships as the pass goes (the usual one has none)
    member_of = _Membership(static, {sid for sid in current if sid in rules}) if referring else _NO_MEMBERSHIPS
    for segment_id, rule in rules.items():
        if only is not None and segment_id not in only:
            continue
        member = segment_id in current
        if rule.predicate(profile, now, member_of):
            after[segment_id] = rule.version
            if referring:
                member_of.dynamic.add(segment_id)
            if not member:
                entered.append((segment_id, rule.version))
        else:
            if referring:
                member_of.dynamic.discard(segment_id)
            if member:
                exited.append((segment_id, rule.version))
    exited += [(sid, v) for sid, v in current.items() if sid not in rules and (only is None or sid in only)]
    return MembershipDiff(entered=entered, exited=exited, current=after)


class _Membership(Container[str]):
    """The segments a user is in while a pass evaluates them: STATIC ones, and dynamic ones as decided so far."""

    __slots__ = ("dynamic", "static")

    def __init__(self, static: Container[str], dynamic: set[str]) -> None:
        self.static, self.dynamic = static, dynamic

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self.dynamic or segment_id in self.static


_NO_MEMBERSHIPS = _Membership(frozenset(), set())  # what rules without references are given (never read)


def reason(rule: SegmentRule | None, cause: Mapping[str, Any], before: Profile | None, after: Profile,
           now: datetime, was_in: Container[str], now_in: Container[str]) -> dict[str, Any]:
    """Why a membership changed: `cause` (the event, the clock, a new definition, ...) and the rule's leaves
    whose result it flipped (at most `MAX_REASON_LEAVES`); no leaves when the segment itself went away."""
    if rule is None:
        return dict(cause)
    old = leaf_results(rule.leaves, before, now, was_in) if before is not None else None
    return {**cause, "leaves": flipped(old, leaf_results(rule.leaves, after, now, now_in))[:MAX_REASON_LEAVES]}


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """One record on `segment-membership`."""

    user_id: str
    segment_id: str
    change: Change
    at: datetime
    segment_version: int
    event_received_at: datetime | None = None  # for end-to-end latency; None for timers and backfill
    source: Source = "rule"
    # why: {"cause": "event" | "time" | "definition" | "membership" | "identify" | ..., and the leaves it flipped}
    because: Mapping[str, Any] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "userId": self.user_id,
            "segmentId": self.segment_id,
            "change": self.change,
            "at": format_timestamp(self.at),
            "segmentVersion": self.segment_version,
        }
        if self.event_received_at is not None:
            body["eventReceivedAt"] = format_timestamp(self.event_received_at)
        if self.source != "rule":  # left out for the rule engine's changes: records as they were before
            body["source"] = self.source
        if self.because is not None:
            body["because"] = dict(self.because)
        return body

    @classmethod
    def from_json(cls, data: Any) -> MembershipChange:
        record = json_object(data, "membership change")
        return cls(
            user_id=user_id(record),
            segment_id=uuid_text(record, "segmentId"),
            change=one_of(record, "change", get_args(Change)),
            at=timestamp(record, "at"),
            segment_version=integer(record, "segmentVersion", MAX_VERSION),
            event_received_at=optional_timestamp(record, "eventReceivedAt"),
            source=one_of(record, "source", get_args(Source), default="rule"),
            because=json_object(record["because"], "because") if record.get("because") is not None else None,
        )
