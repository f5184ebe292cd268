"""The Segment API's own membership changes (STATIC segments' explicit members) on `segment-membership`,
and to the rule job.

The rule engine publishes the changes of DYNAMIC segments; a STATIC segment's members change only
here, so the API publishes them itself, with `source: "static"`, before it applies them to the
store: every consumer of the topic (destinations, on-enter campaigns) hears what the store shows.
The rule engine's writer skips them, since the API has applied them already. Each change also goes to
the rule job's feedback topic as a `StaticMembership` (keyed by user, like the job's other keyed
input), so rules referring to the STATIC segment see its members and are re-evaluated when they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from server.domain.membership import MembershipChange
from server.domain.pipeline import MembershipOutput, StaticMembership
from server.runtime.errors import DependencyUnavailable
from server.stores.kafka import AsyncProducer
from server.stores.records import encode


def _for_job(change: MembershipChange) -> tuple[str, bytes]:
    return change.user_id, encode(StaticMembership(change.user_id, change.segment_id, change.change, change.at))


class MembershipPublisher:
    """Publishes STATIC segments' changes keyed by user id (so a user's changes keep their order on one partition),
    on `topic` and on the rule job's `job_topic`."""

    def __init__(self, producer: AsyncProducer, topic: str, job_topic: str) -> None:
        self.producer, self.topic, self.job_topic = producer, topic, job_topic

    async def publish(self, changes: Sequence[MembershipChange]) -> list[MembershipChange]:
        """Produce `changes` in order on both topics and wait for the broker; returns those it acknowledged on
        both, per user up to the first one it did not (a user's later change must not be applied without the
        earlier)."""
        on_topic, to_job = await asyncio.gather(
            self.producer.send_many(self.topic, [(change.user_id, encode(MembershipOutput(change)))
                                                 for change in changes]),
            self.producer.send_many(self.job_topic, [_for_job(change) for change in changes]))
        heard, unheard = [], set()
        for change, failure, job_failure in zip(changes, on_topic, to_job, strict=True):
            if failure is not None or job_failure is not None or change.user_id in unheard:
                unheard.add(change.user_id)
            else:
                heard.append(change)
        return heard

    async def publish_to_job(self, changes: Sequence[MembershipChange]) -> None:
        """Produce `changes` to the rule job only (a deleted STATIC segment's members leaving it, which
        `segment-membership` does not carry); raises `DependencyUnavailable` unless the broker acknowledged all."""
        failures = await self.producer.send_many(self.job_topic, [_for_job(change) for change in changes])
        missed = [f for f in failures if f is not None]
        if missed:
            why = str(missed[0]).split(": ", 1)[-1]
            raise DependencyUnavailable("kafka", f"{len(missed)} of {len(changes)} member exits were not acknowledged"
                                                 f" ({why}); nothing was deleted, repeat the request")
