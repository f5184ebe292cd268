"""One email to one recipient, as it travels on `email-jobs` from the Communication API to the worker, and
the rules that decide when it may go: frequency caps and quiet hours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.domain.timeutil import format_duration, format_timestamp, parse_duration, parse_timestamp

MAX_CAP_WINDOW = timedelta(days=366)
MIN_CAP_WINDOW = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class EmailJob:
    campaign_id: str
    user_id: str
    to: str
    subject: str
    body: str
    queued_at: datetime
    body_html: str | None = None
    unsubscribe_url: str | None = None  # one-click (RFC 8058), and the template's {{ unsubscribe_url }}
    unsubscribe_mailto: str | None = None  # the List-Unsubscribe mailto: alternative (RFC 2369)
    timezone: str | None = None  # the recipient's IANA zone, for quiet hours; None: the campaign's

    @property
    def idempotency_key(self) -> str:
        """(campaign, user): a user gets a campaign at most once, however often the job is read."""
        return f"{self.campaign_id}:{self.user_id}"

    def to_json(self) -> dict[str, Any]:
        data = {"campaignId": self.campaign_id, "userId": self.user_id, "to": self.to, "subject": self.subject,
                "body": self.body, "queuedAt": format_timestamp(self.queued_at)}
        optional = {"bodyHtml": self.body_html, "unsubscribeUrl": self.unsubscribe_url,
                    "unsubscribeMailto": self.unsubscribe_mailto, "timezone": self.timezone}
        return data | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmailJob:
        """A job as `to_json` wrote it; jobs queued before the optional fields existed read as None."""
        def optional(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(campaign_id=str(data["campaignId"]), user_id=str(data["userId"]), to=str(data["to"]),
                   subject=str(data["subject"]), body=str(data["body"]), queued_at=parse_timestamp(data["queuedAt"]),
                   body_html=optional("bodyHtml"), unsubscribe_url=optional("unsubscribeUrl"),
                   unsubscribe_mailto=optional("unsubscribeMailto"), timezone=optional("timezone"))


def normalized_address(address: str) -> str:
    """The form an address is suppressed and capped under: trimmed, lower-cased."""
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `max` mails to one address, from any campaign, within `within` before now."""

    max: int
    within: timedelta

    @classmethod
    def parse(cls, max_: int, within: str) -> FrequencyCap:
        if max_ < 1:
            raise ValueError("max must be 1 or more")
        window = parse_duration(within)
        if not MIN_CAP_WINDOW <= window <= MAX_CAP_WINDOW:
            raise ValueError(f"within must be between {format_duration(MIN_CAP_WINDOW)} and "
                             f"{format_duration(MAX_CAP_WINDOW)}")
        return cls(max_, window)

    def describe(self) -> str:
        return f"frequency cap: {self.max} mail{'s' if self.max != 1 else ''} within {format_duration(self.within)}"


@lru_cache(maxsize=1024)
def zone(name: str | None) -> ZoneInfo | None:
    """The IANA time zone `name`, or None when it is not one (an unknown or malformed trait value)."""
    if not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def parse_clock(text: str) -> time:
    """`21:00` → 21:00; ValueError for anything that is not HH:MM on a 24-hour clock."""
    hours, sep, minutes = text.partition(":")
    if not (sep and len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
            and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"'{text}' is not a time of day as HH:MM")
    return time(int(hours), int(minutes))


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No mail between `start` and `end` in the recipient's local time (the window may cross midnight)."""

    start: time
    end: time
    timezone: str = "UTC"  # for recipients without a (valid) `timezone` trait

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the window would be empty")
        if zone(self.timezone) is None:
            raise ValueError(f"'{self.timezone}' is not an IANA time zone such as Europe/Paris")

    def resumes_at(self, now: datetime, recipient_zone: str | None) -> datetime | None:
        """When the quiet window that holds `now` ends (aware UTC), or None when `now` is outside it."""
        tz = zone(recipient_zone) or zone(self.timezone)
        assert tz is not None, "validated in __post_init__"
        local = now.astimezone(tz)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= clock < self.end
            end_day = local.date()
        else:  # e.g. 21:00 to 08:00: evenings end tomorrow, early mornings today
            inside = clock >= self.start or clock < self.end
            end_day = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        if not inside:
            return None
        # a wall-clock time skipped by a DST change resolves forward (fold 0), which is what "ends" means here
        return datetime.combine(end_day, self.end, tzinfo=tz).astimezone(UTC)
