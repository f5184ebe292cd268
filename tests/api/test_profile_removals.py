"""The rule engine's writer applies a user's removal where it stands in the job's output, on both topics:
what came before it is written first, then the store drops the user, then what follows it is written."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message, Producer
from prometheus_client import CollectorRegistry

from flinkjob.writer import PROFILE_REMOVALS, RECORDS_REJECTED, StoreWriter
from server.domain.membership import MembershipChange
from server.domain.pipeline import MembershipOutput, ProfileRemoved
from server.domain.profile import Profile
from server.runtime.settings import ServiceSettings
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.records import Encodable, encode
from server.stores.topics import SEGMENT_MEMBERSHIP, USER_PROFILES

pytestmark = pytest.mark.api

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OLD_SEGMENT, NEW_SEGMENT, OTHER_SEGMENT = (str(uuid.uuid4()) for _ in range(3))


def output(user: str, segment: str, profile: Profile, minutes: int) -> MembershipOutput:
    return MembershipOutput(MembershipChange(user, segment, "entered", T0 + timedelta(minutes=minutes), 1), profile)


OLD = Profile("ann", {"email": "ann@example.com"}, event_count=7)  # before the delete
FRESH = Profile("ann", {"plan": "free"}, event_count=1)  # ann came back after it
BEN = Profile("ben", {"email": "ben@example.com"}, event_count=3)
REMOVED = ProfileRemoved("ann", "deleted", T0 + timedelta(minutes=5))
# the job's output, each topic in its own order: the removal after ann's last record, the fresh ones after it
MEMBERSHIP_TOPIC: list[Encodable] = [output("ann", OLD_SEGMENT, OLD, 1), output("ben", OTHER_SEGMENT, BEN, 2),
                                     REMOVED, output("ann", NEW_SEGMENT, FRESH, 6)]
PROFILE_TOPIC: list[Encodable] = [OLD, BEN, REMOVED, FRESH]


def user_of(record: Encodable) -> str:
    return record.change.user_id if isinstance(record, MembershipOutput) else str(record.to_json()["userId"])


def produce(settings: ServiceSettings) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    for topic, records in ((SEGMENT_MEMBERSHIP, MEMBERSHIP_TOPIC), (USER_PROFILES, PROFILE_TOPIC)):
        for record in records:  # all keyed by user: one partition each, in order
            producer.produce(settings.topic(topic), key=user_of(record), value=encode(record))
    assert producer.flush(10) == 0


def consumed(writer: StoreWriter, expected: int) -> list[Message]:
    read: list[Message] = []
    deadline = time.monotonic() + 15
    while len(read) < expected and time.monotonic() < deadline:
        read += [m for m in writer.consumer.consume(100, 0.2) if not m.error()]
    assert len(read) == expected
    return read


async def write_in_turn(settings: ServiceSettings, store: PostgresProfileStore, db: Database,
                        reads: Sequence[list[Message]], writer: StoreWriter) -> None:
    await db.open(5)
    await store.put_profiles([OLD])  # what the store held of ann before
    assert (await store.link_alias("anon-1", "ann", 100)).made
    for read in reads:
        for batch in writer.read(read):
            await writer.write(batch)


def state(store: PostgresProfileStore, db: Database) -> tuple[dict[str, object] | None, set[str], set[str], list[str]]:
    async def look() -> tuple[dict[str, object] | None, set[str], set[str], list[str]]:
        try:
            ann = await store.get_profile("ann")
            return (ann, {m.segment_id for m in await store.user_memberships("ann")},
                    {m.segment_id for m in await store.user_memberships("ben")}, await store.aliases_of("ann"))
        finally:
            await db.close()
    return asyncio.run(look())


@pytest.mark.parametrize("order", ["as consumed", "membership topic first", "profile topic first"])
def test_a_removal_drops_what_came_before_it_and_keeps_what_came_after(
        service_settings: ServiceSettings, order: str) -> None:
    produce(service_settings)
    db = Database(service_settings.database_conninfo, 2, 2)
    store = PostgresProfileStore(db)
    registry = CollectorRegistry()
    writer = StoreWriter(service_settings.kafka_bootstrap, service_settings.topic_prefix, store, 100, registry)
    try:
        read = consumed(writer, len(MEMBERSHIP_TOPIC) + len(PROFILE_TOPIC))
        memberships = [m for m in read if m.topic() == service_settings.topic(SEGMENT_MEMBERSHIP)]
        profiles = [m for m in read if m.topic() == service_settings.topic(USER_PROFILES)]
        # one topic's removal applied in a batch before the other topic's records of ann are even read
        reads = {"as consumed": [read], "membership topic first": [memberships, profiles],
                 "profile topic first": [profiles, memberships]}[order]
        asyncio.run(write_in_turn(service_settings, store, db, reads, writer))
    finally:
        writer.close()
    ann, ann_segments, ben_segments, aliases = state(store, Database(service_settings.database_conninfo, 2, 2))
    assert ann is not None and ann["traits"] == {"plan": "free"} and ann["eventCount"] == 1  # only the fresh one
    assert ann_segments == {NEW_SEGMENT}  # the old membership went with the delete, the new one stayed
    assert aliases == []  # a delete drops the aliases
    assert ben_segments == {OTHER_SEGMENT}
    assert registry.get_sample_value(PROFILE_REMOVALS, {"reason": "deleted"}) == 1  # once, though on both topics
    assert registry.get_sample_value(RECORDS_REJECTED) == 0


def test_without_a_removal_a_read_is_one_batch(service_settings: ServiceSettings) -> None:
    producer = Producer({"bootstrap.servers": service_settings.kafka_bootstrap, "linger.ms": 5})
    for record in (OLD, BEN):
        producer.produce(service_settings.topic(USER_PROFILES), key=record.user_id, value=encode(record))
    producer.produce(service_settings.topic(SEGMENT_MEMBERSHIP), key="ben",
                     value=encode(output("ben", OTHER_SEGMENT, BEN, 2)))
    assert producer.flush(10) == 0
    db = Database(service_settings.database_conninfo, 1, 2)
    writer = StoreWriter(service_settings.kafka_bootstrap, service_settings.topic_prefix, PostgresProfileStore(db),
                         100, CollectorRegistry())
    try:
        batches = writer.read(consumed(writer, 3))
    finally:
        writer.close()
    assert len(batches) == 1 and batches[0].removed is None
    assert len(batches[0].profiles) == 3 and [c.user_id for c in batches[0].changes] == ["ben"]
