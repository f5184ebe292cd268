"""The broker on its S3 server, as the local stack runs them: records kept across a broker restart, records
dropped once their readers committed past them, and a reader that still gets every record it has not read."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from amctl.local import processes
from amctl.local.broker import EmbeddedBroker
from amctl.local.objects import RetentionPolicy
from amctl.local.s3 import LocalS3Server
from tests.e2e.stack import eventually

pytestmark = pytest.mark.e2e

TOPIC, READER = "events", "reader"


@dataclass
class Running:
    store: LocalS3Server
    broker: EmbeddedBroker
    broker_pid: int
    log: Path

    def restart_broker(self) -> None:
        os.kill(self.broker_pid, signal.SIGKILL)
        processes.stop(self.broker_pid)
        self.broker_pid = start(self.broker, self.log)


def start(broker: EmbeddedBroker, log: Path) -> int:
    pid = processes.spawn(broker.command(), broker.environment(os.environ), log)
    eventually(broker.ready, timeout_s=30, what="the broker answers")
    return pid


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    ports = [processes.free_port(), processes.free_port()]
    store = LocalS3Server(tmp_path, ports[0], retention=RetentionPolicy.parse([f"{TOPIC}={READER}"]))
    store_pid = processes.spawn(store.command(), os.environ, tmp_path / "s3.log")
    eventually(store.ready, timeout_s=30, what="the S3 server answers")
    broker = EmbeddedBroker(ports[1], storage=store.storage_url, storage_env=store.client_environment())
    log = tmp_path / "broker.log"
    run = Running(store, broker, start(broker, log), log)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, 2, 1)]).values():
        future.result(timeout=30)
    try:
        yield run
    finally:
        processes.stop(run.broker_pid)
        processes.stop(store_pid)


def produce(broker: EmbeddedBroker, values: range) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "enable.idempotence": False,
                         "max.in.flight.requests.per.connection": 1})
    failed: list[object] = []
    for value in values:
        producer.produce(TOPIC, key=f"user-{value % 7}", value=str(value).encode(),
                         on_delivery=lambda err, _msg: failed.append(err) if err else None)
        if value % 50 == 0:
            producer.flush()  # many small batches, as live traffic makes them
    assert producer.flush(30) == 0 and not failed


def read(broker: EmbeddedBroker, group: str, wanted: int, commit: bool = False,
         timeout_s: float = 60.0) -> set[int]:
    """What `group` reads from where it last committed (from offset 0 when it never did)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    try:
        partitions = [TopicPartition(TOPIC, p) for p in (0, 1)]
        committed = consumer.committed(partitions, timeout=10)
        consumer.assign([TopicPartition(TOPIC, tp.partition, max(tp.offset, 0)) for tp in committed])
        seen: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(seen) < wanted and time.monotonic() < deadline:
            seen.update(int(m.value()) for m in consumer.consume(500, 0.5) if not m.error())
        if commit:
            consumer.commit(asynchronous=False)
        return seen
    finally:
        consumer.close()


def held_batches(store: LocalS3Server) -> int:
    figures = store.figures()
    assert figures is not None
    return figures.topics.get(TOPIC, {}).get("batches", 0)


def test_records_outlive_a_broker_killed_with_sigkill(running: Running) -> None:
    produce(running.broker, range(0, 600))
    running.restart_broker()
    produce(running.broker, range(600, 900))  # a restarted broker appends, it does not write over offset 0
    assert read(running.broker, "after-restart", 900) == set(range(900))


def test_read_records_are_dropped_and_unread_ones_kept(running: Running) -> None:
    produce(running.broker, range(0, 1000))
    before = held_batches(running.store)
    assert before >= 20
    time.sleep(3)  # two trim passes: nothing goes while the reader has not committed
    assert held_batches(running.store) == before
    assert read(running.broker, READER, 1000, commit=True) == set(range(1000))
    eventually(lambda: held_batches(running.store) <= 2, timeout_s=30, what="read batches dropped")
    figures = running.store.figures()
    assert figures is not None and figures.trimmed_records >= 1000 - 2 * 51  # all but each partition's newest
    produce(running.broker, range(1000, 1300))
    assert read(running.broker, READER, 300) == set(range(1000, 1300))  # the reader misses nothing it had not read
    late = read(running.broker, "a-late-reader", 1300, timeout_s=10)  # a group the policy does not name: what is left
    assert set(range(1000, 1300)) <= late and len(late) < 1300


def test_the_server_refuses_a_second_create_and_a_stale_replace(running: Running) -> None:
    url = f"{running.store.endpoint}/broker/probe.json"

    def put(headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, data=b"{}", method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            refused.close()
            return refused.code

    assert put({"If-None-Match": "*"}) == 200
    assert put({"If-None-Match": "*"}) == 412
    assert put({"If-Match": '"not-the-etag"'}) == 412
    with urllib.request.urlopen(url, timeout=5) as answer:
        etag = answer.headers["ETag"]
    assert put({"If-Match": etag}) == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{running.store.endpoint}/broker?list-type=2&max-keys=many", timeout=5)
    assert refused.value.code == 400
    refused.value.close()
