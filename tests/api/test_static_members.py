"""STATIC segments' member changes on `segment-membership`: published (acknowledged) before they are
applied, only when they change something, and skipped by the rule engine's writer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from flinkjob.writer import RECORDS_REJECTED, StoreWriter
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.topics import SEGMENT_MEMBERSHIP, TOPICS
from tests.contracts import membership_validator

pytestmark = pytest.mark.api


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def topic_records(settings: ServiceSettings, name: str, expected: int, quiet_s: float = 1.0) -> list[Message]:
    """Every record on the test's topic `name` (all partitions, from offset 0): at least `expected`, then until
    none came for `quiet_s` (the local broker's high watermark cannot say where a topic ends)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(settings.topic(name), p, 0) for p in range(TOPICS[name])])
    records: list[Message] = []
    deadline, last = time.monotonic() + 15, time.monotonic()
    try:
        while time.monotonic() < deadline and (len(records) < expected or time.monotonic() - last < quiet_s):
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                records.append(message)
                last = time.monotonic()
    finally:
        consumer.close()
    return records


def membership_records(settings: ServiceSettings, expected: int, quiet_s: float = 1.0) -> list[Message]:
    """Every record on the test's `segment-membership` (see `topic_records`)."""
    return topic_records(settings, SEGMENT_MEMBERSHIP, expected, quiet_s)


def static_segment(client: TestClient) -> str:
    response = client.post("/api/segments", json={"name": "beta testers", "type": "STATIC"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_real_changes_are_published_once_each_and_the_writer_leaves_them(
        client: TestClient, service_settings: ServiceSettings) -> None:
    sid = static_segment(client)
    members = f"/api/segments/{sid}/members"
    assert client.post(members, json={"add": ["ann", "ben"]}).json()["size"] == 2
    assert client.post(members, json={"add": ["ann", "ben"]}).json()["size"] == 2  # changes nothing: publishes nothing
    assert client.post(members, json={"remove": ["ben", "cid"]}).json()["size"] == 1  # cid was never a member
    records = membership_records(service_settings, expected=3)
    values = [orjson.loads(m.value()) for m in records]
    for value in values:
        membership_validator().validate(value)
    seen = [(m.key(), v["userId"], v["change"], v["source"], v["segmentId"])
            for m, v in zip(records, values, strict=True)]
    assert sorted(seen) == [(b"ann", "ann", "entered", "static", sid), (b"ben", "ben", "entered", "static", sid),
                            (b"ben", "ben", "exited", "static", sid)]
    ben = [v["change"] for v in values if v["userId"] == "ben"]
    assert ben == ["entered", "exited"]  # one key, one partition: in the order they were made

    # the rule engine's writer reads them and writes nothing: the API applied them already
    db = Database(service_settings.database_conninfo, 1, 2)
    registry = CollectorRegistry()
    writer = StoreWriter(service_settings.kafka_bootstrap, service_settings.topic_prefix,
                         PostgresProfileStore(db), 100, registry)
    try:
        read: list[Message] = []
        deadline = time.monotonic() + 15
        while len(read) < 3 and time.monotonic() < deadline:
            read += [m for m in writer.consumer.consume(100, 0.2) if not m.error()]
        batches = writer.read(read)
    finally:
        writer.close()
    assert len(read) == 3 and [(b.changes, b.profiles, b.removed) for b in batches] == [([], [], None)]
    assert registry.get_sample_value(RECORDS_REJECTED) == 0  # skipped, not rejected


def test_an_unreachable_broker_is_a_503_and_nothing_is_applied(service_settings: ServiceSettings) -> None:
    dead = service_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with TestClient(create_app(dead)) as client:
        sid = static_segment(client)  # the outbox keeps the segment itself for later
        refused = client.post(f"/api/segments/{sid}/members", json={"add": ["ann"]})
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "kafka unavailable" in refused.json()["detail"]
        stats = client.get(f"/api/segments/{sid}/stats").json()
        assert stats["size"] == 0 and stats["entered"]["lastHour"] == 0
        assert client.get("/api/users/ann/segments").json()["segments"] == []
