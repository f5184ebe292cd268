"""Which segments a profile belongs to, and what changed: the rule job's per-user decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from server.domain.profile import Profile
from server.domain.records import (
    MAX_VERSION,
    InvalidRecord,
    integer,
    json_object,
    optional_timestamp,
    timestamp,
    user_id,
    uuid_text,
)
from server.domain.rules import Predicate, Rule, Window, compile_rule, windows
from server.domain.timeutil import format_timestamp

Change = Literal["entered", "exited"]
# Who decided the change: the rule engine (a DYNAMIC segment's rule) or the Segment API (a STATIC
# segment's explicit members, already applied to the store when the record is published).
Source = Literal["rule", "static"]


@dataclass(frozen=True)
class SegmentRule:
    """An active dynamic segment, compiled once when its definition arrives."""

    segment_id: str
    version: int
    rule: Rule
    predicate: Predicate = field(compare=False)
    windows: frozenset[Window] = frozenset()  # time windows its behavioural conditions look through
    retention: timedelta = timedelta(0)  # how much event history it needs: its longest window

    @classmethod
    def build(cls, segment_id: str, version: int, rule: Rule) -> SegmentRule:
        looked_through = windows(rule)
        return cls(segment_id, version, rule, compile_rule(rule), looked_through,
                   max((within for _, within in looked_through), default=timedelta(0)))


@dataclass(frozen=True)
class MembershipDiff:
    entered: list[tuple[str, int]]
    exited: list[tuple[str, int]]
    current: dict[str, int]  # segment id -> version the user entered (or was last confirmed) at


def evaluate_memberships(
    profile: Profile, rules: Mapping[str, SegmentRule], current: Mapping[str, int], now: datetime
) -> MembershipDiff:
    """Evaluate every rule; a user stays a member across versions without a second `entered`.

    Memberships of segments no longer in `rules` (deleted or paused) are exited.
    """
    entered: list[tuple[str, int]] = []
    exited: list[tuple[str, int]] = []
    after: dict[str, int] = {}
    for segment_id, rule in rules.items():
        member = segment_id in current
        if rule.predicate(profile, now):
            after[segment_id] = rule.version
            if not member:
                entered.append((segment_id, rule.version))
        elif member:
            exited.append((segment_id, rule.version))
    exited += [(sid, version) for sid, version in current.items() if sid not in rules]
    return MembershipDiff(entered=entered, exited=exited, current=after)


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
        return body

    @classmethod
    def from_json(cls, data: Any) -> MembershipChange:
        record = json_object(data, "membership change")
        change = record.get("change")
        if change not in ("entered", "exited"):
            raise InvalidRecord(f"change: expected entered or exited, got {change!r}")
        source = record.get("source", "rule")
        if source not in ("rule", "static"):
            raise InvalidRecord(f"source: expected rule or static, got {source!r}")
        return cls(
            user_id=user_id(record),
            segment_id=uuid_text(record, "segmentId"),
            change=change,
            at=timestamp(record, "at"),
            segment_version=integer(record, "segmentVersion", MAX_VERSION),
            event_received_at=optional_timestamp(record, "eventReceivedAt"),
            source=source,
        )
