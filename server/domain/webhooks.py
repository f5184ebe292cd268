"""What a destination receives: one membership change as a Segment "Audience Entered/Exited" track call.

The body follows Segment's audience track shape, so receivers built for Segment Engage understand it:
`properties.audience_key` names the audience and `properties[audience_key]` says whether the user is
in it now; `context.personas` carries the computation's id and key. The message id is derived from
the destination and the change, so the same change always gets the same id, on every retry, every
replay, and when a crash makes the worker read the change again.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Final

from server.domain.membership import Change, MembershipChange
from server.domain.timeutil import format_timestamp

EVENT_NAMES: Final[dict[Change, str]] = {"entered": "Audience Entered", "exited": "Audience Exited"}
LIBRARY: Final = {"name": "audience-manager", "version": "1"}
# uuid5 namespace of every message id (a fixed random uuid: ids never collide with other systems' uuid5s)
_MESSAGE_NAMESPACE: Final = uuid.UUID("5b0c7c52-4a5e-4c1e-9d0a-2f55f1f6f0a7")
TEST_USER_ID: Final = "audience-manager-test-user"
TEST_SEGMENT_ID: Final = "00000000-0000-0000-0000-000000000000"
_NOT_KEY = re.compile(r"[^a-z0-9]+")


def audience_key(segment_name: str) -> str:
    """Segment's snake_case audience key for a segment name (`VIP buyers` → `vip_buyers`)."""
    return _NOT_KEY.sub("_", segment_name.lower()).strip("_") or "audience"


def message_id(destination_id: str, change: MembershipChange) -> str:
    """The change's id at this destination: stable, so a receiver can drop repeats by `webhook-id`."""
    name = "|".join((destination_id, change.user_id, change.segment_id, change.change,
                     format_timestamp(change.at), str(change.segment_version)))
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, name))


def track_body(message: str, change: MembershipChange, segment_name: str,
               traits: dict[str, Any] | None = None) -> dict[str, Any]:
    """The track call for `change`; `traits` (the user's, such as email) go into `context.traits`."""
    key = audience_key(segment_name)
    body: dict[str, Any] = {
        "type": "track",
        "event": EVENT_NAMES[change.change],
        "userId": change.user_id,
        "messageId": message,
        "timestamp": format_timestamp(change.at),
        "properties": {
            "segmentId": change.segment_id,
            "segmentName": segment_name,
            "segmentVersion": change.segment_version,
            "audience_key": key,
            key: change.change == "entered",
        },
        "context": {
            "library": LIBRARY,
            "personas": {"computation_class": "audience", "computation_id": change.segment_id,
                         "computation_key": key},
        },
    }
    if traits:
        body["context"]["traits"] = traits
    return body


def test_body(message: str, at: datetime) -> dict[str, Any]:
    """The body of `POST /api/destinations/{id}/test`: an Audience Entered marked `properties.test`."""
    change = MembershipChange(TEST_USER_ID, TEST_SEGMENT_ID, "entered", at, 0)
    body = track_body(message, change, "Test audience")
    body["properties"]["test"] = True
    return body


def encode_body(body: dict[str, Any]) -> str:
    """The bytes that are signed and sent (compact JSON, key order kept)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
