"""Request and response bodies of the Communication API, one schema per direction."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field
from pydantic.alias_generators import to_camel

from server.runtime.fields import NO_NUL, ApiModel, Name, ResourceId


class Channel(StrEnum):
    EMAIL = "EMAIL"


class CampaignStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    SENDING = "SENDING"
    QUEUED = "QUEUED"
    ACTIVE = "ACTIVE"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


class MessageTemplateIn(ApiModel):
    subject: str = Field(min_length=1, pattern=NO_NUL, examples=["A thank-you for {{ firstName | default('you') }}"])
    body: str = Field(min_length=1, pattern=NO_NUL, examples=["You have spent ${{ totalSpent }} with us."])


class ScheduleAt(ApiModel):
    at: AwareDatetime = Field(description="When to send, with a time zone (ISO-8601)")


class CampaignCreate(ApiModel):
    name: Name = Field(examples=["VIP thank-you"])
    segment_id: ResourceId = Field(examples=["3f6c…"])
    channel: Channel = Channel.EMAIL
    template: MessageTemplateIn
    schedule: Literal["now", "on_enter"] | ScheduleAt = Field(
        default="now", description='"now", "on_enter" (when a user enters the segment), or {"at": time}')


class DeliveryCounts(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    queued: int = Field(description="Jobs on email-jobs not delivered yet (including those being sent)")
    sent: int
    failed: int
    skipped: int = Field(description="Opted out (emailOptOut) or without an email address")
    cancelled: int


class CampaignPublic(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: str
    name: str
    segment_id: str
    channel: Channel
    template: MessageTemplateIn
    schedule: str = Field(description="now | at | on_enter")
    send_at: datetime | None
    status: CampaignStatus
    audience_size: int | None = Field(description="Members when the fan-out ran (none for on_enter)")
    counts: DeliveryCounts
    error: str | None
    created_at: datetime
    updated_at: datetime


class CampaignPage(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    items: list[CampaignPublic]
    total: int
    limit: int
    offset: int


class DeliveryPublic(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    user_id: str
    email: str | None
    status: str
    reason: str | None
    attempts: int
    updated_at: datetime


class DeliveryPage(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    items: list[DeliveryPublic]
    next_cursor: str | None
