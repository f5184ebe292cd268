"""What every ingestion endpoint shares: limiter, dedupe, identity, the producer and the metrics.

An event is produced on `user-events` keyed by its user: the userId; else the user its anonymous id is
linked to (looked up once per request, `canonical_ids`); else the anonymous id, which the rule job
forwards should it learn of a link later. An event carrying both ids also links them (an implied
identify): the store decides, and an `IdentifyRecord` keyed by the anonymous id tells the rule job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from fastapi import Request

from server.domain.events import UserEvent
from server.domain.pipeline import MAX_ALIASES, IdentifyRecord
from server.ingestion_api.identity import LinkCache, made, refusal
from server.ingestion_api.metrics import IngestionMetrics
from server.ingestion_api.schemas import EventIn, IdentityOutcome
from server.runtime.auth import caller_id
from server.runtime.errors import Conflict, DependencyUnavailable, RateLimited
from server.runtime.settings import ServiceSettings
from server.stores.kafka import AsyncProducer
from server.stores.outages import DEPENDENCY_OUTAGES
from server.stores.profile_store import AliasLink, ProfileStore
from server.stores.rate_limit import RateLimiter, RecentIds
from server.stores.topics import USER_EVENTS

log = logging.getLogger("server.ingestion")
Pair = tuple[str, str]  # (anonymous id, user id)


@dataclass(frozen=True, slots=True)
class Stored:
    """An event the broker has: `fresh` unless it repeated an eventId (then it was not produced again)."""

    event: UserEvent
    fresh: bool
    identity: IdentityOutcome | None = None


Outcome = Stored | DependencyUnavailable


def _broker_failure(failure: DependencyUnavailable) -> DependencyUnavailable:
    return DependencyUnavailable("kafka", str(failure).removeprefix("kafka unavailable: "), retry_after_s=2)


def _pair(event: UserEvent) -> Pair | None:
    """The ids an event links: a userId and a different anonymousId."""
    if event.anonymous or event.anonymous_id is None or event.anonymous_id == event.user_id:
        return None
    return event.anonymous_id, event.user_id


class Ingestor:
    """Validated events in, broker acknowledgements out; links anonymous ids on the way."""

    def __init__(self, settings: ServiceSettings, producer: AsyncProducer, store: ProfileStore, limiter: RateLimiter,
                 recent: RecentIds, metrics: IngestionMetrics, links: LinkCache | None = None) -> None:
        self.topic = settings.topic(USER_EVENTS)
        self.timeout_s = settings.produce_timeout_s
        self.producer, self.store, self.limiter, self.recent, self.metrics = producer, store, limiter, recent, metrics
        self.links = links if links is not None else LinkCache()

    def admit(self, request: Request, count: int) -> None:
        """Take `count` events from the caller's rate (RateLimited when over it)."""
        self.admit_client(client_of(request), count)

    def admit_client(self, client: str, count: int) -> None:
        """Take `count` events from `client`'s rate (RateLimited when over it); `client` as `client_name` says."""
        decision = self.limiter.take(client, count)
        if not decision.allowed:
            self.metrics.rate_limited.inc(count)
            raise RateLimited(decision.retry_after_s)

    async def store_one(self, body: EventIn, received_at: datetime) -> Stored:
        """Produce one event; raises DependencyUnavailable when the broker did not take it."""
        outcome = (await self.store_many([body], received_at))[0]
        if isinstance(outcome, DependencyUnavailable):
            raise outcome
        return outcome

    async def store_many(self, bodies: Sequence[EventIn], received_at: datetime) -> list[Outcome]:
        """Produce events in one go: per event, Stored, or why the broker did not take it (then its eventId
        is forgotten, so the client's retry goes through). An event whose link could not be told to the rule
        job fails too, though the event itself is kept: its retry is a duplicate that finishes the link."""
        new_ids = iter(new_event_ids(sum(1 for b in bodies if b.eventId is None)))
        events = [_event(b, received_at, b.eventId or next(new_ids)) for b in bodies]
        fresh = [i for i, e in enumerate(events) if self.recent.first_seen(e.event_id)]
        if len(fresh) < len(events):
            self.metrics.duplicates.inc(len(events) - len(fresh))
        routed = await self._route([events[i] for i in fresh])
        for i, event in zip(fresh, routed, strict=True):
            events[i] = event
        identities, links = await self._link({p for e in events if (p := _pair(e)) is not None})
        identifies = [(pair, IdentifyRecord(pair[0], pair[1], received_at)) for pair in links]
        started = time.perf_counter()
        failures = await self.producer.send_many(
            self.topic,
            [(events[i].user_id, orjson.dumps(events[i].to_json())) for i in fresh]
            + [(record.anonymous_id, orjson.dumps(record.to_json())) for _, record in identifies],
            self.timeout_s)
        elapsed = time.perf_counter() - started
        unannounced = self._settle_links(identifies, failures[len(fresh):], links, identities)
        produced = dict(zip(fresh, failures[:len(fresh)], strict=True))
        outcomes: list[Outcome] = []
        accepted: dict[str, int] = {}
        for i, event in enumerate(events):
            failure = produced.get(i)
            if failure is not None:
                self.recent.forget(event.event_id)
                self.metrics.rejected.labels("broker_unavailable").inc()
                outcomes.append(_broker_failure(failure))
                continue
            if i in produced:
                self.metrics.produce_latency.observe(elapsed)
                accepted[event.event_type] = accepted.get(event.event_type, 0) + 1
            pair = _pair(event)
            if pair in unannounced:
                outcomes.append(_broker_failure(unannounced[pair]))
            else:
                outcomes.append(Stored(event, i in produced, identities.get(pair) if pair else None))
        self.metrics.count_accepted(accepted)
        return outcomes

    async def identify(self, anonymous_id: str, user_id: str, traits: Mapping[str, Any], at: datetime) -> AliasLink:
        """Link the ids in the store, then tell the rule job; Conflict when the store refuses the link,
        DependencyUnavailable when the broker did not take the record (a retry finds the link made, and
        produces the record again: the job ignores an identify it has applied)."""
        link = await self.store.link_alias(anonymous_id, user_id, MAX_ALIASES)
        if not link.made:
            self.metrics.identity_refusals.labels(link.status).inc()
            raise Conflict(refusal(anonymous_id, user_id, link))
        record = IdentifyRecord(anonymous_id, user_id, at, dict(traits))
        [failure] = await self.producer.send_many(self.topic, [(anonymous_id, orjson.dumps(record.to_json()))],
                                                  self.timeout_s)
        if failure is not None:
            raise _broker_failure(failure)
        self.links.put(anonymous_id, user_id)
        return link

    async def _route(self, events: list[UserEvent]) -> list[UserEvent]:
        """Anonymous events whose id is linked, sent to their user; one store query for the ids not cached."""
        unknown = {e.user_id for e in events if e.anonymous and self.links.get(e.user_id) is None}
        if unknown:
            try:
                owners = await self.store.canonical_ids(sorted(unknown))
            except DEPENDENCY_OUTAGES as exc:  # keyed by the anonymous id, the rule job forwards them itself
                log.warning("anonymous ids not resolved, the profile store did not answer: %s", exc)
                owners = {}
            for anonymous_id, user_id in owners.items():
                self.links.put(anonymous_id, user_id)
        routed = []
        for event in events:
            owner = self.links.get(event.user_id) if event.anonymous else None
            routed.append(event.routed_to(owner) if owner is not None else event)
        return routed

    async def _link(self, pairs: set[Pair]) -> tuple[dict[Pair, IdentityOutcome], dict[Pair, AliasLink]]:
        """Link each pair not known yet: what each pair's events say, and the links the rule job must hear of."""
        identities: dict[Pair, IdentityOutcome] = {}
        made: dict[Pair, AliasLink] = {}
        for anonymous_id, user_id in sorted(pairs):
            known = self.links.get(anonymous_id)
            if known == user_id:
                identities[anonymous_id, user_id] = IdentityOutcome(status="already linked")
                continue
            try:
                link = AliasLink("conflict", known) if known is not None \
                    else await self.store.link_alias(anonymous_id, user_id, MAX_ALIASES)
            except DEPENDENCY_OUTAGES as exc:
                self.metrics.identity_refusals.labels("unavailable").inc()
                identities[anonymous_id, user_id] = IdentityOutcome(
                    status="not linked", detail=f"the profile store did not answer ({type(exc).__name__}); "
                    "nothing is merged: send the ids again to link them")
                continue
            if link.made:
                made[anonymous_id, user_id] = link
            else:
                self.metrics.identity_refusals.labels(link.status).inc()
                identities[anonymous_id, user_id] = IdentityOutcome(
                    status="not linked", detail=refusal(anonymous_id, user_id, link) + "; nothing is merged")
        return identities, made

    def _settle_links(self, identifies: list[tuple[Pair, IdentifyRecord]],
                      failures: Sequence[DependencyUnavailable | None], links: dict[Pair, AliasLink],
                      identities: dict[Pair, IdentityOutcome]) -> dict[Pair, DependencyUnavailable]:
        """Remember the links the broker took and say so; the pairs whose record it did not take, and why."""
        unannounced: dict[Pair, DependencyUnavailable] = {}
        for (pair, _), failure in zip(identifies, failures, strict=True):
            if failure is not None:
                unannounced[pair] = failure
                continue
            self.links.put(*pair)
            identities[pair] = IdentityOutcome(status=made(links[pair]))
        return unannounced


def new_event_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as text, from one read of the OS's randomness instead of one each."""
    raw = bytearray(os.urandom(16 * count))
    ids = []
    for at in range(0, 16 * count, 16):
        raw[at + 6] = (raw[at + 6] & 0x0F) | 0x40  # version 4
        raw[at + 8] = (raw[at + 8] & 0x3F) | 0x80  # the RFC 4122 variant
        text = raw[at:at + 16].hex()
        ids.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")
    return ids


def _event(body: EventIn, received_at: datetime, event_id: str) -> UserEvent:
    user_id = body.userId or body.anonymousId or ""  # EventIn requires one of the two
    return UserEvent(user_id=user_id, event_type=body.eventType, event_id=event_id,
                     timestamp=body.timestamp or received_at, properties=body.properties, received_at=received_at,
                     anonymous_id=body.anonymousId, anonymous=body.userId is None)


def client_of(request: Request) -> str:
    """Whose rate a request counts against (`client_name` of what the request carries)."""
    return client_name(caller_id(request), request.headers.get("x-api-key"),
                       request.client.host if request.client else None)


def client_name(caller: str | None, api_key: str | None, host: str | None) -> str:
    """The authenticated key's id; with keys off the caller's own X-API-Key (hashed), else its address."""
    return caller or _hashed(api_key) or host or "unknown"


def _hashed(header: str | None) -> str | None:
    """A client's self-chosen X-API-Key (keys off) names its bucket, but is not kept as it was sent."""
    return "header:" + hashlib.sha256(header.encode()).hexdigest()[:16] if header else None

