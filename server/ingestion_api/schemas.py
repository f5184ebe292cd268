"""What the Ingestion API accepts and answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic_core import InitErrorDetails, PydanticCustomError

from server.runtime.fields import ID_PATTERN, MAX_ID_CHARS, UserId

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 512 * 1024
MAX_BATCH_EVENTS = 500
MAX_FUTURE = timedelta(minutes=5)
MAX_PAST = timedelta(days=30)

# Letters, digits and _ . - in words joined by single spaces: Segment's names ("Order Completed") fit too
EVENT_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]*( [A-Za-z0-9_.\-]+)*$"
EventType = Annotated[str, Field(min_length=1, max_length=64, pattern=EVENT_TYPE_PATTERN)]
Properties = Annotated[dict[str, Any], Field(max_length=200)]
EventId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]

SEED_EVENT: JsonDict = {
    "userId": "user123", "eventType": "purchase", "properties": {"amount": 1500, "category": "electronics"},
}


def field_error(model: str, field: str, message: str) -> ValidationError:
    """A validation error located at `field`, for a rule that involves more than one field."""
    return ValidationError.from_exception_data(model, [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(field,), input=None)])


def plausible_time(value: datetime) -> datetime:
    """The time in UTC (naive means UTC); ValueError when it is too far in the future or the past."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    now = datetime.now(UTC)
    if value > now + MAX_FUTURE:
        raise ValueError("more than 5 minutes in the future")
    if value < now - MAX_PAST:
        raise ValueError("more than 30 days in the past")
    return value


class EventIn(BaseModel):
    """One event: its user by `userId`, by `anonymousId` (a visitor not known yet), or both (which links them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_EVENT]})

    userId: UserId | None = None
    anonymousId: UserId | None = Field(default=None, description="A visitor's id before they are known; with a "
                                       "userId too, it is linked to that user from now on")
    eventType: EventType
    properties: Properties = Field(default_factory=dict)
    eventId: EventId | None = Field(
        default=None, description="Your id for the event; a repeat within the window is not counted twice")
    timestamp: datetime | None = Field(default=None, description="When it happened; defaults to receive time")

    @field_validator("timestamp")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        return None if value is None else plausible_time(value)

    @model_validator(mode="after")
    def _names_a_user(self) -> EventIn:
        if self.userId is None and self.anonymousId is None:
            raise field_error("EventIn", "userId", "userId or anonymousId is required")
        return self


class IdentityOutcome(BaseModel):
    """What an event carrying both ids did to them: linked now, linked before, or not linked (and why)."""

    status: Literal["linked", "already linked", "not linked"]
    detail: str | None = None


class EventAccepted(BaseModel):
    eventId: str
    status: Literal["accepted", "duplicate"]
    userId: str | None = None
    anonymousId: str | None = None
    identity: IdentityOutcome | None = None


class IdentifyIn(BaseModel):
    """`anonymousId` is `userId` from now on: the visitor's earlier events and later ones count for the user."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"userId": "user123", "anonymousId": "anon-42", "traits": {"plan": "pro"}}]})

    userId: UserId
    anonymousId: UserId
    traits: Properties = Field(default_factory=dict)

    @model_validator(mode="after")
    def _two_ids(self) -> IdentifyIn:
        if self.userId == self.anonymousId:
            raise field_error("IdentifyIn", "anonymousId", "must differ from userId")
        return self


class IdentifyAccepted(BaseModel):
    userId: str
    anonymousId: str
    status: Literal["linked", "already linked"]


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class EventResult(BaseModel):
    index: int
    status: Literal["accepted", "duplicate", "rejected", "failed"]
    eventId: str | None = None
    errors: list[str] = Field(default_factory=list)
    identity: IdentityOutcome | None = None


class BatchResult(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    failed: int
    results: list[EventResult]
