"""A segment's definition as it travels from the Segment API to the rule job, and which version wins.

The Segment API writes it to its outbox, the relay publishes it on `segment-rules` (a deleted
segment as a tombstone, which the feeder turns back into a definition with `deleted` set), the
feeder republishes it on the job's rules topic and inside re-evaluation requests, and the job
keeps the newest of each segment in broadcast state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from server.domain.records import MAX_VERSION, InvalidRecord, integer, json_object, optional_timestamp, uuid_text
from server.domain.timeutil import format_timestamp

E = TypeVar("E", bound=StrEnum)


class SegmentType(StrEnum):
    DYNAMIC = "DYNAMIC"
    STATIC = "STATIC"


class SegmentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


class Versioned(Protocol):
    """Anything that holds one version of a segment (a definition, or the job's compiled rule)."""

    @property
    def version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    """One version of a segment's definition, or (with `deleted`) the mark that the segment is gone."""

    id: str
    version: int = 0  # a delete carries none: it always wins
    name: str = ""
    type: SegmentType = SegmentType.DYNAMIC
    status: SegmentStatus = SegmentStatus.ACTIVE
    rules: Mapping[str, Any] | None = None  # the rule tree as the rule language reads it (`parse_rule`)
    updated_at: datetime | None = None
    deleted: bool = False

    @classmethod
    def tombstone(cls, segment_id: str) -> SegmentDefinition:
        """The definition of a deleted segment."""
        return cls(id=segment_id, deleted=True)

    @property
    def active(self) -> bool:
        """Only active dynamic segments with a rule are evaluated; members of any other one exit."""
        return (not self.deleted and self.type is SegmentType.DYNAMIC and self.status is SegmentStatus.ACTIVE
                and self.rules is not None)

    def supersedes(self, held: SegmentDefinition | Versioned | None) -> bool:
        """Whether this definition replaces `held`, the one known so far for the same segment.

        A delete always wins and nothing replaces a delete (a segment id is never used again); otherwise
        only a newer version does, so an older definition arriving late and a repeat of the same version
        change nothing.
        """
        if held is None or self.deleted:
            return True
        if isinstance(held, SegmentDefinition) and held.deleted:
            return False
        return self.version > held.version

    def to_json(self) -> dict[str, Any]:
        if self.deleted:
            return {"id": self.id, "deleted": True}
        body: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type.value,
                                "status": self.status.value, "version": self.version,
                                "rules": dict(self.rules) if self.rules is not None else None}
        return body if self.updated_at is None else {**body, "updatedAt": format_timestamp(self.updated_at)}

    @classmethod
    def from_json(cls, data: Any) -> SegmentDefinition:
        record = json_object(data, "definition")
        segment_id = uuid_text(record, "id")
        deleted = record.get("deleted", False)
        if not isinstance(deleted, bool):
            raise InvalidRecord("deleted: expected true or false")
        if deleted:
            return cls.tombstone(segment_id)
        name = record.get("name", "")
        if not isinstance(name, str):
            raise InvalidRecord("name: expected a string")
        rules = record.get("rules")
        if rules is not None:
            rules = json_object(rules, "rules")
        return cls(id=segment_id, version=integer(record, "version", MAX_VERSION), name=name,
                   type=_member(SegmentType, record, "type"), status=_member(SegmentStatus, record, "status"),
                   rules=rules, updated_at=optional_timestamp(record, "updatedAt"))


def _member(enum: type[E], record: Mapping[str, Any], name: str) -> E:
    value = record.get(name)
    if isinstance(value, str) and value in enum.__members__.values():
        return enum(value)
    raise InvalidRecord(f"{name}: expected one of {', '.join(enum)}, got {value!r}")
