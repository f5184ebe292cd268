"""Request and response bodies of the Communication API, one schema per direction."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from server.domain.email import FrequencyCap, QuietHours, parse_clock, zone
from server.runtime.fields import NO_NUL, ApiModel, Name, ResourceId


class Channel(StrEnum):
    EMAIL = "EMAIL"


class CampaignStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    SENDING = "SENDING"
    COMPLETED = "COMPLETED"
    ACTIVE = "ACTIVE"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


class MessageTemplateIn(ApiModel):
    subject: str = Field(min_length=1, pattern=NO_NUL, examples=["A thank-you for {{ firstName | default('you') }}"])
    body: str = Field(min_length=1, pattern=NO_NUL, examples=["You have spent ${{ totalSpent }} with us."],
                      description="The text part; `{{ unsubscribe_url }}` is the recipient's one-click link")
    body_html: str | None = Field(default=None, min_length=1, pattern=NO_NUL,
                                  examples=["<p>Thank you, {{ firstName }}.</p><a href='{{ unsubscribe_url }}'>"
                                            "Unsubscribe</a>"],
                                  description="An HTML part (the mail is then multipart/alternative), autoescaped")


class FrequencyCapIn(ApiModel):
    max: int = Field(ge=1, le=10_000, description="Mails per address, from any campaign…")
    within: str = Field(examples=["P1D"], max_length=32, description="…within this ISO-8601 duration before now")

    @field_validator("within")
    @classmethod
    def _readable(cls, value: str) -> str:
        FrequencyCap.parse(1, value)  # ValueError: a 422 naming the field
        return value

    def cap(self) -> FrequencyCap:
        return FrequencyCap.parse(self.max, self.within)


CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietHoursIn(ApiModel):
    start: str = Field(pattern=CLOCK, examples=["21:00"], description="Local time (HH:MM) mail stops")
    end: str = Field(pattern=CLOCK, examples=["08:00"], description="Local time (HH:MM) mail resumes")
    timezone: str = Field(default="UTC", max_length=64, examples=["Europe/Paris"],
                          description="For recipients without a valid `timezone` trait (IANA name)")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if zone(value) is None:
            raise ValueError(f"'{value}' is not an IANA time zone such as Europe/Paris")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursIn:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the window would be empty")
        return self

    def hours(self) -> QuietHours:
        return QuietHours(parse_clock(self.start), parse_clock(self.end), self.timezone)


class ScheduleAt(ApiModel):
    at: AwareDatetime = Field(description="When to send, with a time zone (ISO-8601)")


class CampaignCreate(ApiModel):
    name: Name = Field(examples=["VIP thank-you"])
    segment_id: ResourceId = Field(examples=["3f6c…"])
    channel: Channel = Channel.EMAIL
    template: MessageTemplateIn
    schedule: Literal["now", "on_enter"] | ScheduleAt = Field(
        default="now", description='"now", "on_enter" (when a user enters the segment), or {"at": time}')
    frequency_cap: FrequencyCapIn | None = Field(
        default=None, description="Skip a recipient who already got `max` mails from any campaign within "
                                  "`within`; absent: the installation's default (AM_EMAIL_FREQUENCY_CAP_MAX), "
                                  "null: no cap")
    quiet_hours: QuietHoursIn | None = Field(
        default=None, description="Hold deliveries that fall inside this window of the recipient's local time "
                                  "(their `timezone` trait) until it ends")


class DeliveryCounts(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    queued: int = Field(description="Jobs on email-jobs not delivered yet (including those being sent)")
    sent: int
    failed: int
    skipped: int = Field(description="Suppressed (unsubscribed, bounced, opted out), over the frequency cap, "
                                     "or without an email address")
    deferred: int = Field(description="Waiting for the recipient's quiet hours to end")
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
    status: CampaignStatus = Field(description="SCHEDULED → SENDING → COMPLETED once every recipient has an "
                                               "outcome; on_enter campaigns stay ACTIVE until cancelled")
    audience_size: int | None = Field(description="Members when the fan-out ran (none for on_enter)")
    frequency_cap: FrequencyCapIn | None
    quiet_hours: QuietHoursIn | None
    counts: DeliveryCounts
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


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
