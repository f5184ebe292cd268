"""Feeds segment definitions to the job and backfills changed segments to users already seen.

Reads `segment-rules` from the start (it holds every definition; tombstones mark deletes),
republishes each definition on the job's rules topic, and asks the job to re-evaluate changed
segments for the users they may affect: for a new or changed segment its members and the users
whose stored profile matches the new rule (then, a few seconds later, every user written since,
whose stored profile may have lagged the job), the members for a deleted one. Definitions that
arrive together are backfilled in one pass, with one request per user carrying all of them.

The job evaluates a request for the changed segments and those referring to them, so a referring
segment changes for exactly the users whose membership of the changed one can change: these.
Requests and the store scan are paced (`backfill_rate`, `backfill_scan_rate`) so that live events
keep the job's and the machine's headroom while a large segment backfills.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from flinkjob.logic import compile_definition
from flinkjob.outage import Outage
from flinkjob.pacing import Pace, read_ahead
from server.domain.pipeline import ReevaluationRequest
from server.domain.records import InvalidRecord
from server.domain.segment import SegmentDefinition
from server.runtime.metrics import register_metric_name
from server.stores.kafka import AsyncProducer
from server.stores.matching import matching_pages
from server.stores.profile_store import ProfileStore
from server.stores.records import RejectedRecords, UnreadableRecord, decode, encode
from server.stores.topics import REEVALUATIONS, RULE_DEFINITIONS, RULE_FEEDER_GROUP, SEGMENT_RULES

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
                 registry: CollectorRegistry, rate: float = 0, scan_rate: float = 0) -> None:
        """`rate`: re-evaluation requests per second, `scan_rate`: profiles read per second (0: no limit)."""
        self.producer, self.store, self.page, self.prefix = producer, store, page, prefix
        self.send_pace, self.scan_pace = Pace(rate), Pace(scan_rate)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": prefix + RULE_FEEDER_GROUP,
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(prefix + SEGMENT_RULES, 0, 0)])
        self.rejected = RejectedRecords.counted(log, registry, RECORDS_REJECTED,
                                                "segment-rules records the feeder could not read, skipped")
        self.latest: dict[str, SegmentDefinition] = {}  # per segment, the newest definition read
        self.backfilled_users = 0
        self.last_backfill_rate: float | None = None
        self.last_backfill_seconds: float | None = None
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
        """One re-evaluation request per user the change can affect, paced, each carrying every definition.

        The first pass asks the segments' members and the users whose stored profile matches a new rule now; the
        settle pass (`updated_since`) every user written since, unfiltered: their stored profile may lag the job.
        Deletes (and paused segments) ask their members only.
        """
        started = time.perf_counter()
        if updated_since is not None and any(d.active for d in definitions):
            sent = await self._send(definitions, self._written_since(updated_since))
        else:
            sent = await self._send(definitions, self._candidates(definitions))
        self.backfilled_users += sent
        if sent:
            self.last_backfill_seconds = time.perf_counter() - started
            self.last_backfill_rate = sent / self.last_backfill_seconds
            log.info("backfill of %d segment(s): %d users (%.0f/s)", len(definitions), sent, self.last_backfill_rate)

    async def _candidates(self, definitions: list[SegmentDefinition]) -> AsyncIterator[list[str]]:
        """The members of every segment and the users matching every new rule, in user id order, each once."""
        members = [_Members(self.store, d.id, self.page) for d in definitions]
        rules = {d.id: compiled.rule for d in definitions if (compiled := compile_definition(d)) is not None}
        if rules:
            async for page in matching_pages(self.store, rules, self.scan_pace.chunk(self.page)):
                await self.scan_pace.take(len(page.user_ids))  # the scan competes with the job for the same cores
                found = set().union(*page.matching.values())
                for segment in members:
                    found.update(await segment.through(page.user_ids[-1]))
                if found:
                    yield sorted(found)
        for segment in members:  # members after the last profile (or every member, when nothing was scanned)
            async for users in segment.rest():
                yield users

    async def _written_since(self, updated_since: datetime) -> AsyncIterator[list[str]]:
        after: str | None = None
        limit = self.scan_pace.chunk(self.page)
        while True:
            page = await self.store.scan_profiles(after, limit, updated_since)
            await self.scan_pace.take(len(page))
            if page:
                yield [p["userId"] for p in page]
            if len(page) < limit:
                return
            after = page[-1]["userId"]

    async def _send(self, definitions: list[SegmentDefinition], candidates: AsyncIterator[list[str]]) -> int:
        sent, segments = 0, tuple(definitions)
        async for users in read_ahead(candidates):  # the paced scan goes on while the paced sending does
            step = self.send_pace.chunk(len(users))
            for i in range(0, len(users), step):
                chunk = users[i:i + step]
                await self.send_pace.take(len(chunk))  # live events keep the job's headroom
                await asyncio.gather(*(
                    self.producer.send(self.prefix + REEVALUATIONS, user, encode(ReevaluationRequest(user, segments)))
                    for user in chunk
                ))
                sent += len(chunk)
        return sent

    def close(self) -> None:
        self.consumer.close()


class _Members:
    """A segment's members in user id order, read a page at a time as the scan of profiles passes them.

    Should the store order ids otherwise than Python does (a collation), a member is handed out later than the
    profile it goes with, and may be asked twice: never missed, since `rest` hands out whatever `through` left.
    """

    def __init__(self, store: ProfileStore, segment_id: str, page: int) -> None:
        self.store, self.segment_id, self.page = store, segment_id, page
        self._read: list[str] = []  # read, not yet handed out
        self._after: str | None = None
        self._done = False

    async def through(self, last: str) -> list[str]:
        """The members not handed out yet whose id is at most `last`."""
        while not self._done and (not self._read or self._read[-1] <= last):
            await self._more()
        cut = bisect_right(self._read, last)
        taken, self._read = self._read[:cut], self._read[cut:]
        return taken

    async def rest(self) -> AsyncIterator[list[str]]:
        """The members not handed out yet, a page at a time."""
        while self._read or not self._done:
            if not self._read:
                await self._more()
                continue
            taken, self._read = self._read, []
            yield taken

    async def _more(self) -> None:
        page = [m.user_id for m in await self.store.segment_members(self.segment_id, self._after, self.page)]
        self._read += page
        self._done = len(page) < self.page
        if page:
            self._after = page[-1]
