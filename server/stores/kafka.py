"""Kafka-protocol access: topic creation, an asyncio-friendly producer, and a health check."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from server.runtime.errors import DependencyUnavailable
from server.runtime.health import ComponentHealth
from server.runtime.settings import ServiceSettings
from server.stores.topics import TOPICS

# linger.ms=5: one record per produce request makes the local broker the bottleneck.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "socket.keepalive.enable": True,
}
# Without idempotence (the local durable broker) a retry is stored again rather than lost; one request
# in flight keeps retried records in order.
NON_IDEMPOTENT: dict[str, Any] = {"enable.idempotence": False, "max.in.flight.requests.per.connection": 1}


def group_consumer_config(bootstrap: str, group: str, session_timeout_ms: int = 6000) -> dict[str, Any]:
    """A consumer in a group that commits by hand after handling, reading new groups from the start.

    session.timeout.ms=6000: the local broker makes a joining member wait half the session timeout,
    which at the default (45 s) would delay the first record by 22 s; closing a consumer that is still
    joining waits for the join too. Heartbeats go at a third of it (librdkafka's background thread).
    """
    return {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, session_timeout_ms // 3), "fetch.wait.max.ms": 50}


def create_topics(bootstrap: str, prefix: str = "", timeout_s: float = 10.0) -> list[str]:
    """Create every platform topic that does not exist yet; returns the names it created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(prefix + name, num_partitions=partitions, replication_factor=1)
        for name, partitions in TOPICS.items()
        if prefix + name not in existing
    ]
    if not wanted:
        return []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
    return [t.topic for t in wanted]


class AsyncProducer:
    """One long-lived idempotent producer; `send` resolves only once the broker acknowledged.

    The client connects on the first send (or `connect`, from a started service) and is released by `close`:
    a service that is built but never started (a refused start, a test) leaves no client behind that keeps
    retrying the broker. A fatal error (the broker fenced the producer id, e.g. a fresh local broker answering
    a retried handshake) leaves a client unusable for good: that send fails, and the next one gets a new client.
    """

    def __init__(self, bootstrap: str, delivery_timeout_s: float, idempotent: bool = True, **overrides: Any) -> None:
        self._config = {
            **PRODUCER_DEFAULTS,
            **({} if idempotent else NON_IDEMPOTENT),
            "bootstrap.servers": bootstrap,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            **overrides,
        }
        self._client: Producer | None = None
        self._poller: threading.Thread | None = None
        self._retired: threading.Event = threading.Event()  # set when the current client had a fatal error
        self.delivery_timeout_s = delivery_timeout_s
        self._closed = threading.Event()

    @classmethod
    def for_service(cls, settings: ServiceSettings, delivery_timeout_s: float | None = None) -> AsyncProducer:
        """A service's producer: its broker, how long to wait for an ack (produce_timeout_s), idempotence and
        linger (AM_KAFKA_LINGER_MS)."""
        timeout_s = settings.produce_timeout_s if delivery_timeout_s is None else delivery_timeout_s
        return cls(settings.kafka_bootstrap, timeout_s, idempotent=settings.kafka_idempotence,
                   **{"linger.ms": settings.kafka_linger_ms})

    @property
    def _producer(self) -> Producer:
        """The client, created and polled from the first send on."""
        if self._client is None:
            if self._closed.is_set():
                raise DependencyUnavailable("kafka", "the producer is closed")
            self._client, self._retired = Producer(self._config), threading.Event()
            self._poller = threading.Thread(target=self._poll, args=(self._client, self._retired),
                                            name="kafka-producer-poll", daemon=True)
            self._poller.start()
        return self._client

    def connect(self) -> None:
        """Create the client now: it connects and (idempotent) gets its producer id in the background, so the
        first send does not wait for that (~0.5 s against the local broker)."""
        self._producer  # noqa: B018 - the property creates the client

    def _poll(self, client: Producer, retired: threading.Event) -> None:
        # a retired client is polled until the records it still holds are settled (they fail at once)
        while not self._closed.is_set() and not (retired.is_set() and len(client) == 0):
            client.poll(0.05)

    def _failed(self, failure: KafkaError | KafkaException) -> DependencyUnavailable:
        """What a refused record answers; after a fatal error the client is retired (the next send makes one)."""
        err = failure.args[0] if isinstance(failure, KafkaException) and failure.args else failure
        if isinstance(err, KafkaError):
            if err.fatal():
                self._retire()
            return DependencyUnavailable("kafka", err.str())
        return DependencyUnavailable("kafka", str(failure))

    def _retire(self) -> None:
        # called from the poller thread: only drop the reference, the poller itself ends once the client is empty
        self._retired.set()
        self._client = None

    async def send(self, topic: str, key: str | bytes | None, value: bytes | None) -> Message:
        """Produce one record and wait for the broker's acknowledgement."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_set_exception, future, self._failed(err))
            else:
                loop.call_soon_threadsafe(_set_result, future, msg)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        except BufferError as exc:
            raise DependencyUnavailable("kafka", "producer queue is full") from exc
        except KafkaException as exc:
            raise self._failed(exc) from exc
        return await future

    async def send_many(self, topic: str, records: Sequence[tuple[str | bytes | None, bytes | None]],
                        timeout_s: float | None = None) -> list[DependencyUnavailable | None]:
        """Produce records in order and wait until the broker acknowledged or refused each, or `timeout_s`
        passed (by default a moment after the producer's own delivery timeout).

        Returns, per record, None when acknowledged or why not. The event loop is woken once for the
        whole batch, not once per record.
        """
        if not records:
            return []
        loop = asyncio.get_running_loop()
        all_settled: asyncio.Future[None] = loop.create_future()
        outcomes: list[object] = [_PENDING] * len(records)  # None (acked), DependencyUnavailable or _PENDING
        lock, pending = threading.Lock(), len(records)

        def settle(index: int, outcome: DependencyUnavailable | None) -> None:
            nonlocal pending
            with lock:
                outcomes[index] = outcome
                pending -= 1
                if pending == 0:
                    loop.call_soon_threadsafe(_set_result, all_settled, None)

        def delivered(index: int, err: KafkaError | None, _msg: Message) -> None:
            settle(index, None if err is None else self._failed(err))

        produce = self._producer.produce
        for index, (key, value) in enumerate(records):
            try:
                produce(topic, value=value, key=key, on_delivery=partial(delivered, index))
            except BufferError:
                settle(index, DependencyUnavailable("kafka", "producer queue is full"))
            except KafkaException as exc:
                settle(index, self._failed(exc))
        if timeout_s is None:
            timeout_s = self.delivery_timeout_s + 1
        # a timer that settles the wait, lighter than asyncio.timeout's cancellation per call
        timer = loop.call_later(timeout_s, _set_result, all_settled, None)
        try:
            await all_settled
        finally:
            timer.cancel()
        with lock:
            late = DependencyUnavailable("kafka", f"no ack within {timeout_s:g} s")
            return cast(list[DependencyUnavailable | None], [late if o is _PENDING else o for o in outcomes])

    def close(self, timeout_s: float = 5.0) -> int:
        """Flush what is queued, stop polling and release the client; returns how many records were left
        undelivered."""
        client, self._client = self._client, None
        if client is None:
            self._closed.set()
            return 0
        remaining: int = client.flush(timeout_s)
        self._closed.set()
        if self._poller is not None:
            self._poller.join(timeout=1)
        return remaining  # the last reference to `client` goes here: its threads stop and its connections close


_PENDING = object()


def _set_result(future: asyncio.Future[Any], msg: Any) -> None:
    if not future.done():
        future.set_result(msg)


def _set_exception(future: asyncio.Future[Message], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


class BrokerHealth:
    """Asks the broker for cluster metadata (in a thread: the client call blocks).

    Each check has a client of its own: one held for the life of the app would outlive a stopped app
    until garbage collection, connecting to its broker all the while.
    """

    def __init__(self, bootstrap: str, timeout_s: float) -> None:
        self._config: dict[str, Any] = {"bootstrap.servers": bootstrap}
        self._timeout_s = timeout_s

    def _metadata(self) -> Any:
        return AdminClient(self._config).list_topics(timeout=self._timeout_s)

    async def __call__(self) -> ComponentHealth:
        metadata = await asyncio.to_thread(self._metadata)
        return ComponentHealth("UP", {"brokers": len(metadata.brokers), "topics": len(metadata.topics)})
