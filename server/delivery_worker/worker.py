"""Consumes `segment-membership` and records each change for every destination that wants it.

The consumer only records (one INSERT per batch) and then commits the batch's offsets; it never
waits for a call. Recording wakes the senders of the destinations that got new deliveries (see
`server.delivery_worker.sender`), so a change is called within milliseconds. A batch the store
cannot take (PostgreSQL away) is retried until it can, and its offsets do not move meanwhile: a
crash then reads it again, and recording it again is a no-op (the message id is the same).

A deleted user's removal (`ProfileRemoved`, reason `deleted`, after that user's exits) takes the user out of
its delivered and failed deliveries once the batch's changes are recorded; the exits just recorded stay
pending, and are delivered as they are, so every destination hears that the user left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from prometheus_client import CollectorRegistry

from server.delivery_worker.metrics import RECORDS_REJECTED, DeliveryMetrics
from server.delivery_worker.sender import DestinationSender, SenderLimits
from server.domain.pipeline import MembershipOutput, ProfileRemoved, membership_record
from server.domain.retry import RetryPolicy
from server.domain.webhooks import encode_body, message_id, track_body
from server.runtime.health import ComponentHealth
from server.runtime.settings import ServiceSettings
from server.stores.destination_deliveries import DestinationDeliveries, LoadedDestinations, NewDelivery
from server.stores.kafka import group_consumer_config
from server.stores.outages import DEPENDENCY_OUTAGES
from server.stores.records import RejectedRecords, value_read_by
from server.stores.topics import DELIVERY_GROUP, SEGMENT_MEMBERSHIP
from server.stores.webhooks import WebhookClient

log = logging.getLogger("delivery-worker")
POLL_S = 0.2  # the wait for a first record; the rest of a batch is what has already arrived
BATCH = 500
FETCH_WAIT_MS = 10  # the broker holds an empty fetch this long: on the path from a change to its call
REFRESH_S = 1.0  # how stale the destinations may be: a new, changed, paused or deleted one is seen this soon
BROKER_ERROR_SHOWN_S = 15.0  # the client reports an unreachable broker on each failed reconnect (≤ 10 s apart)
EMAIL_TRAIT = "email"


@dataclass
class WorkerBatch:
    """What one read of `segment-membership` holds for the worker: changes to record, users erased after them."""

    changes: list[MembershipOutput] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)


def contact_traits(output: MembershipOutput) -> dict[str, Any] | None:
    """The traits a destination gets in `context.traits`: the user's email, when the profile has one."""
    email = output.profile.traits.get(EMAIL_TRAIT) if output.profile is not None else None
    return {EMAIL_TRAIT: email} if isinstance(email, str) and email else None


class DeliveryWorker:
    def __init__(self, settings: ServiceSettings, store: DestinationDeliveries, client: WebhookClient,
                 registry: CollectorRegistry) -> None:
        self.store, self.client = store, client
        self.topic = settings.topic(SEGMENT_MEMBERSHIP)
        # a consumer exists only while `run` does
        self.consumer_config = {**group_consumer_config(settings.kafka_bootstrap,
                                                        settings.topic_prefix + DELIVERY_GROUP,
                                                        settings.kafka_session_timeout_ms),
                                "fetch.wait.max.ms": FETCH_WAIT_MS, "error_cb": self._broker_error}
        self.policy = RetryPolicy(settings.destination_retry_base_s, settings.destination_retry_max_s,
                                  settings.destination_give_up_s)
        self.limits = SenderLimits(settings.destination_concurrency, settings.destination_pause_after)
        self.metrics = DeliveryMetrics(registry)
        self.rejected = RejectedRecords.counted(log, registry, RECORDS_REJECTED,
                                                "segment-membership records the delivery worker could not read, "
                                                "skipped")
        self.senders: dict[str, DestinationSender] = {}
        self.loaded: LoadedDestinations | None = None
        self.stopping = asyncio.Event()
        self.errors: dict[str, str] = {}  # what is failing now: "records", "destinations", "worker"
        self._broker_failed: tuple[float, str] | None = None
        self._refreshing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()  # senders of deleted destinations, finishing their calls

    def stop(self) -> None:
        """Read no more and call no more; the batch in hand is recorded (or left uncommitted) and the calls
        in flight finish."""
        self.stopping.set()
        for sender in self.senders.values():
            sender.halt()

    async def run(self) -> None:
        refresher = asyncio.create_task(self._keep_fresh(), name="delivery-worker-destinations")
        try:
            await self._consume()
        except Exception as exc:
            self.errors["worker"] = f"stopped: {type(exc).__name__}: {exc}"
            log.exception("the delivery worker stopped")
            raise
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await asyncio.gather(*(sender.stop() for sender in self.senders.values()), *self._retiring)

    async def _consume(self) -> None:
        consumer = Consumer(self.consumer_config)
        await asyncio.to_thread(consumer.subscribe, [self.topic])
        try:
            while not self.stopping.is_set():
                messages = await asyncio.to_thread(_next_batch, consumer)
                if not await self._record_until_stored(self.read(messages)):
                    return  # stopping with the batch unstored: its offsets stay, the next worker reads it
                if messages:
                    await _commit(consumer)
        finally:
            await asyncio.to_thread(consumer.close)

    def read(self, messages: list[Message]) -> WorkerBatch:
        """The changes and deleted users in `messages`: error records tell of the broker, probe echoes and
        merges are not for us, and unreadable records are skipped (and counted)."""
        for error in filter(None, (message.error() for message in messages)):
            self._broker_error(error)
        records = [message for message in messages if message.error() is None and message.value()]
        batch = WorkerBatch()
        for record in self.rejected.readable(records, value_read_by(membership_record)):
            if isinstance(record, MembershipOutput):
                batch.changes.append(record)
            elif isinstance(record, ProfileRemoved) and record.reason == "deleted":
                batch.erased.append(record.user_id)
        return batch

    async def _record_until_stored(self, batch: WorkerBatch) -> bool:
        """Record `batch` (then erase its deleted users), waiting out an outage of the store; False if stopping
        came first."""
        while True:
            try:
                await self.record(batch.changes)
                await self.erase(batch.erased)
                self.errors.pop("records", None)
                return True
            except DEPENDENCY_OUTAGES as exc:
                self.errors["records"] = f"cannot record changes: {exc}"
                log.warning("recording changes paused: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
                if self.stopping.is_set():
                    return False

    async def record(self, batch: list[MembershipOutput]) -> None:
        """One delivery row per (change, destination that wants it); wakes the senders that got some."""
        if not batch:
            return
        loaded = await self._destinations_for(batch)
        wanted = [(output, [d for d in loaded.destinations.values() if d.wants(output.change)]) for output in batch]
        wanted = [(output, destinations) for output, destinations in wanted if destinations]
        names = await self.store.segment_names(output.change.segment_id for output, _ in wanted)
        deliveries = []
        for output, destinations in wanted:
            change, traits = output.change, contact_traits(output)
            name = names.get(change.segment_id, change.segment_id)
            for destination in destinations:
                message = message_id(destination.id, change)
                body = encode_body(track_body(message, change, name, traits))
                deliveries.append(NewDelivery(destination.id, message, change, body))
        woken = await self.store.record(deliveries)
        for delivery in deliveries:
            if delivery.destination_id in woken:
                change = delivery.change
                self.metrics.remember(delivery.destination_id, delivery.message_id,
                                      change.event_received_at or change.at)
        for destination_id in woken:
            if (sender := self.senders.get(destination_id)) is not None:
                sender.wake()

    async def erase(self, user_ids: list[str]) -> None:
        """Take deleted users out of their finished deliveries (erasing again finds nothing to change)."""
        if not user_ids:
            return
        await self.store.erase(user_ids)
        self.metrics.erased.inc(len(user_ids))

    async def _destinations_for(self, batch: list[MembershipOutput]) -> LoadedDestinations:
        """The destinations to match `batch` against: reloaded first if one may have been created since the
        snapshot, so that every change made after a destination exists reaches it."""
        loaded = self.loaded
        if loaded is None:
            return await self.refresh()
        if max(output.change.at for output in batch) >= loaded.at \
                and await self.store.created_since(loaded.at) - loaded.destinations.keys():
            return await self.refresh()
        return loaded

    async def refresh(self) -> LoadedDestinations:
        """Reload the destinations and bring the senders in line: new ones start, deleted ones stop."""
        async with self._refreshing:
            loaded = await self.store.load()
            self.loaded = loaded
            for destination_id, destination in loaded.destinations.items():
                if (sender := self.senders.get(destination_id)) is not None:
                    sender.update(destination)
                elif not self.stopping.is_set():
                    sender = self.senders[destination_id] = DestinationSender(
                        destination, self.store, self.client, self.policy, self.limits, self.metrics)
                    sender.start()
                    sender.wake()  # deliveries may be waiting from before a restart
            for destination_id in self.senders.keys() - loaded.destinations.keys():
                retiring = asyncio.create_task(self.senders.pop(destination_id).stop())
                self._retiring.add(retiring)
                retiring.add_done_callback(self._retiring.discard)
            self.metrics.destinations(loaded)
            return loaded

    async def _keep_fresh(self) -> None:
        while True:
            try:
                await self.refresh()
                self.errors.pop("destinations", None)
            except DEPENDENCY_OUTAGES as exc:
                self.errors["destinations"] = f"cannot load the destinations: {exc}"
                log.warning("cannot reload the destinations: %s", exc)
            await asyncio.sleep(REFRESH_S)

    def _broker_error(self, error: KafkaError) -> None:
        """The consumer's client could not reach the broker (its error callback, or an error record)."""
        if error.code() != KafkaError._PARTITION_EOF:
            self._broker_failed = (time.monotonic(), f"kafka: {error.str()}")

    async def health(self) -> ComponentHealth:
        problems = dict(self.errors)
        if self._broker_failed is not None and time.monotonic() - self._broker_failed[0] < BROKER_ERROR_SHOWN_S:
            problems["broker"] = self._broker_failed[1]
        queued = self.loaded.queued if self.loaded is not None else {}
        destinations = {destination_id: sender.health(queued.get(destination_id, 0))
                        for destination_id, sender in self.senders.items()}
        for destination_id, sender in self.senders.items():
            if sender.problem is not None:
                problems[f"destination {destination_id}"] = sender.problem
        return ComponentHealth("DOWN" if problems else "UP", {"lastError": "; ".join(problems.values()) or None,
                                        "destinations": destinations})


def _next_batch(consumer: Consumer) -> list[Message]:
    """What has arrived: waits up to POLL_S for a first record, then takes the ones already fetched."""
    first = consumer.poll(POLL_S)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH - 1, 0)]


async def _commit(consumer: Consumer) -> None:
    """Move the offsets past what was read; a rebalance that took a partition makes that a no-op (whoever
    reads it next records its changes again, which stores nothing twice)."""
    with contextlib.suppress(KafkaException):
        await asyncio.to_thread(consumer.commit, asynchronous=False)
