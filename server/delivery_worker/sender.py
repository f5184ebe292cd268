"""One destination's sender: calls its due deliveries, a few at a time, each user's in order.

Every destination has a sender of its own (a task, its own limit of calls in flight), so a slow or
failing destination only ever holds up itself. A sender sleeps until it is woken (new deliveries
recorded, a call finished, the destination resumed) or until its next retry falls due; it never
polls on a fixed period. A paused destination's sender does not call, but its deliveries keep being
recorded, and are called once it is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime

from server.delivery_worker.metrics import DeliveryMetrics
from server.domain.retry import RetryPolicy
from server.stores.destination_deliveries import (
    Attempt,
    DeliveryStatus,
    Destination,
    DestinationDeliveries,
    DestinationStatus,
    DueDelivery,
)
from server.stores.outages import DEPENDENCY_OUTAGES
from server.stores.webhooks import Answer, Outcome, WebhookClient

log = logging.getLogger("delivery-worker")
STORE_RETRY_S = 1.0  # while the store is away, how often a sender asks again


@dataclasses.dataclass(frozen=True, slots=True)
class SenderLimits:
    concurrency: int  # calls in flight at this destination
    pause_after: int  # consecutive failed calls that pause it


def attempt_for(answer: Answer, delivery: DueDelivery, elapsed_s: float, policy: RetryPolicy) -> Attempt:
    """What a call's answer makes of the delivery: delivered, failed, or retried after a delay."""
    if answer.outcome is Outcome.DELIVERED:
        return Attempt(DeliveryStatus.DELIVERED, answer, None)
    if answer.outcome is Outcome.FAIL:
        return Attempt(DeliveryStatus.FAILED, answer, answer.error)
    attempts = delivery.attempts + 1
    delay = policy.next_delay(attempts, elapsed_s, answer.retry_after_s)
    if delay is None:
        return Attempt(DeliveryStatus.FAILED, answer, f"gave up after {attempts} attempt{'s' * (attempts > 1)} "
                                                      f"over {elapsed_s:.0f} s; last: {answer.error}")
    return Attempt(DeliveryStatus.RETRYING, answer, answer.error, delay)


class DestinationSender:
    def __init__(self, destination: Destination, store: DestinationDeliveries, client: WebhookClient,
                 policy: RetryPolicy, limits: SenderLimits, metrics: DeliveryMetrics) -> None:
        self.destination, self.store, self.client = destination, store, client
        self.policy, self.limits, self.metrics = policy, limits, metrics
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._due_at: float | None = None  # monotonic time of the next retry that falls due
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"destination-{self.destination.id}")

    def update(self, destination: Destination) -> None:
        """Take a fresh copy of the destination; one that may send again (resumed), or is to be called
        differently (a new URL or headers: the API made its retries due now), is called at once."""
        previous, self.destination = self.destination, destination
        if destination.sends and not previous.sends:
            log.info("destination %s (%s) sends again", destination.id, destination.name)
            self.wake()
        elif (destination.url, destination.headers) != (previous.url, previous.headers):
            self._due_at = None
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    def halt(self) -> None:
        """Start no new call from now on (`stop` waits for the calls in flight)."""
        self._stopping = True
        self.wake()

    async def stop(self) -> None:
        """Start no new call; the calls in flight finish and are recorded."""
        self.halt()
        if self._task is not None:
            await self._task
        if self.in_flight:
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            await self._sleep()
            if self._stopping:
                return
            free = self.limits.concurrency - len(self.in_flight)
            if not self.destination.sends or free <= 0:
                self._due_at = None  # a resume, or a call finishing, wakes it
                continue
            try:
                pick = await self.store.due(self.destination.id, free, self.in_flight)
            except DEPENDENCY_OUTAGES as exc:
                self.last_error = f"cannot read its deliveries: {exc}"
                log.warning("destination %s waits for the store: %s", self.destination.id, exc)
                self._due_at = time.monotonic() + STORE_RETRY_S
                continue
            self.last_error = None
            for delivery in pick.deliveries:
                task = asyncio.create_task(self._deliver(delivery, pick.now))
                self.in_flight[delivery.seq] = task
            self._due_at = None if pick.next_at is None else \
                time.monotonic() + max(0.0, (pick.next_at - pick.now).total_seconds())

    async def _sleep(self) -> None:
        """Until woken, or until the next retry is due."""
        timeout = None if self._due_at is None else max(0.0, self._due_at - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _deliver(self, delivery: DueDelivery, picked_at: datetime) -> None:
        try:
            destination = self.destination
            answer = await self.client.call(destination.url, destination.signing_secrets(datetime.now(UTC)),
                                            delivery.message_id, delivery.body, destination.headers)
            since_first = (picked_at - delivery.first_attempt_at).total_seconds() if delivery.first_attempt_at \
                else 0.0
            attempt = attempt_for(answer, delivery, since_first + answer.duration_s, self.policy)
            status = await self._record(delivery, picked_at, attempt)
            outcome = {DeliveryStatus.DELIVERED: "delivered", DeliveryStatus.RETRYING: "retried"}.get(
                attempt.status, "failed")
            self.metrics.outcome(destination.id, outcome)
            if attempt.status is not DeliveryStatus.RETRYING:
                self.metrics.settled(destination.id, delivery.message_id, delivery.changed_at,
                                     attempt.status is DeliveryStatus.DELIVERED)
            if status is DestinationStatus.PAUSED and self.destination.status is DestinationStatus.ACTIVE:
                log.warning("destination %s (%s) paused after %d consecutive failed calls; last: %s",
                            destination.id, destination.name, self.limits.pause_after, answer.error)
                self.destination = dataclasses.replace(self.destination, status=DestinationStatus.PAUSED)
        except Exception as exc:  # a bug in one call must not stop the destination: the delivery is called again
            log.exception("delivery %s to destination %s failed unexpectedly", delivery.message_id,
                          self.destination.id)
            self.last_error = f"a call failed unexpectedly: {type(exc).__name__}: {exc}"
            await asyncio.sleep(STORE_RETRY_S)  # its slot stays taken a while: no loop of instant retries
        finally:
            self.in_flight.pop(delivery.seq, None)
            self.wake()

    async def _record(self, delivery: DueDelivery, picked_at: datetime, attempt: Attempt) -> DestinationStatus | None:
        """Store the attempt, waiting for the store if it is away (unless stopping: the delivery then stays
        open, and is called again, with the same id, by the next worker)."""
        reason = f"paused after {self.limits.pause_after} consecutive failed calls; last: {attempt.answer.error}"
        while True:
            try:
                return await self.store.finish(self.destination.id, delivery, picked_at, attempt,
                                               self.limits.pause_after, reason)
            except DEPENDENCY_OUTAGES as exc:
                self.last_error = f"cannot record a call: {exc}"
                if self._stopping:
                    log.warning("could not record delivery %s while stopping: %s", delivery.message_id, exc)
                    return None
                await asyncio.sleep(STORE_RETRY_S)

    def health(self, queued: int) -> dict[str, object]:
        destination = self.destination
        return {"name": destination.name, "status": destination.status.value, "queued": queued,
                "inFlight": len(self.in_flight), "consecutiveFailures": destination.consecutive_failures,
                "pausedReason": destination.paused_reason, "lastError": destination.unusable or self.last_error
                or destination.last_error}

    @property
    def problem(self) -> str | None:
        """Why this sender cannot work now (its store is away, its secret does not open), or None."""
        return self.destination.unusable or self.last_error

