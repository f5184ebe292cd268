"""The records of the rule job's own topics, and one reader per topic that tells their kinds apart.

- keyed input (`user-events` and the job's re-evaluation topic, read as one stream keyed by user):
  a `UserEvent`, a `ReevaluationRequest` (backfill) or a `ProbeRecord` (readiness);
- rules input (the job's rules topic, broadcast): a `SegmentDefinition` or a `ProbeRecord`;
- output (`segment-membership`): a `MembershipOutput` (a change with the profile behind it) or the
  `ProbeEcho` that says both inputs flow.
The profile snapshots on `user-profiles` are `Profile.to_json()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.domain.events import UserEvent
from server.domain.membership import MembershipChange
from server.domain.profile import Profile
from server.domain.records import (
    MAX_COUNT,
    InvalidRecord,
    integer,
    json_object,
    number,
    optional_timestamp,
    text,
    user_id,
    whole,
)
from server.domain.segment import SegmentDefinition

PROBE_ID = "__probe__"  # the probe's key on both inputs, and its entry in the job's broadcast state
_REEVALUATE, _PROBE = "reevaluate", "probe"  # the `kind` of the records on the re-evaluation topic


@dataclass(frozen=True, slots=True)
class ReevaluationRequest:
    """Evaluate these segments for this user now (the feeder's backfill after they changed)."""

    user_id: str
    segments: tuple[SegmentDefinition, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": _REEVALUATE, "userId": self.user_id, "segments": [d.to_json() for d in self.segments]}

    @classmethod
    def from_json(cls, data: Any) -> ReevaluationRequest:
        record = json_object(data, "re-evaluation request")
        segments = record.get("segments")
        if not isinstance(segments, Sequence) or isinstance(segments, str):
            raise InvalidRecord("segments: expected a list of segment definitions")
        return cls(user_id=user_id(record), segments=tuple(SegmentDefinition.from_json(d) for d in segments))


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """A readiness token, sent on both inputs until the job echoes it (see `flinkjob.probe`)."""

    token: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": _PROBE, "userId": PROBE_ID, "token": self.token}

    @classmethod
    def from_json(cls, data: Any) -> ProbeRecord:
        return cls(token=text(json_object(data, "probe"), "token"))


@dataclass(frozen=True, slots=True)
class ProbeEcho:
    """The job's answer to a probe whose token reached it on both inputs."""

    token: str

    def to_json(self) -> dict[str, Any]:
        return {"probe": self.token}

    @classmethod
    def from_json(cls, data: Any) -> ProbeEcho:
        return cls(token=text(json_object(data, "probe echo"), "probe"))


@dataclass(frozen=True, slots=True)
class MembershipOutput:
    """One change on `segment-membership`, with the profile that caused it when an event did.

    The profile travels with the change so the store never shows a membership before the profile
    behind it, whatever order the writer reads its two topics in.
    """

    change: MembershipChange
    profile: Profile | None = None

    def to_json(self, profile_json: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`profile_json` is the profile's JSON when the caller already has it (one snapshot, many changes)."""
        body = self.change.to_json()
        if self.profile is not None:
            body["profile"] = profile_json if profile_json is not None else self.profile.to_json()
        return body

    @classmethod
    def from_json(cls, data: Any) -> MembershipOutput:
        record = json_object(data, "membership change")
        profile = record.get("profile")
        return cls(MembershipChange.from_json(record), profile_from_json(profile) if profile is not None else None)


KeyedInput = UserEvent | ReevaluationRequest | ProbeRecord
RulesInput = SegmentDefinition | ProbeRecord
MembershipRecord = MembershipOutput | ProbeEcho


def keyed_input(data: Any) -> KeyedInput:
    """A record of the keyed input: events carry no `kind`, the feeder's and the probe's records do."""
    kind = json_object(data, "record").get("kind")
    if kind is None:
        return UserEvent.from_json(data)
    if kind == _REEVALUATE:
        return ReevaluationRequest.from_json(data)
    if kind == _PROBE:
        return ProbeRecord.from_json(data)
    raise InvalidRecord(f"kind: expected {_REEVALUATE}, {_PROBE} or none (an event), got {kind!r}")


def rules_input(data: Any) -> RulesInput:
    """A record of the rules input: a segment definition, or a probe."""
    return ProbeRecord.from_json(data) if json_object(data, "record").get("kind") == _PROBE \
        else SegmentDefinition.from_json(data)


def membership_record(data: Any) -> MembershipRecord:
    """A record of `segment-membership`: a change, or the echo of a probe."""
    return ProbeEcho.from_json(data) if "probe" in json_object(data, "record") else MembershipOutput.from_json(data)


def profile_from_json(data: Any) -> Profile:
    """A profile snapshot (on `user-profiles`, or inside a change), checked field by field: unlike the
    job's own state, which `Profile.from_json` reads as it wrote it, a snapshot crossed a topic."""
    record = json_object(data, "profile")
    user_id(record)
    integer(record, "purchaseCount", MAX_COUNT, default=0)
    integer(record, "eventCount", MAX_COUNT, default=0)
    if not number(record.get("totalSpent", 0.0)):
        raise InvalidRecord("totalSpent: expected a number")
    optional_timestamp(record, "firstSeen")
    optional_timestamp(record, "lastSeen")
    json_object(record.get("traits") or {}, "traits")
    counts = json_object(record.get("eventCounts") or {}, "eventCounts")
    if not all(whole(n, MAX_COUNT) for n in counts.values()):
        raise InvalidRecord(f"eventCounts: expected integers from 0 to {MAX_COUNT}")
    for kind, entries in json_object(record.get("history") or {}, "history").items():
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 and all(map(number, e))
                                                    for e in entries):
            raise InvalidRecord(f"history.{kind}: expected a list of [time, amount]")
    return Profile.from_json(dict(record))
