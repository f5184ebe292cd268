"""The Ingestion API against the real broker: acks, validation, limits, dedupe, outages."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from amctl.local import processes
from amctl.local.broker import EmbeddedBroker
from server.ingestion_api.app import create_app
from server.runtime.settings import ServiceSettings
from server.stores.kafka import create_topics
from server.stores.topics import TOPICS, USER_EVENTS

pytestmark = pytest.mark.api

SEED_EVENT = {"userId": "user123", "eventType": "purchase", "properties": {"amount": 1500, "category": "electronics"}}


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(TOPICS[USER_EVENTS])])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append({"key": msg.key().decode(), **json.loads(msg.value())})
        # a little longer, so that extra (duplicate) records would be seen too
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                out.append({"key": msg.key().decode(), **json.loads(msg.value())})
    finally:
        consumer.close()
    return out


def test_seed_event_is_acknowledged_and_on_the_topic(client: TestClient, service_settings: ServiceSettings) -> None:
    response = client.post("/api/events", json=SEED_EVENT)
    assert response.status_code == 202
    event_id = response.json()["eventId"]
    uuid.UUID(event_id)
    records = consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 1)
    assert len(records) == 1
    record = records[0]
    assert record["key"] == "user123" and record["eventId"] == event_id
    assert record["properties"] == SEED_EVENT["properties"] and record["receivedAt"] and record["timestamp"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"eventType": "purchase"}, "userId"),
        ({"userId": "u", "eventType": ""}, "eventType"),
        ({"userId": "bad id with spaces", "eventType": "x"}, "userId"),
        ({"userId": "u" * 129, "eventType": "x"}, "userId"),
        ({"userId": "u", "eventType": "x", "timestamp": "2999-01-01T00:00:00Z"}, "timestamp"),
        ({"userId": "u", "eventType": "x", "timestamp": "2000-01-01T00:00:00Z"}, "timestamp"),
        ({"userId": "u", "eventType": "x", "properties": [1]}, "properties"),
        ({"userId": "u", "eventType": "x", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_events_are_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/api/events", json=body)
    assert response.status_code == 422
    assert field in [str(part) for d in response.json()["detail"] for part in d["loc"]]


def test_oversized_event_is_413(client: TestClient) -> None:
    response = client.post("/api/events", json={**SEED_EVENT, "properties": {"blob": "x" * 40_000}})
    assert response.status_code == 413
    assert "over 32 KB" in response.json()["detail"]


def test_batch_judges_each_event(client: TestClient, service_settings: ServiceSettings) -> None:
    events = [{"userId": f"b{i}", "eventType": "page_view"} for i in range(5)]
    events.insert(2, {"eventType": "page_view"})
    events.append({"userId": "big", "eventType": "x", "properties": {"blob": "x" * 40_000}})
    response = client.post("/api/events/batch", json={"events": events})
    assert response.status_code == 207
    body = response.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (5, 2, 0)
    assert body["results"][2]["status"] == "rejected" and "userId" in body["results"][2]["errors"][0]
    assert "over 32 KB" in body["results"][6]["errors"][0]
    assert len(consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 5)) == 5
    all_good = client.post("/api/events/batch", json={"events": events[:2]})
    assert all_good.status_code == 202
    too_many = [{"userId": f"m{i}", "eventType": "page_view"} for i in range(501)]
    assert client.post("/api/events/batch", json={"events": too_many}).status_code == 422
    too_big = [{"userId": f"m{i}", "eventType": "x", "properties": {"blob": "x" * 30_000}} for i in range(20)]
    assert client.post("/api/events/batch", json={"events": too_big}).status_code == 413


def test_repeated_event_id_is_not_counted_twice(client: TestClient, service_settings: ServiceSettings) -> None:
    body = {**SEED_EVENT, "eventId": "order-42"}
    first, second = client.post("/api/events", json=body), client.post("/api/events", json=body)
    assert (first.status_code, second.status_code) == (202, 202)
    assert (first.json()["status"], second.json()["status"]) == ("accepted", "duplicate")
    assert len(consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 1)) == 1


def test_a_batch_repeating_an_event_id_stores_it_once(client: TestClient, service_settings: ServiceSettings) -> None:
    events = [{**SEED_EVENT, "eventId": "retry-7"}, {"userId": "other", "eventType": "page_view"},
              {**SEED_EVENT, "eventId": "retry-7"}]
    body = client.post("/api/events/batch", json={"events": events}).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted", "duplicate"]
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    again = client.post("/api/events/batch", json={"events": events[:1]}).json()
    assert again["results"][0]["status"] == "duplicate"
    stored = consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 2)
    assert sorted(r["userId"] for r in stored) == ["other", "user123"]


def test_a_flood_from_one_client_gets_429_with_retry_after(service_settings: ServiceSettings) -> None:
    tight = service_settings.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 10})
    with TestClient(create_app(tight)) as client:
        codes = [client.post("/api/events", json=SEED_EVENT, headers={"X-API-Key": "flood"}).status_code
                 for _ in range(15)]
        other = client.post("/api/events", json=SEED_EVENT, headers={"X-API-Key": "calm"})
        limited = client.post("/api/events", json=SEED_EVENT, headers={"X-API-Key": "flood"})
        metrics = client.get("/metrics").text
    assert codes.count(202) == 10 and codes.count(429) == 5
    assert other.status_code == 202
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 50  # a token per 100 s
    assert "am_rate_limited_total 6.0" in metrics


def test_broker_down_means_503_and_no_acked_event_is_lost(service_settings: ServiceSettings, tmp_path: Any) -> None:
    broker = EmbeddedBroker(port=processes.free_port())
    pid = processes.spawn(broker.command(), os.environ, tmp_path / "broker.log")
    try:
        deadline = time.monotonic() + 10
        while not broker.ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        create_topics(broker.bootstrap, service_settings.topic_prefix)
        settings = service_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "produce_timeout_s": 1.0})
        with TestClient(create_app(settings)) as client:
            acked = []
            deadline = time.monotonic() + 15
            while not acked:  # the producer's first contact with a new broker may take longer than 1 s
                warm_up = client.post("/api/events", json={"userId": "warm-up", "eventType": "page_view"})
                if warm_up.status_code == 202:
                    acked.append(warm_up.json()["eventId"])
                assert time.monotonic() < deadline, warm_up.text
            for i in range(20):
                response = client.post("/api/events", json={"userId": f"k{i}", "eventType": "page_view"})
                assert response.status_code == 202
                acked.append(response.json()["eventId"])
            consumed = consume_all(broker.bootstrap, settings.topic(USER_EVENTS), len(acked))
            assert sorted(r["eventId"] for r in consumed) == sorted(acked)  # every 202 is on the broker
            processes.stop(pid)
            started = time.monotonic()
            down = client.post("/api/events", json={"userId": "lost", "eventType": "page_view"})
            assert down.status_code == 503 and down.headers["Retry-After"] == "2"
            assert time.monotonic() - started < 3  # bounded by produce_timeout_s, not a hang
            batch = client.post("/api/events/batch", json={"events": [{"userId": "lost", "eventType": "x"}]})
            assert batch.status_code == 503
    finally:
        processes.stop(pid)
