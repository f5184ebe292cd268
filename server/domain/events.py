"""A user event as it travels from the Ingestion API through `user-events` to the rule job.

An event names its user by `userId`, by `anonymousId` (a visitor not known yet), or both. The rule
job is keyed by `user_id`: the userId when there is one, else the anonymous id (`anonymous` is then
true, and on the wire the event has no userId).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    anonymous_id: str | None = None
    anonymous: bool = False  # no userId: `user_id` is the anonymous id

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {} if self.anonymous else {"userId": self.user_id}
        if self.anonymous_id is not None:
            body["anonymousId"] = self.anonymous_id
        body.update({
            "eventType": self.event_type,
            "properties": dict(self.properties),
            "eventId": self.event_id,
            "timestamp": format_timestamp(self.timestamp),
            "receivedAt": format_timestamp(self.received_at) if self.received_at else None,
        })
        return body

    def routed_to(self, user_id: str) -> UserEvent:
        """The event for the known user its anonymous id was linked to."""
        return replace(self, user_id=user_id, anonymous=False,
                       anonymous_id=self.anonymous_id if self.anonymous_id is not None else self.user_id)

    @classmethod
    def from_json(cls, data: Any) -> UserEvent:
        if not isinstance(data, Mapping):
            raise InvalidEvent("event: expected a JSON object")
        for name in ("eventType", "eventId", "timestamp"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise InvalidEvent(f"{name}: required, a non-empty string")
        ids: dict[str, str] = {}
        for name in ("userId", "anonymousId"):
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise InvalidEvent(f"{name}: expected a non-empty string")
            if len(value) > MAX_USER_ID_CHARS:
                raise InvalidEvent(f"{name}: at most {MAX_USER_ID_CHARS} characters")
            ids[name] = value
        if not ids:
            raise InvalidEvent("userId: required unless the event has an anonymousId")
        properties = data.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise InvalidEvent("properties: expected a JSON object")
        try:
            timestamp = parse_timestamp(data["timestamp"])
            received = data.get("receivedAt")
            received_at = parse_timestamp(received) if isinstance(received, str) else None
        except ValueError as exc:
            raise InvalidEvent(f"timestamp: {exc}") from None
        anonymous = "userId" not in ids
        return cls(user_id=ids["anonymousId" if anonymous else "userId"], event_type=data["eventType"],
                   event_id=data["eventId"], timestamp=timestamp, properties=dict(properties),
                   received_at=received_at, anonymous_id=ids.get("anonymousId"), anonymous=anonymous)
