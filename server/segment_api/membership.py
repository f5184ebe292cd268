"""The Segment API's own membership changes (STATIC segments' explicit members) on `segment-membership`.

The rule engine publishes the changes of DYNAMIC segments; a STATIC segment's members change only
here, so the API publishes them itself, with `source: "static"`, before it applies them to the
store: every consumer of the topic (destinations, on-enter campaigns) hears what the store shows.
The rule engine's writer skips them, since the API has applied them already.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.domain.membership import MembershipChange
from server.domain.pipeline import MembershipOutput
from server.stores.kafka import AsyncProducer
from server.stores.records import encode


class MembershipPublisher:
    """Publishes changes keyed by user id (so a user's changes keep their order on one partition)."""

    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    async def publish(self, changes: Sequence[MembershipChange]) -> list[MembershipChange]:
        """Produce `changes` in order and wait for the broker; returns those it acknowledged, per user
        up to the first one it did not (a user's later change must not be applied without the earlier)."""
        failures = await self.producer.send_many(
            self.topic, [(change.user_id, encode(MembershipOutput(change))) for change in changes])
        heard, unheard = [], set()
        for change, failure in zip(changes, failures, strict=True):
            if failure is not None or change.user_id in unheard:
                unheard.add(change.user_id)
            else:
                heard.append(change)
        return heard
