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

# The consumer groups of the platform's own readers (named, like topics, without the topic prefix).
RULE_JOB_USERS_GROUP: Final = "rule-engine-users"  # the rule job's keyed input: user-events + reevaluations
RULE_JOB_RULES_GROUP: Final = "rule-engine-rules"
STORE_WRITER_GROUP: Final = "rule-engine-writer"
RULE_FEEDER_GROUP: Final = "rule-engine-feeder"
ON_ENTER_GROUP: Final = "communication-api-on-enter"
DELIVERY_GROUP: Final = "delivery-worker"
EMAIL_GROUP: Final = "email-worker"

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

# The groups that read each topic to its end and commit what they have handled (the rule job: on each
# checkpoint). The local broker drops a record once every one of them has committed past it. A topic not
# named here is kept whole: the feeder reads segment-rules from the start on every start, and the dead
# letters are kept for inspection.
READERS: Final[dict[str, tuple[str, ...]]] = {
    USER_EVENTS: (RULE_JOB_USERS_GROUP,),
    REEVALUATIONS: (RULE_JOB_USERS_GROUP,),
    RULE_DEFINITIONS: (RULE_JOB_RULES_GROUP,),
    USER_PROFILES: (STORE_WRITER_GROUP,),
    SEGMENT_MEMBERSHIP: (STORE_WRITER_GROUP, ON_ENTER_GROUP, DELIVERY_GROUP),
    EMAIL_JOBS: (EMAIL_GROUP,),
}
