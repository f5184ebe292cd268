"""No Kafka client outlives its use: one left connected retries its broker after the broker stopped, and
says so on stderr (librdkafka's "Connection refused" lines at the end of a test run)."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from fastapi.testclient import TestClient

from server.communication_api.app import create_app as communication_app
from server.email_worker.app import create_app as email_worker_app
from server.ingestion_api.app import create_app as ingestion_app
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app
from server.stores.kafka import AsyncProducer, BrokerHealth

pytestmark = [pytest.mark.api,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")]


def client_threads() -> int:
    """librdkafka's threads (named rdk:main, rdk:broker…) and our producers' pollers in this process."""
    gc.collect()  # clients of earlier tests that are garbage already would otherwise go away mid-count
    native = sum(p.read_text().startswith("rdk:") for p in Path("/proc/self/task").glob("*/comm"))
    return native + sum(t.name == "kafka-producer-poll" for t in threading.enumerate())


def test_services_built_but_never_started_hold_no_client(service_settings: ServiceSettings) -> None:
    before = client_threads()
    apps = [create(service_settings) for create in (segment_app, communication_app, email_worker_app)]
    assert client_threads() == before
    assert all(app.state.health for app in apps)  # built, with their health checks


def test_a_producer_connects_on_its_first_send_and_close_releases_it(service_settings: ServiceSettings) -> None:
    before = client_threads()
    producer = AsyncProducer(service_settings.kafka_bootstrap, delivery_timeout_s=5.0)
    assert client_threads() == before
    message = asyncio.run(producer.send(service_settings.topic("user-events"), "u1", b"{}"))
    assert message.error() is None and client_threads() > before
    assert producer.close() == 0
    assert client_threads() == before


def test_a_started_ingestion_api_connects_its_producer_before_the_first_event_and_releases_it(
        service_settings: ServiceSettings) -> None:
    before = client_threads()
    app = ingestion_app(service_settings)
    assert client_threads() == before  # built, not started: no client yet
    with TestClient(app):
        assert client_threads() > before  # started: connecting already, with no event sent
    assert client_threads() == before


def test_the_broker_health_check_holds_no_client_between_checks(service_settings: ServiceSettings) -> None:
    before = client_threads()
    check = BrokerHealth(service_settings.kafka_bootstrap, 2.0)  # held for the app's life
    health = asyncio.run(check())
    assert health.status == "UP" and health.details["brokers"] == 1
    assert client_threads() == before


def test_after_a_fatal_error_the_next_send_gets_a_new_client(service_settings: ServiceSettings) -> None:
    """A fenced producer id is fatal for a librdkafka client, and it cannot be provoked on demand: the error is
    handed to the producer as its delivery callback would, then the next send must be acknowledged."""
    producer = AsyncProducer(service_settings.kafka_bootstrap, delivery_timeout_s=5.0)
    topic = service_settings.topic("user-events")
    try:
        assert asyncio.run(producer.send(topic, "u1", b"{}")).error() is None
        first = producer._client
        fenced = KafkaError(KafkaError._FENCED, "Broker: producer fenced", fatal=True)
        refusal = producer._failed(fenced)
        assert refusal.dependency == "kafka" and "fenced" in str(refusal)
        assert asyncio.run(producer.send(topic, "u1", b"{}")).error() is None
        assert producer._client is not None and producer._client is not first
        retriable = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", retriable=True)
        kept = producer._client
        producer._failed(retriable)
        assert producer._client is kept  # only fatal errors replace the client
    finally:
        producer.close()
