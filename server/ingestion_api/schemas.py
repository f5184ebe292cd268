"""What the Ingestion API accepts and answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from server.runtime.fields import ID_PATTERN, MAX_ID_CHARS, UserId

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 512 * 1024
MAX_BATCH_EVENTS = 500
MAX_FUTURE = timedelta(minutes=5)
MAX_PAST = timedelta(days=30)

SEED_EVENT: JsonDict = {
    "userId": "user123", "eventType": "purchase", "properties": {"amount": 1500, "category": "electronics"},
}


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_EVENT]})

    userId: UserId
    eventType: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_.\-]*$")
    properties: dict[str, Any] = Field(default_factory=dict, max_length=200)
    eventId: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                description="Your id for the event; a repeat within the window is not counted twice")
    timestamp: datetime | None = Field(default=None, description="When it happened; defaults to receive time")

    @field_validator("timestamp")
    @classmethod
    def _plausible(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        now = datetime.now(UTC)
        if value > now + MAX_FUTURE:
            raise ValueError("more than 5 minutes in the future")
        if value < now - MAX_PAST:
            raise ValueError("more than 30 days in the past")
        return value


class EventAccepted(BaseModel):
    eventId: str
    status: Literal["accepted", "duplicate"]


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class EventResult(BaseModel):
    index: int
    status: Literal["accepted", "duplicate", "rejected", "failed"]
    eventId: str | None = None
    errors: list[str] = Field(default_factory=list)


class BatchResult(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    failed: int
    results: list[EventResult]
