"""Writes the job's output to the profile store in batches: profiles, then membership changes.

A change carries the profile snapshot that caused it, so a membership is never visible before its profile.

Offsets are committed only after a batch is written; the store ignores repeated changes, so a
crash between the two replays a batch harmlessly. While the store is unavailable the writer keeps
retrying the batch in hand (and reads nothing new), so an outage delays memberships but loses none.
A record it cannot read is skipped and counted, once, before the batch is written: retrying it could
never succeed. A change with `source: "static"` is skipped too, uncounted: the Segment API applied it
before publishing it, and applying it again here could undo a later remove.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram

from flinkjob.outage import Outage
from server.domain.membership import MembershipChange
from server.domain.pipeline import ProbeEcho, ProfileRemoved, membership_record, profile_from_json
from server.domain.profile import Profile
from server.runtime.metrics import LATENCY_BUCKETS, register_metric_name
from server.stores.profile_store import ProfileStore
from server.stores.records import RejectedRecords, value_read_by
from server.stores.topics import SEGMENT_MEMBERSHIP, TOPICS, USER_PROFILES

MEMBERSHIP_CHANGES = register_metric_name("am_membership_changes_total")
PROFILES_WRITTEN = register_metric_name("am_profiles_written_total")
log = logging.getLogger("rule-engine.writer")
ASSIGNMENT_LATENCY = register_metric_name("am_segment_assignment_seconds")
RECORDS_REJECTED = register_metric_name("am_profile_writer_records_rejected_total")


@dataclass
class Batch:
    """What one read of the job's output holds for the store."""

    profiles: list[Profile] = field(default_factory=list)
    changes: list[MembershipChange] = field(default_factory=list)


class StoreWriter:
    def __init__(self, bootstrap: str, prefix: str, store: ProfileStore, batch: int,
                 registry: CollectorRegistry) -> None:
        self.store, self.batch = store, batch
        self.membership_topic, self.profile_topic = prefix + SEGMENT_MEMBERSHIP, prefix + USER_PROFILES
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}rule-engine-writer",
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
            await self.outage.until_done("writing to the profile store", partial(self.write, self.read(records)))
            try:
                await asyncio.to_thread(self.consumer.commit, asynchronous=False)
            except KafkaException as exc:  # the batch is written: if the broker lost the commit, it is replayed
                log.warning("could not commit the writer's offsets: %s", exc)

    def read(self, records: list[Message]) -> Batch:
        """The profiles and changes in `records`; an unreadable record is skipped (and counted)."""
        profiles = [m for m in records if m.topic() == self.profile_topic]
        outputs = [m for m in records if m.topic() == self.membership_topic]
        batch = Batch(profiles=self.rejected.readable(profiles, value_read_by(profile_from_json)))
        for record in self.rejected.readable(outputs, value_read_by(membership_record)):
            if isinstance(record, ProbeEcho):
                self.probe_seen = record.token
                continue
            if isinstance(record, ProfileRemoved):
                continue
            if record.change.source == "static":  # the Segment API's own, already in the store
                continue
            batch.changes.append(record.change)
            if record.profile is not None:  # the store keeps the newest per user
                batch.profiles.append(record.profile)
        return batch

    async def write(self, batch: Batch) -> None:
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

    def close(self) -> None:
        self.consumer.close()
