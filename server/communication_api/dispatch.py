"""Turning campaigns into email jobs: the scheduled fan-out and the on-enter trigger.

Both go through `Recipients`: render the template for each profile, record one delivery row per
(campaign, user) and publish a job on `email-jobs` for each row that is queued. Recording first
makes the fan-out resumable and the trigger at-most-once: a row that exists is never queued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message
from prometheus_client import CollectorRegistry, Counter

from server.communication_api.repository import CampaignRepository, CampaignRow
from server.communication_api.templates import MessageTemplate, RenderError
from server.domain.email import EmailJob
from server.domain.pipeline import MembershipOutput, membership_record
from server.runtime.health import ComponentHealth
from server.runtime.metrics import register_metric_name
from server.stores.deliveries import DeliveryEntry, DeliveryLedger, DeliveryStatus
from server.stores.kafka import AsyncProducer, group_consumer_config
from server.stores.outages import DEPENDENCY_OUTAGES
from server.stores.profile_store import ProfileStore
from server.stores.records import RejectedRecords, value_read_by

log = logging.getLogger("campaigns")
AUDIENCE_PAGE = 500
OPT_OUT_TRAIT = "emailOptOut"
EMAIL_TRAIT = "email"
JOBS_QUEUED = register_metric_name("am_campaign_jobs_queued_total")
RECIPIENTS_SKIPPED = register_metric_name("am_campaign_recipients_skipped_total")
RECORDS_REJECTED = register_metric_name("am_on_enter_records_rejected_total")


def _opted_out(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "1"))


def delivery_for(template: MessageTemplate, user_id: str, profile: Mapping[str, Any] | None,
                 ) -> tuple[DeliveryEntry, tuple[str, str] | None]:
    """What to do for one recipient: skip (opted out, no address), fail (template), or queue a message."""
    traits = (profile or {}).get("traits") or {}
    address = traits.get(EMAIL_TRAIT)
    email = address.strip() if isinstance(address, str) and "@" in address else None
    if _opted_out(traits.get(OPT_OUT_TRAIT)):
        return DeliveryEntry(user_id, email, DeliveryStatus.SKIPPED, f"opted out ({OPT_OUT_TRAIT})"), None
    if email is None:
        return DeliveryEntry(user_id, None, DeliveryStatus.SKIPPED, f"no email address (trait '{EMAIL_TRAIT}')"), None
    try:
        message = template.render(profile or {"userId": user_id})
    except RenderError as exc:
        return DeliveryEntry(user_id, email, DeliveryStatus.FAILED, str(exc)), None
    return DeliveryEntry(user_id, email, DeliveryStatus.QUEUED), message


class Recipients:
    """Renders, records and publishes the jobs of one campaign, a page of recipients at a time."""

    def __init__(self, ledger: DeliveryLedger, producer: AsyncProducer, topic: str,
                 registry: CollectorRegistry) -> None:
        self.ledger, self.producer, self.topic = ledger, producer, topic
        self.queued = Counter(JOBS_QUEUED.removesuffix("_total"), "Email jobs published on email-jobs",
                              ["trigger"], registry=registry)
        self.skipped = Counter(RECIPIENTS_SKIPPED.removesuffix("_total"), "Recipients not sent to",
                               ["reason"], registry=registry)

    async def queue(self, campaign: CampaignRow, profiles: Sequence[tuple[str, Mapping[str, Any] | None]]) -> int:
        """Queue jobs for `profiles` (user id, profile); returns how many jobs were published."""
        template = MessageTemplate(campaign.subject, campaign.body)
        decided = await asyncio.to_thread(lambda: [delivery_for(template, u, p) for u, p in profiles])
        messages = {entry.user_id: (entry.email, message) for entry, message in decided if message is not None}
        for entry, _ in decided:
            if entry.status is DeliveryStatus.SKIPPED:
                self.skipped.labels("opt_out" if entry.reason and "opted" in entry.reason else "no_email").inc()
        to_publish = await self.ledger.record(campaign.id, [entry for entry, _ in decided])
        now = datetime.now(UTC)
        jobs = [EmailJob(campaign.id, user, str(messages[user][0]), *messages[user][1], queued_at=now)
                for user in to_publish if user in messages]
        failures = await self.producer.send_many(self.topic, [(job.user_id, _encode(job)) for job in jobs])
        failed = next((f for f in failures if f is not None), None)
        if failed is not None:  # their rows stay queued: a retried fan-out publishes them again
            raise failed
        self.queued.labels(campaign.trigger).inc(len(jobs))
        return len(jobs)


def _encode(job: EmailJob) -> bytes:
    return json.dumps(job.to_json(), separators=(",", ":")).encode()


class FanOut:
    """Sends scheduled campaigns (`now`, `at`) to a snapshot of the segment's members, page by page."""

    def __init__(self, campaigns: CampaignRepository, store: ProfileStore, recipients: Recipients,
                 poll_s: float = 0.5) -> None:
        self.campaigns, self.store, self.recipients, self.poll_s = campaigns, store, recipients, poll_s
        self._wake = asyncio.Event()
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while (campaign := await self.campaigns.claim_due()) is not None:
                    await self.send(campaign)
                self.last_error = None
            except DEPENDENCY_OUTAGES as exc:
                self.last_error = str(exc)
                log.warning("campaign fan-out paused: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def send(self, campaign: CampaignRow) -> None:
        """Page through the members (by user id) and queue each page; resumable after a crash."""
        started, after, audience, queued = time.monotonic(), None, 0, 0
        while True:
            members = await self.store.segment_members(campaign.segment_id, after, AUDIENCE_PAGE)
            if not members:
                break
            users = [m.user_id for m in members]
            profiles = await self.store.get_profiles(users)
            queued += await self.recipients.queue(campaign, [(u, profiles.get(u)) for u in users])
            audience += len(users)
            after = users[-1]
            if not await self.campaigns.still_sending(campaign.id):
                log.info("campaign %s cancelled during fan-out after %d recipients", campaign.id, audience)
                return
        await self.campaigns.finish_fanout(campaign.id, "QUEUED", audience)
        log.info("campaign %s: %d recipients, %d jobs queued in %.2f s", campaign.id, audience, queued,
                 time.monotonic() - started)

    async def health(self) -> ComponentHealth:
        return ComponentHealth("DOWN" if self.last_error else "UP", {"lastError": self.last_error})


class OnEnterTrigger:
    """Consumes `segment-membership`; an `entered` change sends every active on-enter campaign of that
    segment to the user (once per user and campaign), if the change happened after the campaign began."""

    def __init__(self, bootstrap: str, topic: str, group: str, campaigns: CampaignRepository,
                 store: ProfileStore, recipients: Recipients, registry: CollectorRegistry,
                 refresh_s: float = 1.0, session_timeout_ms: int = 6000) -> None:
        self.campaigns, self.store, self.recipients, self.refresh_s = campaigns, store, recipients, refresh_s
        self.rejected = RejectedRecords.counted(log, registry, RECORDS_REJECTED,
                                                "segment-membership records the trigger could not read, skipped")
        # a consumer exists only while `run` does
        self.consumer_config = group_consumer_config(bootstrap, group, session_timeout_ms)
        self.topic = topic
        self._active: dict[str, list[CampaignRow]] = {}
        self._loaded_at = 0.0
        self.last_error: str | None = None

    def refresh(self) -> None:
        """Reload the active campaigns on the next batch (called when one is created or cancelled)."""
        self._loaded_at = 0.0

    async def run(self) -> None:
        consumer = Consumer(self.consumer_config)
        await asyncio.to_thread(consumer.subscribe, [self.topic])
        try:
            while True:
                messages = await asyncio.to_thread(consumer.consume, 200, 0.2)
                batch = self.read([m for m in messages if not m.error() and m.value()])
                while True:  # a batch is retried until it is handled: offsets only move past handled records
                    try:
                        await self.handle(batch)
                        self.last_error = None
                        break
                    except DEPENDENCY_OUTAGES as exc:
                        self.last_error = str(exc)
                        log.warning("on-enter trigger paused: %s", exc)
                        await asyncio.sleep(1)
                if messages:
                    with contextlib.suppress(KafkaException):  # a rebalance took the partition: replayed safely
                        await asyncio.to_thread(consumer.commit, asynchronous=False)
        finally:
            await asyncio.to_thread(consumer.close)

    def read(self, messages: list[Message]) -> list[MembershipOutput]:
        """The changes in `messages`; probe echoes are not for us, unreadable records are skipped (and counted)."""
        records = self.rejected.readable(messages, value_read_by(membership_record))
        return [record for record in records if isinstance(record, MembershipOutput)]

    async def handle(self, changes: list[MembershipOutput]) -> None:
        if time.monotonic() - self._loaded_at > self.refresh_s:
            self._active, self._loaded_at = await self.campaigns.active_on_enter(), time.monotonic()
        by_campaign: dict[str, tuple[CampaignRow, dict[str, Mapping[str, Any] | None]]] = {}
        for output in changes:
            change = output.change
            if change.change != "entered":
                continue
            for campaign in self._active.get(change.segment_id, []):
                if change.at >= campaign.created_at:
                    users = by_campaign.setdefault(campaign.id, (campaign, {}))[1]
                    users[change.user_id] = output.profile.to_json() if output.profile is not None else None
        for campaign, users in by_campaign.values():
            missing = [u for u, p in users.items() if p is None]
            stored = await self.store.get_profiles(missing) if missing else {}
            await self.recipients.queue(campaign, [(u, p if p is not None else stored.get(u))
                                                   for u, p in users.items()])

    async def health(self) -> ComponentHealth:
        return ComponentHealth("DOWN" if self.last_error else "UP", {"lastError": self.last_error})
