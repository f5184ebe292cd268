"""Request and response bodies of `/api/destinations`, one schema per direction."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AwareDatetime, Field, ValidationInfo, field_validator

from server.runtime.fields import ApiModel, Name
from server.stores.destinations import DeliveryState

MAX_URL_CHARS: Final = 2000
MAX_HEADERS: Final = 20
MAX_HEADER_VALUE_CHARS: Final = 1000
MAX_SEGMENT_IDS: Final = 1000
MAX_GRACE_SECONDS: Final = 7 * 24 * 3600
DEFAULT_GRACE_SECONDS: Final = 24 * 3600
MASKED: Final = "•••"  # what a read shows for a header value
# headers the call itself sets: the body's type and length, the target, who calls, and the signature
RESERVED_HEADERS: Final = frozenset({"content-type", "content-length", "host", "user-agent"})
RESERVED_PREFIX: Final = "webhook-"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 7230 token
_NO_SPACE_OR_CONTROL = re.compile(r"^[^\s\x00-\x1f\x7f]*$")

Event = Literal["entered", "exited"]
EVERY_EVENT: Final[tuple[Event, ...]] = ("entered", "exited")


class DestinationType(StrEnum):
    WEBHOOK = "WEBHOOK"


class DestinationStatus(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


def _http_url(url: str) -> str:
    if not _NO_SPACE_OR_CONTROL.match(url):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (they would be shown on every read); send them in headers, "
                         "which are stored sealed")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked for it)
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    return url


def _header_name(name: str) -> str:
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIX):
        raise ValueError(f"'{name}' is set by every call itself and cannot be configured")
    return name


def _header_value(value: str) -> str:
    if value == MASKED:
        raise ValueError(f"'{MASKED}' is how reads hide a value; omit headers to keep the stored ones")
    return value


WebhookUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS, examples=["https://example.com/hooks/am"]),
                       AfterValidator(_http_url)]
HeaderName = Annotated[str, Field(min_length=1, max_length=200, pattern=_TOKEN.pattern), AfterValidator(_header_name)]
HeaderValue = Annotated[str, Field(max_length=MAX_HEADER_VALUE_CHARS, pattern=r"^[^\x00-\x08\x0a-\x1f\x7f]*$"),
                        AfterValidator(_header_value)]
Headers = Annotated[dict[HeaderName, HeaderValue], Field(
    max_length=MAX_HEADERS, description="Sent with every call (an Authorization header, say); stored sealed, "
    "shown on reads by name only")]
SegmentIds = Annotated[Annotated[list[uuid.UUID], Field(min_length=1, max_length=MAX_SEGMENT_IDS)] | None, Field(
    description="The segments whose changes are sent; null: every segment")]
Events = Annotated[list[Event], Field(min_length=1, description="Which changes are sent")]


class _DestinationFields(ApiModel):
    name: Name = Field(examples=["CRM sync"])
    type: DestinationType = DestinationType.WEBHOOK
    url: WebhookUrl

    @field_validator("events", check_fields=False)
    @classmethod
    def _no_repeated_events(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("names an event more than once")
        return events

    @field_validator("headers", check_fields=False)
    @classmethod
    def _no_repeated_headers(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        if headers is not None and len({name.lower() for name in headers}) != len(headers):
            raise ValueError("names a header more than once (names are case-insensitive)")
        return headers

    @field_validator("segment_ids", check_fields=False)
    @classmethod
    def _once_each(cls, segment_ids: list[uuid.UUID] | None) -> list[uuid.UUID] | None:
        return list(dict.fromkeys(segment_ids)) if segment_ids is not None else None


class DestinationCreate(_DestinationFields):
    segment_ids: SegmentIds = None
    events: Events = Field(default_factory=lambda: list(EVERY_EVENT))
    headers: Headers = Field(default_factory=dict)


class DestinationUpdate(_DestinationFields):
    """The whole definition again (so nothing is widened by omission); only headers and status may be left out."""

    segment_ids: SegmentIds
    events: Events
    headers: Headers | None = Field(default=None, description="Omitted: the stored headers stay; {}: none")
    status: DestinationStatus | None = Field(default=None, description="ACTIVE resumes a paused destination; "
                                             "omitted: unchanged")


class DestinationCounts(ApiModel):
    delivered: int
    pending: int
    retrying: int
    failed: int = Field(description="Given up (or refused at once); replay sends them again")


class DestinationPublic(ApiModel):
    id: str
    name: str
    type: DestinationType
    url: str
    segment_ids: list[str] | None
    events: list[str]
    headers: dict[str, str] = Field(description=f"The configured header names; every value shows as {MASKED}")
    status: DestinationStatus
    paused_reason: str | None
    secret_hint: str = Field(examples=["whsec_…Zx9Q"])
    consecutive_failures: int
    last_delivery_at: datetime | None
    last_error: str | None
    counts: DestinationCounts
    lag_seconds: float | None = Field(description="Age of the oldest change not delivered yet (pending or "
                                      "retrying); null when there is none")
    created_at: datetime
    updated_at: datetime


class DestinationCreated(DestinationPublic):
    secret: str = Field(description="The signing secret (Standard Webhooks); shown this once only")


class DestinationPage(ApiModel):
    items: list[DestinationPublic]
    total: int
    limit: int
    offset: int


class SecretRotate(ApiModel):
    grace_seconds: int = Field(default=DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS,
                               description="How long calls are still signed with the previous secret too")


class SecretRotated(ApiModel):
    id: str
    secret: str = Field(description="The new signing secret; shown this once only")
    secret_hint: str
    previous_secret_expires_at: datetime | None = Field(description="Until when the previous secret also "
                                                        "signs; null with graceSeconds 0")


class DestinationTestResult(ApiModel):
    message_id: str
    delivered: bool
    status_code: int | None
    answer: str = Field(description="The start of the destination's answer (2 KB at most)")
    error: str | None
    duration_ms: float


class DeliveryAttemptPublic(ApiModel):
    message_id: str = Field(description="The webhook-id: the same on every attempt and replay")
    user_id: str
    segment_id: str
    event: str = Field(description="The track call's event: Audience Entered or Audience Exited")
    status: DeliveryState
    attempts: int
    last_status_code: int | None
    last_answer: str | None
    last_error: str | None
    changed_at: datetime
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="When it is tried next; null once delivered or failed")
    delivered_at: datetime | None


class DeliveryAttemptPage(ApiModel):
    items: list[DeliveryAttemptPublic]
    next_cursor: str | None


class ReplayRequest(ApiModel):
    from_: AwareDatetime = Field(alias="from", description="Changes from this time on (with a time zone)")
    to: AwareDatetime | None = Field(default=None, description="Up to this time; omitted: up to now")
    failed_only: bool = Field(default=False, description="Only failed deliveries, not delivered ones")

    @field_validator("to")
    @classmethod
    def _not_before_from(cls, to: datetime | None, info: ValidationInfo) -> datetime | None:
        since = info.data.get("from_")
        if to is not None and since is not None and to < since:
            raise ValueError("is before from")
        return to


class ReplayResult(ApiModel):
    requeued: int
