"""The platform's topics with their final partition counts (the local broker cannot add partitions)."""

from __future__ import annotations

from typing import Final

USER_EVENTS: Final = "user-events"
SEGMENT_RULES: Final = "segment-rules"
SEGMENT_MEMBERSHIP: Final = "segment-membership"
EMAIL_JOBS: Final = "email-jobs"
# Jobs the email worker gave up on (after its retries, or a permanent SMTP refusal), for inspection.
EMAIL_DEAD_LETTERS: Final = "email-jobs-dead-letter"
# The rule engine's own: `segment-rules` carries tombstones for deleted segments, which Flink's
# string deserializer cannot read, so the rule engine's feeder republishes every definition
# (deletes as `{"deleted": true}`) on RULE_DEFINITIONS and backfill requests on REEVALUATIONS;
# the job writes profile snapshots on USER_PROFILES for the profile store. REEVALUATIONS is also the
# job's feedback topic (read with user-events as one keyed input): the merges, the events of linked
# anonymous ids and the forgets the job sends to other keys, and the Segment API's deletes and STATIC
# member changes.
RULE_DEFINITIONS: Final = "rule-engine-rules"
REEVALUATIONS: Final = "rule-engine-reevaluations"
USER_PROFILES: Final = "user-profiles"

# segment-rules has one partition so every consumer sees rule changes in publish order.
TOPICS: Final[dict[str, int]] = {
    USER_EVENTS: 4,
    SEGMENT_RULES: 1,
    SEGMENT_MEMBERSHIP: 4,
    EMAIL_JOBS: 4,
    EMAIL_DEAD_LETTERS: 1,
    RULE_DEFINITIONS: 1,
    REEVALUATIONS: 4,
    USER_PROFILES: 4,
}
