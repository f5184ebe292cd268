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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message
from prometheus_client import CollectorRegistry, Counter

from server.communication_api.repository import CampaignRepository, CampaignRow
from server.communication_api.templates import MessageTemplate, RenderedMail, RenderError
from server.domain.email import EmailJob, normalized_address, zone
from server.domain.pipeline import MembershipOutput, membership_record
from server.runtime.health import ComponentHealth
from server.runtime.metrics import register_metric_name
from server.runtime.tokens import UnsubscribeLinks
from server.stores.deliveries import DeliveryEntry, DeliveryLedger, DeliveryStatus
from server.stores.kafka import AsyncProducer, group_consumer_config
from server.stores.outages import DEPENDENCY_OUTAGES
from server.stores.profile_store import ProfileStore
from server.stores.records import RejectedRecords, value_read_by
from server.stores.suppressions import SuppressionList, SuppressionReason

log = logging.getLogger("campaigns")
AUDIENCE_PAGE = 500
OPT_OUT_TRAIT = "emailOptOut"
EMAIL_TRAIT = "email"
TIMEZONE_TRAIT = "timezone"
JOBS_QUEUED = register_metric_name("am_campaign_jobs_queued_total")
RECIPIENTS_SKIPPED = register_metric_name("am_campaign_recipients_skipped_total")
RECORDS_REJECTED = register_metric_name("am_on_enter_records_rejected_total")


def _opted_out(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "1"))


def address_of(profile: Mapping[str, Any] | None) -> str | None:
    """The profile's email trait when it looks like an address."""
    address = ((profile or {}).get("traits") or {}).get(EMAIL_TRAIT)
    return address.strip() if isinstance(address, str) and "@" in address else None


@dataclass(frozen=True, slots=True)
class Decision:
    """For one recipient: the delivery row to record, the mail when it is queued, a suppression to add, and
    why it was skipped (the metric's label)."""

    entry: DeliveryEntry
    mail: RenderedMail | None = None
    suppress: SuppressionReason | None = None
    skipped_for: str | None = None


def delivery_for(template: MessageTemplate, user_id: str, profile: Mapping[str, Any] | None,
                 suppressed: Mapping[str, SuppressionReason] | None = None,
                 extra: Mapping[str, Any] | None = None) -> Decision:
    """What to do for one recipient: skip (suppressed, opted out, no address), fail (template), or queue a mail.
    `suppressed` holds the page's suppressed addresses (normalized); `extra` names of the mail itself."""
    traits = (profile or {}).get("traits") or {}
    email = address_of(profile)
    known = (suppressed or {}).get(normalized_address(email)) if email else None
    if known is not None:
        return Decision(DeliveryEntry(user_id, email, DeliveryStatus.SKIPPED, known.skip_reason),
                        skipped_for=known.value)
    if _opted_out(traits.get(OPT_OUT_TRAIT)):
        opted_out = SuppressionReason.OPTED_OUT
        return Decision(DeliveryEntry(user_id, email, DeliveryStatus.SKIPPED, opted_out.skip_reason),
                        suppress=opted_out if email else None,
                        skipped_for=opted_out.value if email else "no_email")
    if email is None:
        reason = f"no email address (trait '{EMAIL_TRAIT}')"
        return Decision(DeliveryEntry(user_id, None, DeliveryStatus.SKIPPED, reason), skipped_for="no_email")
    try:
        mail = template.render(profile or {"userId": user_id}, extra)
    except RenderError as exc:
        return Decision(DeliveryEntry(user_id, email, DeliveryStatus.FAILED, str(exc)))
    return Decision(DeliveryEntry(user_id, email, DeliveryStatus.QUEUED), mail)


class Recipients:
    """Renders, records and publishes the jobs of one campaign, a page of recipients at a time."""

    def __init__(self, ledger: DeliveryLedger, suppressions: SuppressionList, links: UnsubscribeLinks,
                 producer: AsyncProducer, topic: str, registry: CollectorRegistry) -> None:
        self.ledger, self.suppressions, self.links, self.producer, self.topic = (
            ledger, suppressions, links, producer, topic)
        self.queued = Counter(JOBS_QUEUED.removesuffix("_total"), "Email jobs published on email-jobs",
                              ["trigger"], registry=registry)
        self.skipped = Counter(RECIPIENTS_SKIPPED.removesuffix("_total"), "Recipients not sent to at the fan-out",
                               ["reason"], registry=registry)

    async def queue(self, campaign: CampaignRow, profiles: Sequence[tuple[str, Mapping[str, Any] | None]]) -> int:
        """Queue jobs for `profiles` (user id, profile); returns how many jobs were published."""
        template = MessageTemplate(campaign.subject, campaign.body, campaign.body_html)
        suppressed = await self.suppressions.reasons([a for _, p in profiles if (a := address_of(p))])

        def decide(user: str, profile: Mapping[str, Any] | None) -> tuple[Decision, str]:
            url = self.links.url(campaign.id, user)
            return delivery_for(template, user, profile, suppressed, {"unsubscribe_url": url}), url

        decided = await asyncio.to_thread(lambda: [(u, p, *decide(u, p)) for u, p in profiles])
        await self.suppressions.add_many([(d.entry.email, d.suppress, campaign.id, u) for u, _, d, _ in decided
                                          if d.suppress is not None and d.entry.email is not None])
        for _, _, decision, _ in decided:
            if decision.skipped_for is not None:
                self.skipped.labels(decision.skipped_for).inc()
        to_publish = set(await self.ledger.record(campaign.id, [d.entry for _, _, d, _ in decided]))
        now = datetime.now(UTC)
        jobs = [EmailJob(campaign.id, user, str(d.entry.email), d.mail.subject, d.mail.body, queued_at=now,
                         body_html=d.mail.body_html, unsubscribe_url=url,
                         unsubscribe_mailto=self.links.mailto(campaign.id, user), timezone=_timezone_of(profile))
                for user, profile, d, url in decided if d.mail is not None and user in to_publish]
        failures = await self.producer.send_many(self.topic, [(job.user_id, _encode(job)) for job in jobs])
        failed = next((f for f in failures if f is not None), None)
        if failed is not None:  # their rows stay queued: a retried fan-out publishes them again
            raise failed
        self.queued.labels(campaign.trigger).inc(len(jobs))
        return len(jobs)


def _timezone_of(profile: Mapping[str, Any] | None) -> str | None:
    """The recipient's `timezone` trait when it names an IANA zone (quiet hours use the campaign's otherwise)."""
    value = ((profile or {}).get("traits") or {}).get(TIMEZONE_TRAIT)
    return value if isinstance(value, str) and zone(value) is not None else None


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
        await self.campaigns.finish_fanout(campaign.id, audience)
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
