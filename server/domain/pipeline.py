"""The records of the rule job's own topics, and one reader per topic that tells their kinds apart.

- keyed input (`user-events` and the job's feedback topic, read as one stream keyed by user):
  a `UserEvent`, a `ReevaluationRequest` (backfill), a `ProbeRecord` (readiness), and identity's
  records: an `IdentifyRecord` (keyed by the anonymous id), the `MergeRecord` the job sends itself
  (keyed by the known user) and a `ForgetRecord` (delete the user); and a `StaticMembership` (the
  Segment API put the user into a STATIC segment, or out of one);
- rules input (the job's rules topic, broadcast): a `SegmentDefinition` or a `ProbeRecord`;
- output (`segment-membership`): a `MembershipOutput` (a change with the profile behind it), the
  `ProbeEcho` that says both inputs flow, or a `ProfileRemoved` (the user was deleted or merged:
  the store drops their rows), which follows that user's exits.
The profile snapshots on `user-profiles` are `Profile.to_json()`, or the same `ProfileRemoved`
(after that user's last snapshot).

A record routes to its user by `key` when it has one, else `userId`, else `anonymousId` (`record_key`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from server.domain.events import UserEvent
from server.domain.membership import Change, MembershipChange
from server.domain.profile import Profile
from server.domain.records import (
    MAX_COUNT,
    InvalidRecord,
    integer,
    json_object,
    number,
    one_of,
    optional_timestamp,
    text,
    timestamp,
    user_id,
    uuid_text,
    whole,
)
from server.domain.segment import SegmentDefinition
from server.domain.timeutil import format_timestamp

PROBE_ID = "__probe__"  # the probe's key on both inputs, and its entry in the job's broadcast state
_REEVALUATE, _PROBE = "reevaluate", "probe"  # the `kind` of the records on the re-evaluation topic
_IDENTIFY, _MERGE, _FORGET, _STATIC = "identify", "merge", "forget", "static"
MAX_ALIASES = 100  # anonymous ids linked to one user
Removal = Literal["deleted", "merged"]


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

    def to_json(self, profile_json: Mapping[str, Any] | Any | None = None) -> dict[str, Any]:
        """`profile_json` is the profile's JSON when the caller already has it (one snapshot, many changes), or its
        encoding as an `orjson.Fragment`."""
        body = self.change.to_json()
        if self.profile is not None:
            body["profile"] = profile_json if profile_json is not None else self.profile.to_json()
        return body

    @classmethod
    def from_json(cls, data: Any) -> MembershipOutput:
        record = json_object(data, "membership change")
        profile = record.get("profile")
        return cls(MembershipChange.from_json(record), profile_from_json(profile) if profile is not None else None)


def _traits(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(json_object(record.get("traits") or {}, "traits"))


@dataclass(frozen=True, slots=True)
class IdentifyRecord:
    """`anonymous_id` is `user_id` from now on. Sent keyed by the anonymous id once the store has the link,
    so it follows that id's earlier events on their partition: each of them is counted before the merge."""

    anonymous_id: str
    user_id: str
    at: datetime
    traits: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": _IDENTIFY, "key": self.anonymous_id, "anonymousId": self.anonymous_id,
                "userId": self.user_id, "traits": self.traits, "at": format_timestamp(self.at)}

    @classmethod
    def from_json(cls, data: Any) -> IdentifyRecord:
        record = json_object(data, "identify")
        return cls(anonymous_id=user_id(record, "anonymousId"), user_id=user_id(record),
                   at=timestamp(record, "at"), traits=_traits(record))


@dataclass(frozen=True, slots=True)
class MergeRecord:
    """The anonymous id's profile (None if it had none), moving to the known user: the job sends it to
    itself on the feedback topic, keyed by the known user, when it applies an identify."""

    anonymous_id: str
    user_id: str
    at: datetime
    profile: Profile | None = None
    traits: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": _MERGE, "key": self.user_id, "anonymousId": self.anonymous_id, "userId": self.user_id,
                "profile": self.profile.to_json() if self.profile is not None else None,
                "traits": self.traits, "at": format_timestamp(self.at)}

    @classmethod
    def from_json(cls, data: Any) -> MergeRecord:
        record = json_object(data, "merge")
        profile = record.get("profile")
        return cls(anonymous_id=user_id(record, "anonymousId"), user_id=user_id(record), at=timestamp(record, "at"),
                   profile=profile_from_json(profile) if profile is not None else None, traits=_traits(record))


@dataclass(frozen=True, slots=True)
class ForgetRecord:
    """Delete this user: memberships exit, the store's rows and the job's state go (GDPR erasure)."""

    user_id: str
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"kind": _FORGET, "key": self.user_id, "userId": self.user_id, "at": format_timestamp(self.at)}

    @classmethod
    def from_json(cls, data: Any) -> ForgetRecord:
        record = json_object(data, "forget")
        return cls(user_id=user_id(record), at=timestamp(record, "at"))


@dataclass(frozen=True, slots=True)
class StaticMembership:
    """A user joined or left a STATIC segment (the Segment API decides those): the job keeps the user's STATIC
    segments for the rules that refer to them, and re-evaluates those rules at once."""

    user_id: str
    segment_id: str
    change: Change
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"kind": _STATIC, "userId": self.user_id, "segmentId": self.segment_id, "change": self.change,
                "at": format_timestamp(self.at)}

    @classmethod
    def from_json(cls, data: Any) -> StaticMembership:
        record = json_object(data, "static membership")
        return cls(user_id=user_id(record), segment_id=uuid_text(record, "segmentId"),
                   change=one_of(record, "change", get_args(Change)), at=timestamp(record, "at"))


@dataclass(frozen=True, slots=True)
class ProfileRemoved:
    """On both outputs, after the user's last change and snapshot: the store drops the user's profile and
    memberships; for `deleted` its aliases as well (`merged`: the id lives on as an alias of `into`)."""

    user_id: str
    reason: Removal
    at: datetime
    into: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = {"removed": self.reason, "userId": self.user_id, "at": format_timestamp(self.at)}
        return body if self.into is None else {**body, "into": self.into}

    @classmethod
    def from_json(cls, data: Any) -> ProfileRemoved:
        record = json_object(data, "removal")
        reason = one_of(record, "removed", get_args(Removal))
        into = user_id(record, "into") if reason == "merged" else None
        return cls(user_id=user_id(record), reason=reason, at=timestamp(record, "at"), into=into)


KeyedInput = (UserEvent | ReevaluationRequest | ProbeRecord | IdentifyRecord | MergeRecord | ForgetRecord
              | StaticMembership)
RulesInput = SegmentDefinition | ProbeRecord
MembershipRecord = MembershipOutput | ProbeEcho | ProfileRemoved
ProfileRecord = Profile | ProfileRemoved
_KINDS: dict[str, Any] = {_REEVALUATE: ReevaluationRequest, _PROBE: ProbeRecord, _IDENTIFY: IdentifyRecord,
                          _MERGE: MergeRecord, _FORGET: ForgetRecord, _STATIC: StaticMembership}


def record_key(data: Any) -> str | None:
    """The user a keyed-input record is for: its `key`, else its `userId`, else its `anonymousId`."""
    if not isinstance(data, Mapping):
        return None
    for name in ("key", "userId", "anonymousId"):
        value = data.get(name)
        if isinstance(value, str):
            return value
    return None


def keyed_input(data: Any) -> KeyedInput:
    """A record of the keyed input: events carry no `kind`; the feeder's, the probe's and identity's do."""
    kind = json_object(data, "record").get("kind")
    if kind is None:
        return UserEvent.from_json(data)
    reader = _KINDS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise InvalidRecord(f"kind: expected one of {', '.join(_KINDS)} or none (an event), got {kind!r}")
    return reader.from_json(data)  # type: ignore[no-any-return]


def rules_input(data: Any) -> RulesInput:
    """A record of the rules input: a segment definition, or a probe."""
    return ProbeRecord.from_json(data) if json_object(data, "record").get("kind") == _PROBE \
        else SegmentDefinition.from_json(data)


def membership_record(data: Any) -> MembershipRecord:
    """A record of `segment-membership`: a change, the echo of a probe, or a user's removal."""
    record = json_object(data, "record")
    if "probe" in record:
        return ProbeEcho.from_json(record)
    return ProfileRemoved.from_json(record) if "removed" in record else MembershipOutput.from_json(record)


def profile_record(data: Any) -> ProfileRecord:
    """A record of `user-profiles`: a snapshot, or a user's removal."""
    record = json_object(data, "record")
    return ProfileRemoved.from_json(record) if "removed" in record else profile_from_json(record)


def _history_entry(entry: Any) -> bool:
    """[time, properties] (or [time, amount], as entries were kept before they held properties)."""
    return isinstance(entry, list) and len(entry) == 2 and number(entry[0]) and (
        isinstance(entry[1], Mapping) or number(entry[1]))


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
        if not isinstance(entries, list) or not all(_history_entry(e) for e in entries):
            raise InvalidRecord(f"history.{kind}: expected a list of [time, properties]")
    for kind, times in json_object(record.get("eventTimes") or {}, "eventTimes").items():
        if not (isinstance(times, list) and len(times) == 2 and all(map(number, times))):
            raise InvalidRecord(f"eventTimes.{kind}: expected [first, last] times")
    recent = record.get("recentEvents") or []
    if not isinstance(recent, list) or not all(isinstance(i, str) for i in recent):
        raise InvalidRecord("recentEvents: expected a list of event ids")
    return Profile.from_json(dict(record))
