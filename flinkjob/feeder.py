"""Feeds segment definitions to the job and backfills changed segments to users already seen.

Reads `segment-rules` from the start (it holds every definition; tombstones mark deletes),
republishes each definition on the job's rules topic, and asks the job to re-evaluate changed
segments for the users they may affect: every known user for a new or changed segment, the
members for a deleted one. Definitions that arrive together are backfilled in one pass, with one
request per user carrying all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from flinkjob.outage import Outage
from server.domain.pipeline import ReevaluationRequest
from server.domain.records import InvalidRecord
from server.domain.segment import SegmentDefinition
from server.runtime.metrics import register_metric_name
from server.stores.kafka import AsyncProducer
from server.stores.profile_store import ProfileStore
from server.stores.records import RejectedRecords, UnreadableRecord, decode, encode
from server.stores.topics import REEVALUATIONS, RULE_DEFINITIONS, SEGMENT_RULES

log = logging.getLogger("rule-engine.feeder")
# An event the job handled just before a definition reached it, whose profile was not in the store
# yet during the first pass, is caught by a second pass over profiles written since then.
SETTLE_S = 3.0
SETTLE_MARGIN = timedelta(seconds=5)
RECORDS_REJECTED = register_metric_name("am_rule_feeder_records_rejected_total")


def definition_of(msg: Message) -> SegmentDefinition:
    """The definition a `segment-rules` record carries (a tombstone: the segment was deleted), or UnreadableRecord."""
    value, key = msg.value(), msg.key()
    if value is not None:
        return decode(value, SegmentDefinition.from_json)
    try:  # the segment's id is the key
        return SegmentDefinition.from_json({"id": key.decode() if isinstance(key, bytes) else key, "deleted": True})
    except (UnicodeDecodeError, InvalidRecord) as exc:
        raise UnreadableRecord(f"a tombstone whose key is no segment id: {exc}") from None


class RuleFeeder:
    def __init__(self, bootstrap: str, prefix: str, producer: AsyncProducer, store: ProfileStore, page: int,
                 registry: CollectorRegistry) -> None:
        self.producer, self.store, self.page, self.prefix = producer, store, page, prefix
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}rule-engine-feeder",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(prefix + SEGMENT_RULES, 0, 0)])
        self.rejected = RejectedRecords.counted(log, registry, RECORDS_REJECTED,
                                                "segment-rules records the feeder could not read, skipped")
        self.latest: dict[str, SegmentDefinition] = {}  # per segment, the newest definition read
        self.backfilled_users = 0
        self.last_backfill_rate: float | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.outage = Outage(log)

    @property
    def live_segments(self) -> int:
        """How many segments the feeder knows that are not deleted."""
        return sum(not d.deleted for d in self.latest.values())

    async def run(self) -> None:
        while True:
            msgs = await asyncio.to_thread(self.consumer.consume, 500, 0.1)
            definitions = self.rejected.readable([m for m in msgs if not m.error()], definition_of)
            if definitions:
                await self.handle(definitions)

    async def handle(self, definitions: list[SegmentDefinition]) -> None:
        """Publish every definition in order; backfill those that are new or changed.

        Definitions already read are never dropped: while the broker or the profile store is
        unavailable, publishing and backfilling are retried until they succeed.
        """
        await self.outage.until_done("publishing segment definitions", lambda: self._publish(definitions))
        changed: dict[str, SegmentDefinition] = {}
        for definition in definitions:
            if not definition.supersedes(self.latest.get(definition.id)):
                continue  # a repeat (e.g. the Segment API's start-up snapshot): nothing new to backfill
            self.latest[definition.id] = changed[definition.id] = definition
        if not changed:
            return
        fed_at = datetime.now(UTC)
        await self.outage.until_done("backfilling changed segments", lambda: self.backfill(list(changed.values())))
        task = asyncio.create_task(self._settle_pass(list(changed.values()), fed_at))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, definitions: list[SegmentDefinition]) -> None:
        for definition in definitions:  # in order; a repeat after a retry is harmless (versions decide)
            await self.producer.send(self.prefix + RULE_DEFINITIONS, definition.id, encode(definition))

    async def _settle_pass(self, definitions: list[SegmentDefinition], fed_at: datetime) -> None:
        await asyncio.sleep(SETTLE_S)
        await self.outage.until_done("backfilling changed segments",
                                     lambda: self.backfill(definitions, updated_since=fed_at - SETTLE_MARGIN))

    async def backfill(self, definitions: list[SegmentDefinition], updated_since: datetime | None = None) -> None:
        """One re-evaluation request per user who may be affected, in pages."""
        started, sent = time.perf_counter(), 0
        if any(not d.deleted for d in definitions):  # every known user; deletes ride along (non-members: no change)
            sent += await self._requests(definitions, lambda after: self._profile_ids(after, updated_since))
        else:
            for definition in definitions:
                sent += await self._requests([definition], partial(self._member_ids, definition.id))
        self.backfilled_users += sent
        if sent:
            self.last_backfill_rate = sent / (time.perf_counter() - started)
            log.info("backfill of %d segment(s): %d users (%.0f/s)", len(definitions), sent, self.last_backfill_rate)

    async def _profile_ids(self, after: str | None, updated_since: datetime | None) -> list[str]:
        return [p["userId"] for p in await self.store.scan_profiles(after, self.page, updated_since)]

    async def _member_ids(self, segment_id: str, after: str | None) -> list[str]:
        return [m.user_id for m in await self.store.segment_members(segment_id, after, self.page)]

    async def _requests(self, definitions: list[SegmentDefinition],
                        users_after: Callable[[str | None], Awaitable[list[str]]]) -> int:
        sent, after, segments = 0, None, tuple(definitions)
        while True:
            users = await users_after(after)
            if not users:
                return sent
            await asyncio.gather(*(
                self.producer.send(self.prefix + REEVALUATIONS, user, encode(ReevaluationRequest(user, segments)))
                for user in users
            ))
            sent, after = sent + len(users), users[-1]
            if len(users) < self.page:
                return sent

    def close(self) -> None:
        self.consumer.close()
