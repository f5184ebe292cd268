"""One email to one recipient, as it travels on `email-jobs` from the Communication API to the worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.domain.timeutil import format_timestamp, parse_timestamp


@dataclass(frozen=True, slots=True)
class EmailJob:
    campaign_id: str
    user_id: str
    to: str
    subject: str
    body: str
    queued_at: datetime

    @property
    def idempotency_key(self) -> str:
        """(campaign, user): a user gets a campaign at most once, however often the job is read."""
        return f"{self.campaign_id}:{self.user_id}"

    def to_json(self) -> dict[str, Any]:
        return {"campaignId": self.campaign_id, "userId": self.user_id, "to": self.to, "subject": self.subject,
                "body": self.body, "queuedAt": format_timestamp(self.queued_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmailJob:
        return cls(campaign_id=str(data["campaignId"]), user_id=str(data["userId"]), to=str(data["to"]),
                   subject=str(data["subject"]), body=str(data["body"]), queued_at=parse_timestamp(data["queuedAt"]))
