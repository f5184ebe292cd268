"""Consumes `email-jobs`: claim the delivery row, send, record the outcome; retry, then dead-letter.

Each job is sent at most once (see `server.stores.deliveries`). Transient failures (SMTP server
down, 4xx) are retried with exponential backoff up to `email_max_attempts`; permanent ones (5xx)
and exhausted retries mark the delivery failed and copy the job to `email-jobs-dead-letter`. A
permanent refusal of the recipient (a hard bounce) also suppresses the address.
Offsets are committed once every job of a batch has reached an outcome; a deferred job (quiet hours) has
one too: the ledger keeps it, and the sweep publishes it again when the recipient's quiet hours end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
from confluent_kafka import Consumer, KafkaException, Message
from prometheus_client import CollectorRegistry, Counter, Histogram
from psycopg_pool import PoolTimeout

from server.domain.email import EmailJob
from server.email_worker.smtp import DeliveryFailed, SmtpSender
from server.runtime.errors import DependencyUnavailable
from server.runtime.health import ComponentHealth
from server.runtime.metrics import LATENCY_BUCKETS, register_metric_name
from server.runtime.settings import ServiceSettings
from server.stores.deliveries import ClaimResult, DeliveryLedger, DeliveryStatus
from server.stores.kafka import AsyncProducer, group_consumer_config
from server.stores.suppressions import SuppressionList, SuppressionReason
from server.stores.topics import EMAIL_DEAD_LETTERS, EMAIL_GROUP, EMAIL_JOBS

log = logging.getLogger("email-worker")
EMAILS = register_metric_name("am_emails_total")
SMTP_SECONDS = register_metric_name("am_smtp_send_seconds")
SWEEP_EVERY_S = 10.0
STORE_ERRORS = (DependencyUnavailable, psycopg.OperationalError, PoolTimeout)


class EmailWorker:
    def __init__(self, settings: ServiceSettings, ledger: DeliveryLedger, suppressions: SuppressionList,
                 sender: SmtpSender, producer: AsyncProducer, registry: CollectorRegistry) -> None:
        self.settings, self.ledger, self.suppressions, self.sender, self.producer = (
            settings, ledger, suppressions, sender, producer)
        self.dead_letter_topic = settings.topic(EMAIL_DEAD_LETTERS)
        self.topic = settings.topic(EMAIL_JOBS)
        # the consumer is made by `run`: a worker that is built but never run holds no client
        self.consumer_config = group_consumer_config(settings.kafka_bootstrap, settings.topic_prefix + EMAIL_GROUP,
                                                     settings.kafka_session_timeout_ms)
        self.slots = asyncio.Semaphore(settings.email_concurrency)
        # its own threads, as many as the slots: asyncio's default pool has cpu + 4 (6 here), fewer than 8 slots
        self.smtp_threads = ThreadPoolExecutor(settings.email_concurrency, thread_name_prefix="smtp")
        self.outcomes = Counter(EMAILS.removesuffix("_total"), "Email jobs by outcome",
                                ["outcome"], registry=registry)
        self.smtp_seconds = Histogram(SMTP_SECONDS, "Time to hand one mail to the SMTP server",
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.last_error: str | None = None
        self.stopping = asyncio.Event()
        self._last_sweep = 0.0

    async def run(self) -> None:
        """Consume until `stop()`: the batch in hand is finished first, so no claimed mail is abandoned."""
        consumer = Consumer(self.consumer_config)
        await asyncio.to_thread(consumer.subscribe, [self.topic])
        try:
            while not self.stopping.is_set():
                messages = await asyncio.to_thread(consumer.consume, 100, 0.2)
                jobs = [m for m in messages if not m.error() and m.value()]
                finished = await asyncio.gather(*(self._handle(m) for m in jobs))
                if messages and all(finished):
                    with contextlib.suppress(KafkaException):  # a rebalance took the partition: replay is safe
                        await asyncio.to_thread(consumer.commit, asynchronous=False)
                await self._sweep()
        finally:
            await asyncio.to_thread(consumer.close)
            self.smtp_threads.shutdown(wait=False)

    def stop(self) -> None:
        """Take no new job; mails being handed to SMTP finish, jobs waiting for a retry are left
        queued and uncommitted (read again by the next worker: the ledger keeps them single)."""
        self.stopping.set()

    async def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = time.monotonic()
        with contextlib.suppress(*STORE_ERRORS):
            expired = await self.ledger.expire_stale_claims(self.settings.email_claim_lease_s)
            if expired:
                self.outcomes.labels("in_doubt").inc(expired)
                log.warning("%d deliveries were claimed by a worker that stopped; marked failed (in doubt)", expired)
            await self.ledger.complete_finished()
            await self._publish_due_deferred()

    async def _publish_due_deferred(self) -> None:
        """Jobs whose quiet hours have ended go back on email-jobs (a failed publish is retried next sweep)."""
        due = await self.ledger.due_deferred(datetime.now(UTC))
        if not due:
            return
        failures = await self.producer.send_many(self.topic, [(j.user_id, json.dumps(j.to_json()).encode())
                                                              for j in due])
        published = sum(1 for f in failures if f is None)
        self.outcomes.labels("resumed").inc(published)
        log.info("%d deferred mails published again after quiet hours (%d failed)", published, len(due) - published)

    async def _handle(self, message: Message) -> bool:
        """Bring one job to an outcome; False when stopping left it queued for the next worker."""
        try:
            job = EmailJob.from_json(json.loads(message.value() or b""))
        except (ValueError, KeyError) as exc:
            log.error("dead-lettering an unreadable job at offset %s: %s", message.offset(), exc)
            await self._dead_letter(message.key(), message.value(), f"unreadable job: {exc}")
            return True
        while True:  # the store may be briefly unavailable: the job waits, it is not lost or sent twice
            try:
                async with self.slots:
                    if self.stopping.is_set():
                        return False
                    finished = await self.deliver(job)
                self.last_error = None
                return finished
            except STORE_ERRORS as exc:
                self.last_error = str(exc)
                log.warning("delivery store unavailable, job %s waits: %s", job.idempotency_key, exc)
                if self.stopping.is_set():
                    return False
                await asyncio.sleep(1)

    async def deliver(self, job: EmailJob) -> bool:
        """Claim, send with retries, record the outcome; False if stopping cut the retries short."""
        while True:
            claim = await self.ledger.claim(job)
            if claim.result is not ClaimResult.SEND:
                self.outcomes.labels(claim.result.value).inc()
                return True
            try:
                started = time.perf_counter()
                await asyncio.get_running_loop().run_in_executor(self.smtp_threads, self.sender.send, job)
                self.smtp_seconds.observe(time.perf_counter() - started)
            except DeliveryFailed as exc:
                if exc.permanent or claim.attempts >= self.settings.email_max_attempts:
                    reason = f"{exc} (after {claim.attempts} attempt{'s' if claim.attempts > 1 else ''})"
                    if exc.hard_bounce:  # before the outcome: the campaign may complete with it
                        await self.suppressions.add(job.to, SuppressionReason.HARD_BOUNCE, job.campaign_id,
                                                    job.user_id, str(exc))
                    await self.ledger.finish(job.campaign_id, job.user_id, DeliveryStatus.FAILED, reason)
                    self.outcomes.labels("failed").inc()
                    await self._dead_letter(job.user_id.encode(), json.dumps(job.to_json()).encode(), reason)
                    return True
                await self.ledger.finish(job.campaign_id, job.user_id, DeliveryStatus.QUEUED, f"retrying: {exc}")
                self.outcomes.labels("retried").inc()
                with contextlib.suppress(TimeoutError):  # a stop cuts the backoff short
                    await asyncio.wait_for(self.stopping.wait(),
                                           self.settings.email_retry_base_s * 2 ** (claim.attempts - 1))
                if self.stopping.is_set():
                    return False
                continue
            await self.ledger.finish(job.campaign_id, job.user_id, DeliveryStatus.SENT)
            self.outcomes.labels("sent").inc()
            return True

    async def _dead_letter(self, key: bytes | str | None, value: bytes | None, reason: str) -> None:
        record = {"reason": reason, "job": (value or b"").decode(errors="replace")}
        try:
            await self.producer.send(self.dead_letter_topic, key, json.dumps(record).encode())
        except DependencyUnavailable as exc:  # the delivery row already says failed, with the reason
            log.error("could not dead-letter a job (%s): %s", reason, exc)

    async def health(self) -> ComponentHealth:
        return ComponentHealth("DOWN" if self.last_error else "UP", {"lastError": self.last_error})
