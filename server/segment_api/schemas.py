"""Request and response bodies of the Segment API, one schema per direction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from server.domain.records import MAX_VERSION
from server.domain.segment import SegmentStatus, SegmentType
from server.runtime.fields import NO_NUL, ApiModel, Name, UserId

SEED_RULES = {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]}


class SegmentCreate(ApiModel):
    name: Name = Field(examples=["High Value Users"])
    description: str = Field(default="", max_length=2000, pattern=NO_NUL, examples=["Users who spent more than $1000"])
    type: SegmentType = SegmentType.DYNAMIC
    status: SegmentStatus = SegmentStatus.ACTIVE
    rules: dict[str, Any] | None = Field(default=None, examples=[SEED_RULES],
                                         description="Rule tree; required for DYNAMIC segments")


class SegmentUpdate(ApiModel):
    name: Name | None = None
    description: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    status: SegmentStatus | None = None
    rules: dict[str, Any] | None = None
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                description="The version you read; a mismatch answers 409")


class SegmentPublic(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: str
    name: str
    description: str
    type: SegmentType
    status: SegmentStatus
    rules: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime
    warnings: list[str] = Field(default_factory=list, description="Rule parts that can never match")


class SegmentPage(ApiModel):
    items: list[SegmentPublic]
    total: int
    limit: int
    offset: int


class PreviewRequest(ApiModel):
    rules: dict[str, Any] = Field(examples=[SEED_RULES])
    sample_size: int = Field(default=10, ge=0, le=100)


class PreviewResult(ApiModel):
    matching: int
    scanned: int
    sample: list[str]
    warnings: list[str]


class StaticMembersChange(ApiModel):
    add: list[UserId] = Field(default_factory=list, max_length=10_000)
    remove: list[UserId] = Field(default_factory=list, max_length=10_000)


class MemberPublic(ApiModel):
    user_id: str
    segment_version: int
    entered_at: datetime
    source: str


class MemberPage(ApiModel):
    items: list[MemberPublic]
    next_cursor: str | None


class WindowCounts(ApiModel):
    last_hour: int
    last_day: int


class SegmentStats(ApiModel):
    segment_id: str
    size: int
    entered: WindowCounts
    exited: WindowCounts


BECAUSE = ("Why the user entered, as the rule engine said it: `cause` (event, time, definition, membership, identify) "
           "with its details, and `leaves`, the rule's conditions the cause flipped (path, observed value, result, "
           "`was`); null for a STATIC member")


class UserSegment(ApiModel):
    segment_id: str
    name: str
    segment_version: int
    entered_at: datetime
    because: dict[str, Any] | None = Field(default=None, description=BECAUSE)


RESOLVED_FROM = "The id asked by, when it is an anonymous id linked to this user; null when asked by the user's id"


class UserSegments(ApiModel):
    user_id: str = Field(description="The user answered for: the id asked by, or the user it is an alias of")
    resolved_from: str | None = Field(default=None, description=RESOLVED_FROM)
    segments: list[UserSegment]


class UserProfile(ApiModel):
    """A user's traits and aggregates as the rule engine last wrote them (without its internal state)."""

    user_id: str = Field(description="The user answered for: the id asked by, or the user it is an alias of")
    resolved_from: str | None = Field(default=None, description=RESOLVED_FROM)
    anonymous: bool = Field(description="Built only from events without a userId (a visitor not known yet)")
    aliases: list[str] = Field(description="The anonymous ids linked to this user, oldest link first")
    traits: dict[str, Any]
    total_spent: float
    purchase_count: int
    event_count: int
    first_seen: str | None = Field(description="ISO-8601, UTC")
    last_seen: str | None = Field(description="ISO-8601, UTC")
    event_counts: dict[str, int] = Field(description="Events per type")


class EventPending(ApiModel):
    """The event named by `after` is not in the user's profile yet; ask again (202)."""

    status: Literal["pending"] = "pending"
    detail: str = Field(examples=["event e-42 is not applied yet after 2.0 s"])
    user_id: str


MAX_OVERLAP_SEGMENTS = 10


class OverlapRequest(ApiModel):
    segment_ids: list[str] = Field(min_length=2, max_length=MAX_OVERLAP_SEGMENTS,
                                   description="2 to 10 distinct ids of live segments",
                                   examples=[["55959e25-4e18-4b05-abd7-0e75c104a8e6",
                                              "475e8654-9363-4115-bf6b-456bb0b25516"]])


class PairOverlapPublic(ApiModel):
    a: str
    b: str
    intersection: int = Field(description="Users who are members of both")


class OverlapPublic(ApiModel):
    sizes: dict[str, int] = Field(description="Members of each segment now, by id")
    intersection: int = Field(description="Users who are members of all of them")
    pairs: list[PairOverlapPublic] = Field(description="Every unordered pair, in the order the ids were given")


class HistoryPointPublic(ApiModel):
    at: datetime = Field(description="The hour's start, UTC")
    entered: int
    exited: int
    size: int = Field(description="Members at the end of the hour: the current size less the net changes after it")


class SegmentHistoryPublic(ApiModel):
    segment_id: str
    from_: datetime = Field(alias="from", description="The start of the range asked for, UTC")
    to: datetime = Field(description="The end of the range asked for, UTC")
    bucket: Literal["PT1H"] = "PT1H"
    points: list[HistoryPointPublic] = Field(description="Every hour that overlaps the range, oldest first")


class TraitValueCount(ApiModel):
    value: Any = Field(description="A value of the trait, as stored (any JSON but null)")
    count: int


class TraitBreakdownPublic(ApiModel):
    segment_id: str
    trait: str
    members: int
    values: list[TraitValueCount] = Field(description="The most common values, most first")
    other: int = Field(description="Members whose value is not among those listed")
    missing: int = Field(description="Members without the trait (no profile, no such trait, or null)")


class ExplanationPublic(ApiModel):
    """Why a user is, or is not, in a segment: the stored membership and its reason, next to the segment's rule
    evaluated now on the user's stored profile."""

    user_id: str = Field(description="The user answered for: the id asked by, or the user it is an alias of")
    resolved_from: str | None = Field(default=None, description=RESOLVED_FROM)
    segment_id: str
    segment_name: str
    member: bool = Field(description="Whether the profile store holds the membership (what every read answers)")
    entered_at: datetime | None = Field(description="When the membership began; null when not a member")
    evaluated_at: datetime = Field(description="The moment the rule was evaluated at, for windows")
    rule: dict[str, Any] | None = Field(description=(
        "The segment's rule in canonical form with `path` and `result` on every node, and on every leaf `value`, "
        "the value observed on the stored profile (`missing`: true when it lacks the field), and for a "
        "condition `operand`, the value it compares with (the rule's own `value`); null for a STATIC segment"))
    because: dict[str, Any] | None = Field(description=f"{BECAUSE}; null when not a member")
    note: str | None = Field(default=None, description=(
        "Set when `member` and `rule.result` disagree, or the segment is paused, saying what is not applied yet"))
