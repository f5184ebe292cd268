"""POST /api/events and /api/events/batch: validate, limit, dedupe, and answer only after the ack."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import ValidationError

from server.domain.events import UserEvent
from server.ingestion_api.metrics import IngestionMetrics
from server.ingestion_api.schemas import (
    MAX_EVENT_BYTES,
    BatchIn,
    BatchResult,
    EventAccepted,
    EventIn,
    EventResult,
)
from server.runtime.auth import caller_id
from server.runtime.errors import DependencyUnavailable, RateLimited
from server.runtime.routing import PER_ITEM, StorableRoute
from server.runtime.settings import ServiceSettings
from server.runtime.storable import UnstorableValue, describe, encode
from server.stores.kafka import AsyncProducer
from server.stores.rate_limit import RateLimiter, RecentIds
from server.stores.topics import USER_EVENTS

router = APIRouter(prefix="/api/events", tags=["events"], route_class=StorableRoute)


class Ingestor:
    """Everything the two endpoints share: limiter, dedupe, producer, metrics."""

    def __init__(self, settings: ServiceSettings, producer: AsyncProducer, limiter: RateLimiter,
                 recent: RecentIds, metrics: IngestionMetrics) -> None:
        self.topic = settings.topic(USER_EVENTS)
        self.timeout_s = settings.produce_timeout_s
        self.producer, self.limiter, self.recent, self.metrics = producer, limiter, recent, metrics

    def admit(self, request: Request, count: int) -> None:
        client = caller_id(request) or _hashed(request.headers.get("x-api-key")) \
            or (request.client.host if request.client else "unknown")
        decision = self.limiter.take(client, count)
        if not decision.allowed:
            self.metrics.rate_limited.inc(count)
            raise RateLimited(decision.retry_after_s)

    async def store(self, body: EventIn, received_at: datetime) -> tuple[UserEvent, bool]:
        """Produce one event; (event, False) when it is a duplicate and was not produced again."""
        outcome = (await self.store_many([body], received_at))[0]
        if isinstance(outcome, DependencyUnavailable):
            raise outcome
        return outcome

    async def store_many(self, bodies: Sequence[EventIn], received_at: datetime
                         ) -> list[tuple[UserEvent, bool] | DependencyUnavailable]:
        """Produce events in one go; per event (event, stored?) — not stored when a duplicate — or why
        the broker did not take it (then its eventId is forgotten, so the client's retry goes through)."""
        events = [UserEvent(user_id=b.userId, event_type=b.eventType, event_id=b.eventId or str(uuid.uuid4()),
                            timestamp=b.timestamp or received_at, properties=b.properties, received_at=received_at)
                  for b in bodies]
        results: list[tuple[UserEvent, bool] | DependencyUnavailable] = [(e, False) for e in events]
        fresh = [i for i, e in enumerate(events) if self.recent.first_seen(e.event_id)]
        self.metrics.duplicates.inc(len(events) - len(fresh))
        started = time.perf_counter()
        failures = await self.producer.send_many(
            self.topic, [(events[i].user_id, orjson.dumps(events[i].to_json())) for i in fresh], self.timeout_s)
        elapsed = time.perf_counter() - started
        for i, failure in zip(fresh, failures, strict=True):
            event = events[i]
            if failure is None:
                self.metrics.produce_latency.observe(elapsed)
                self.metrics.accepted.labels(event.event_type).inc()
                results[i] = (event, True)
            else:
                self.recent.forget(event.event_id)
                self.metrics.rejected.labels("broker_unavailable").inc()
                results[i] = DependencyUnavailable("kafka", str(failure).removeprefix("kafka unavailable: "),
                                                   retry_after_s=2)
        return results


async def get_ingestor(request: Request) -> Ingestor:  # async: a sync dependency costs a thread hop per request
    return request.app.state.ingestor  # type: ignore[no-any-return]


IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=EventAccepted,
             summary="Accept one event (202 only once the broker has it)",
             responses={413: {"description": "Over 32 KB"}, 429: {"description": "Over the client's rate"},
                        503: {"description": "The broker did not acknowledge in time; retry"}})
async def ingest(body: EventIn, request: Request, ingestor: IngestorDep) -> EventAccepted:
    ingestor.admit(request, 1)
    event, stored = await ingestor.store(body, datetime.now(UTC))
    return EventAccepted(eventId=event.event_id, status="accepted" if stored else "duplicate")


@router.post("/batch", response_model=BatchResult, summary="Accept up to 500 events, each judged on its own",
             responses={202: {"description": "Every event accepted"},
                        207: {"description": "Some events rejected or not stored: see results"}},
             openapi_extra={PER_ITEM: "events"})  # an unstorable event is rejected here, not the whole batch
async def ingest_batch(body: BatchIn, request: Request, response: Response, ingestor: IngestorDep) -> BatchResult:
    received_at = datetime.now(UTC)
    results: list[EventResult] = []
    valid: list[tuple[int, EventIn]] = []
    for index, raw in enumerate(body.events):
        refusal = _refusal(raw)
        if refusal:
            reason, errors = refusal
            results.append(EventResult(index=index, status="rejected", errors=errors))
            ingestor.metrics.rejected.labels(reason).inc()
            continue
        try:
            valid.append((index, EventIn.model_validate(raw)))
        except ValidationError as exc:
            errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            results.append(EventResult(index=index, status="rejected", errors=errors))
            ingestor.metrics.rejected.labels("invalid").inc()
    if valid:
        ingestor.admit(request, len(valid))
    outcomes = await ingestor.store_many([event for _, event in valid], received_at)
    for (index, event), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, DependencyUnavailable):
            results.append(EventResult(index=index, status="failed", eventId=event.eventId,
                                       errors=[str(outcome)]))
        else:
            stored_event, stored = outcome
            results.append(EventResult(index=index, status="accepted" if stored else "duplicate",
                                       eventId=stored_event.event_id))
    results.sort(key=lambda r: r.index)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate", "rejected", "failed")}
    if valid and counts["failed"] == len(valid) and not counts["rejected"]:
        raise DependencyUnavailable("kafka", "no event of the batch was acknowledged", retry_after_s=2)
    response.status_code = 202 if counts["accepted"] + counts["duplicate"] == len(results) else 207
    return BatchResult(accepted=counts["accepted"], duplicates=counts["duplicate"], rejected=counts["rejected"],
                       failed=counts["failed"], results=results)


def _hashed(header: str | None) -> str | None:
    """A client's self-chosen X-API-Key (keys off) names its bucket, but is not kept as it was sent."""
    return "header:" + hashlib.sha256(header.encode()).hexdigest()[:16] if header else None


def _refusal(raw: Any) -> tuple[str, list[str]] | None:
    """Why one event of a batch cannot be taken before it is validated: (metric reason, errors), or None."""
    try:
        size = len(encode(raw))
    except UnstorableValue as exc:
        return "unstorable", [f"{describe(loc)}: {message}" for loc, message in exc.problems]
    if size > MAX_EVENT_BYTES:
        return "too_large", [f"event is {size} bytes, over {MAX_EVENT_BYTES // 1024} KB"]
    return None
