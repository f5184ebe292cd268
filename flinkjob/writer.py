"""Writes the job's output to the profile store in batches: profiles, then membership changes.

A change carries the profile snapshot that caused it, so a membership is never visible before its profile,
and its reason (`because`), which the store keeps with the membership and in its ledger (no write of its own).

Offsets are committed only after a batch is written; the store ignores repeated changes, so a
crash between the two replays a batch harmlessly. While the store is unavailable the writer keeps
retrying the batch in hand (and reads nothing new), so an outage delays memberships but loses none.
A record it cannot read is skipped and counted, once, before the batch is written: retrying it could
never succeed. A change with `source: "static"` is skipped too, uncounted: the Segment API applied it
before publishing it, and applying it again here could undo a later remove.

A removal (`ProfileRemoved`, a user deleted or merged) comes on both topics, after that user's last change
and snapshot on each. The batch is split at it: what was read before it is written first, then the store
drops the user (`remove_user`), then what follows (a fresh profile after a delete). It is applied where it
is read first; until the same removal is read on the other topic, that topic's records of the user are
older than it and are dropped, so they cannot bring back what it removed. A restart between the two
forgets that, and the second removal then applies again: nothing old survives, at worst a fresh record
of a deleted user that came back within that moment is dropped with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram

from flinkjob.outage import Outage
from server.domain.membership import MembershipChange
from server.domain.pipeline import (
    MembershipOutput,
    MembershipRecord,
    ProbeEcho,
    ProfileRecord,
    ProfileRemoved,
    membership_record,
    profile_record,
)
from server.domain.profile import Profile
from server.runtime.metrics import LATENCY_BUCKETS, register_metric_name
from server.stores.profile_store import ProfileStore
from server.stores.records import RejectedRecords, decode
from server.stores.topics import SEGMENT_MEMBERSHIP, STORE_WRITER_GROUP, TOPICS, USER_PROFILES

MEMBERSHIP_CHANGES = register_metric_name("am_membership_changes_total")
PROFILES_WRITTEN = register_metric_name("am_profiles_written_total")
log = logging.getLogger("rule-engine.writer")
ASSIGNMENT_LATENCY = register_metric_name("am_segment_assignment_seconds")
RECORDS_REJECTED = register_metric_name("am_profile_writer_records_rejected_total")
PROFILE_REMOVALS = register_metric_name("am_profile_removals_total")
# Removals applied from one topic whose twin on the other is still to come; beyond this many (the other
# never came) the oldest are forgotten.
KEPT_REMOVALS = 10_000


@dataclass
class Batch:
    """What one read of the job's output holds for the store, up to a removal: its profiles and changes
    are written, then `removed` is applied."""

    profiles: list[Profile] = field(default_factory=list)
    changes: list[MembershipChange] = field(default_factory=list)
    removed: ProfileRemoved | None = None


class StoreWriter:
    def __init__(self, bootstrap: str, prefix: str, store: ProfileStore, batch: int,
                 registry: CollectorRegistry) -> None:
        self.store, self.batch = store, batch
        self.membership_topic, self.profile_topic = prefix + SEGMENT_MEMBERSHIP, prefix + USER_PROFILES
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": prefix + STORE_WRITER_GROUP,
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        partitions = [TopicPartition(t, p) for t in (self.membership_topic, self.profile_topic)
                      for p in range(TOPICS[SEGMENT_MEMBERSHIP if t == self.membership_topic else USER_PROFILES])]
        try:
            committed = self.consumer.committed(partitions, timeout=10)
        except KafkaException:  # no offsets stored yet (or the broker cannot say): start from the beginning
            committed = partitions
        self.consumer.assign([TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)) for tp in committed])
        self.changes = Counter(MEMBERSHIP_CHANGES.removesuffix("_total"), "Membership changes written",
                               ["change"], registry=registry)
        self.profiles = Counter(PROFILES_WRITTEN.removesuffix("_total"), "Profile snapshots written",
                                registry=registry)
        self.latency = Histogram(ASSIGNMENT_LATENCY, "Event received → membership written",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.rejected = RejectedRecords.counted(log, registry, RECORDS_REJECTED,
                                                "Output records of the job the writer could not read, skipped")
        self.removals = Counter(PROFILE_REMOVALS.removesuffix("_total"), "Users removed from the store "
                                "(deleted, or merged into another)", ["reason"], registry=registry)
        # (user, topic): how many removals of the user, applied from the other topic, this one still has to carry
        self.awaiting: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.last_poll = time.monotonic()
        self.probe_seen: str | None = None
        self.outage = Outage(log)

    async def run(self) -> None:
        while True:
            # returns when `batch` records are there or after 10 ms, whichever is first
            msgs = await asyncio.to_thread(self.consumer.consume, self.batch, 0.01)
            self.last_poll = time.monotonic()
            records = [m for m in msgs if not m.error() and m.value() is not None]
            if not records:
                continue
            # the batch in hand is written before anything else is read, however long the store is away
            for batch in self.read(records):
                await self.outage.until_done("writing to the profile store", partial(self.write, batch))
            try:
                await asyncio.to_thread(self.consumer.commit, asynchronous=False)
            except KafkaException as exc:  # the batch is written: if the broker lost the commit, it is replayed
                log.warning("could not commit the writer's offsets: %s", exc)

    def read(self, records: list[Message]) -> list[Batch]:
        """The profiles, changes and removals in `records`, in the order read: one batch, or one more after
        each removal. An unreadable record is skipped (and counted)."""
        batches, batch = [], Batch()
        for topic, record in self.rejected.readable(records, self._record):
            if isinstance(record, ProbeEcho):
                self.probe_seen = record.token
            elif isinstance(record, ProfileRemoved):
                if self._carried(record, topic):
                    batch.removed = record
                    batches.append(batch)
                    batch = Batch()
            elif self.awaiting and self._superseded(record, topic):
                continue
            elif isinstance(record, Profile):
                batch.profiles.append(record)
            elif record.change.source != "static":  # a static change is the Segment API's own, already stored
                batch.changes.append(record.change)
                if record.profile is not None:  # the store keeps the newest per user
                    batch.profiles.append(record.profile)
        if batch.profiles or batch.changes or not batches:
            batches.append(batch)
        return batches

    def _record(self, message: Message) -> tuple[str, ProfileRecord | MembershipRecord]:
        topic = str(message.topic())
        read = profile_record if topic == self.profile_topic else membership_record
        return topic, decode(message.value(), read)

    def _other(self, topic: str) -> str:
        return self.membership_topic if topic == self.profile_topic else self.profile_topic

    def _carried(self, removal: ProfileRemoved, topic: str) -> bool:
        """Whether `removal`, read on `topic`, is to be applied: not when it was, from the other topic."""
        key = (removal.user_id, topic)
        if (pending := self.awaiting.get(key, 0)) > 0:
            if pending == 1:
                del self.awaiting[key]
            else:
                self.awaiting[key] = pending - 1
            return False
        other = (removal.user_id, self._other(topic))
        self.awaiting[other] = self.awaiting.get(other, 0) + 1
        self.awaiting.move_to_end(other)
        while len(self.awaiting) > KEPT_REMOVALS:
            self.awaiting.popitem(last=False)
        return True

    def _superseded(self, record: Profile | MembershipRecord, topic: str) -> bool:
        """A record older than a removal of its user already applied from the other topic."""
        user = record.user_id if isinstance(record, Profile) else \
            record.change.user_id if isinstance(record, MembershipOutput) else None
        return user is not None and (user, topic) in self.awaiting

    async def write(self, batch: Batch) -> None:
        """Write the batch's profiles and changes, then apply its removal; all of it again if retried
        (each step is idempotent)."""
        if batch.profiles:
            await self.store.put_profiles(batch.profiles)
            self.profiles.inc(len(batch.profiles))
        if batch.changes:
            await self.store.apply_changes(batch.changes)
            written = datetime.now(UTC)
            for change in batch.changes:
                self.changes.labels(change.change).inc()
                if change.event_received_at is not None:
                    self.latency.observe((written - change.event_received_at).total_seconds())
        if batch.removed is not None:
            await self.store.remove_user(batch.removed.user_id, batch.removed.reason)
            self.removals.labels(batch.removed.reason).inc()

    def close(self) -> None:
        self.consumer.close()
