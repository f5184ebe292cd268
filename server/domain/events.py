"""A user event as it travels from the Ingestion API through `user-events` to the rule job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.domain.records import MAX_USER_ID_CHARS, InvalidRecord
from server.domain.timeutil import format_timestamp, parse_timestamp


class InvalidEvent(InvalidRecord):
    """An event whose JSON cannot be read; the message names the field."""


@dataclass(frozen=True, slots=True)
class UserEvent:
    user_id: str
    event_type: str
    event_id: str
    timestamp: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "eventType": self.event_type,
            "properties": dict(self.properties),
            "eventId": self.event_id,
            "timestamp": format_timestamp(self.timestamp),
            "receivedAt": format_timestamp(self.received_at) if self.received_at else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> UserEvent:
        if not isinstance(data, Mapping):
            raise InvalidEvent("event: expected a JSON object")
        for name in ("userId", "eventType", "eventId", "timestamp"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise InvalidEvent(f"{name}: required, a non-empty string")
        if len(data["userId"]) > MAX_USER_ID_CHARS:
            raise InvalidEvent(f"userId: at most {MAX_USER_ID_CHARS} characters")
        properties = data.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise InvalidEvent("properties: expected a JSON object")
        try:
            timestamp = parse_timestamp(data["timestamp"])
            received = data.get("receivedAt")
            received_at = parse_timestamp(received) if isinstance(received, str) else None
        except ValueError as exc:
            raise InvalidEvent(f"timestamp: {exc}") from None
        return cls(user_id=data["userId"], event_type=data["eventType"], event_id=data["eventId"],
                   timestamp=timestamp, properties=dict(properties), received_at=received_at)
