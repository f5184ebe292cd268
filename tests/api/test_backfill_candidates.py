"""Which users the rule engine's feeder asks the job to re-evaluate, against a real PostgreSQL and a real broker:
members and users whose stored profile matches the new rule, not every known user; every user written since in
the settle pass; members only for a delete."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from flinkjob.feeder import RuleFeeder
from server.domain.membership import MembershipChange
from server.domain.pipeline import ReevaluationRequest
from server.domain.profile import Profile
from server.domain.segment import SegmentDefinition
from server.runtime.settings import ServiceSettings
from server.stores.kafka import AsyncProducer
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.records import decode
from server.stores.topics import REEVALUATIONS

pytestmark = pytest.mark.api
T = TypeVar("T")
PAGE = 3  # small pages, so paging through profiles and members is exercised with a handful of users


def run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


def segment(rules: dict[str, Any] | None, version: int = 1, segment_id: str | None = None) -> SegmentDefinition:
    return SegmentDefinition(id=segment_id or str(uuid.uuid4()), version=version, rules=rules)


def spent_over(amount: float) -> dict[str, Any]:
    return {"field": "totalSpent", "operator": "gt", "value": amount}


def profile(user: str, spent: float) -> Profile:
    return Profile(user, total_spent=spent, event_count=1)


def entered(user: str, segment_id: str) -> MembershipChange:
    return MembershipChange(user, segment_id, "entered", datetime.now(UTC), 1)


def requested(settings: ServiceSettings) -> list[ReevaluationRequest]:
    """Every re-evaluation request on the test's topic (keyed by user over several partitions: by user id)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(settings.topic_prefix + REEVALUATIONS, p, 0)
                     for p in consumer.list_topics(settings.topic_prefix + REEVALUATIONS, timeout=10)
                     .topics[settings.topic_prefix + REEVALUATIONS].partitions])
    found: list[ReevaluationRequest] = []
    quiet_until = time.monotonic() + 2
    while time.monotonic() < quiet_until:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            found.append(decode(message.value(), ReevaluationRequest.from_json))
            quiet_until = time.monotonic() + 1
    consumer.close()
    return sorted(found, key=lambda r: r.user_id)


class Feeder:
    """A feeder on the test's database and topics, with its store."""

    def __init__(self, settings: ServiceSettings, rate: float = 0, scan_rate: float = 0) -> None:
        self.settings, self.rate, self.scan_rate = settings, rate, scan_rate

    async def __aenter__(self) -> tuple[RuleFeeder, PostgresProfileStore]:
        self.db = Database(self.settings.database_conninfo, 4, 5)
        await self.db.open(10)
        self.producer = AsyncProducer.for_service(self.settings)
        store = PostgresProfileStore(self.db)
        self.feeder = RuleFeeder(self.settings.kafka_bootstrap, self.settings.topic_prefix, self.producer, store,
                                 PAGE, CollectorRegistry(), self.rate, self.scan_rate)
        return self.feeder, store

    async def __aexit__(self, *exc: object) -> None:
        self.feeder.close()
        self.producer.close()
        await self.db.close()


async def seeded(store: PostgresProfileStore, spent: dict[str, float]) -> None:
    await store.put_profiles([profile(user, amount) for user, amount in spent.items()])


def test_a_new_segment_asks_only_the_users_whose_stored_profile_matches(service_settings: ServiceSettings) -> None:
    spent = {f"u{i:02d}": 50.0 * i for i in range(12)}  # u00..u11: 0, 50, ..., 550
    rich = segment(spent_over(300))

    async def scenario() -> int:
        async with Feeder(service_settings) as (feeder, store):
            await seeded(store, spent)
            await feeder.backfill([rich])
            return feeder.backfilled_users

    sent = run(scenario)
    requests = requested(service_settings)
    assert [r.user_id for r in requests] == [f"u{i:02d}" for i in range(7, 12)]  # over 300: u07..u11, once each
    assert sent == 5 and all(r.segments == (rich,) for r in requests)


def test_a_changed_segment_asks_its_members_and_the_users_matching_its_new_rule(
        service_settings: ServiceSettings) -> None:
    spent = {f"u{i:02d}": 50.0 * i for i in range(12)}
    old = segment(spent_over(300))
    new = segment(spent_over(450), version=2, segment_id=old.id)
    other = segment(spent_over(0))  # arrives with it: the union of both segments' candidates

    async def scenario() -> None:
        async with Feeder(service_settings) as (feeder, store):
            await seeded(store, spent)
            # the old rule's members, and one without a stored profile (the scan never meets it)
            await store.apply_changes([entered(u, old.id) for u in ("u07", "u08", "u09", "u10", "u11", "zz-gone")])
            await feeder.backfill([new])
            await feeder.backfill([segment(None, segment_id=old.id, version=3), other])

    run(scenario)
    requests = requested(service_settings)
    first = [r.user_id for r in requests if r.segments == (new,)]
    assert first == ["u07", "u08", "u09", "u10", "u11", "zz-gone"]  # members (u10, u11 also match 450)
    both = [r.user_id for r in requests if len(r.segments) == 2]
    assert both == [f"u{i:02d}" for i in range(1, 12)] + ["zz-gone"]  # everyone over 0, members once each


def test_a_delete_asks_its_members_only(service_settings: ServiceSettings) -> None:
    gone = segment(spent_over(300))

    async def scenario() -> None:
        async with Feeder(service_settings) as (feeder, store):
            await seeded(store, {f"u{i:02d}": 500.0 for i in range(8)})
            await store.apply_changes([entered(u, gone.id) for u in ("u01", "u05")])
            await feeder.backfill([SegmentDefinition.tombstone(gone.id)])

    run(scenario)
    assert [r.user_id for r in requested(service_settings)] == ["u01", "u05"]


def test_the_settle_pass_asks_every_user_written_since_matching_or_not(service_settings: ServiceSettings) -> None:
    """A user whose event the job handled before the definition reached it, and whose profile reached the store
    only after the first pass: the first pass cannot see that it matches; the settle pass asks it anyway, and
    asks those written since that still do not match (the stored profile may lag the job's)."""
    rich = segment(spent_over(300))

    async def scenario() -> None:
        async with Feeder(service_settings) as (feeder, store):
            await seeded(store, {"old-match": 900.0, "late": 10.0})
            fed_at = datetime.now(UTC)
            await feeder.backfill([rich])  # the first pass sees `late` as it was: 10
            await store.put_profiles([Profile("late", total_spent=900.0, event_count=2),  # written after the scan
                                      profile("late-new", 0.0)])
            await feeder.backfill([rich], updated_since=fed_at - timedelta(milliseconds=1))

    run(scenario)
    assert [r.user_id for r in requested(service_settings)] == ["late", "late-new", "old-match"]
