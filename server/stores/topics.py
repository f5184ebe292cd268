"""The platform's topics with their final partition counts (the local broker cannot add partitions)."""

from __future__ import annotations

from typing import Final

USER_EVENTS: Final = "user-events"
SEGMENT_RULES: Final = "segment-rules"
SEGMENT_MEMBERSHIP: Final = "segment-membership"
EMAIL_JOBS: Final = "email-jobs"

# segment-rules has one partition so every consumer sees rule changes in publish order.
TOPICS: Final[dict[str, int]] = {
    USER_EVENTS: 4,
    SEGMENT_RULES: 1,
    SEGMENT_MEMBERSHIP: 4,
    EMAIL_JOBS: 4,
}
