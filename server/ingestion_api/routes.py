"""POST /api/events, /api/events/batch and /api/identify: validate, limit, dedupe, and answer only after the ack."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import ValidationError

from server.ingestion_api.identity import made
from server.ingestion_api.ingestor import Ingestor, Outcome
from server.ingestion_api.schemas import (
    MAX_EVENT_BYTES,
    BatchIn,
    BatchResult,
    EventAccepted,
    EventIn,
    EventResult,
    IdentifyAccepted,
    IdentifyIn,
)
from server.runtime.errors import DependencyUnavailable
from server.runtime.routing import PER_ITEM, StorableRoute
from server.runtime.storable import UnstorableValue, describe, encode

router = APIRouter(prefix="/api/events", tags=["events"], route_class=StorableRoute)
identity = APIRouter(prefix="/api/identify", tags=["identity"], route_class=StorableRoute)


async def get_ingestor(request: Request) -> Ingestor:  # async: a sync dependency costs a thread hop per request
    return request.app.state.ingestor  # type: ignore[no-any-return]


IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=EventAccepted,
             summary="Accept one event (202 only once the broker has it)",
             responses={413: {"description": "Over 32 KB"}, 429: {"description": "Over the client's rate"},
                        503: {"description": "The broker did not acknowledge in time; retry"}})
async def ingest(body: EventIn, request: Request, ingestor: IngestorDep) -> EventAccepted:
    ingestor.admit(request, 1)
    stored = await ingestor.store_one(body, datetime.now(UTC))
    return EventAccepted(eventId=stored.event.event_id, status="accepted" if stored.fresh else "duplicate",
                         userId=body.userId, anonymousId=body.anonymousId, identity=stored.identity)


@router.post("/batch", response_model=BatchResult, summary="Accept up to 500 events, each judged on its own",
             responses={202: {"description": "Every event accepted"},
                        207: {"description": "Some events rejected or not stored: see results"}},
             openapi_extra={PER_ITEM: "events"})  # an unstorable event is rejected here, not the whole batch
async def ingest_batch(body: BatchIn, request: Request, response: Response, ingestor: IngestorDep) -> BatchResult:
    received_at = datetime.now(UTC)
    results: list[EventResult] = []
    valid: list[tuple[int, EventIn]] = []
    for index, raw in enumerate(body.events):
        refusal = item_refusal(raw)
        if refusal is None:
            try:
                valid.append((index, EventIn.model_validate(raw)))
                continue
            except ValidationError as exc:
                refusal = "invalid", validation_errors(exc)
        reason, errors = refusal
        results.append(EventResult(index=index, status="rejected", errors=errors))
        ingestor.metrics.rejected.labels(reason).inc()
    if valid:
        ingestor.admit(request, len(valid))
    outcomes = await ingestor.store_many([event for _, event in valid], received_at)
    results += [item_result(index, event.eventId, outcome)
                for (index, event), outcome in zip(valid, outcomes, strict=True)]
    result = batch_result(results)
    if valid and result.failed == len(valid) and not result.rejected:
        raise DependencyUnavailable("kafka", "no event of the batch was acknowledged", retry_after_s=2)
    response.status_code = 202 if result.accepted + result.duplicates == len(results) else 207
    return result


@identity.post("", status_code=status.HTTP_202_ACCEPTED, response_model=IdentifyAccepted,
               summary="Link an anonymous id to a user (202 only once the broker has the link)",
               responses={409: {"description": "The store refuses the link: the reason says why"},
                          429: {"description": "Over the client's rate"},
                          503: {"description": "The store or the broker did not answer in time; retry"}})
async def identify(body: IdentifyIn, request: Request, ingestor: IngestorDep) -> IdentifyAccepted:
    """From now on the anonymous id's events count for the user, and its profile so far merges into theirs.
    Repeating an identify is safe: it answers `already linked` and tells the rule job again."""
    ingestor.admit(request, 1)
    link = await ingestor.identify(body.anonymousId, body.userId, body.traits, datetime.now(UTC))
    return IdentifyAccepted(userId=body.userId, anonymousId=body.anonymousId,
                            status=made(link))


def validation_errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]


def item_result(index: int, event_id: str | None, outcome: Outcome) -> EventResult:
    if isinstance(outcome, DependencyUnavailable):
        return EventResult(index=index, status="failed", eventId=event_id, errors=[str(outcome)])
    return EventResult(index=index, status="accepted" if outcome.fresh else "duplicate",
                       eventId=outcome.event.event_id, identity=outcome.identity)


def batch_result(results: list[EventResult]) -> BatchResult:
    results.sort(key=lambda r: r.index)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate", "rejected", "failed")}
    return BatchResult(accepted=counts["accepted"], duplicates=counts["duplicate"], rejected=counts["rejected"],
                       failed=counts["failed"], results=results)


def item_refusal(raw: Any) -> tuple[str, list[str]] | None:
    """Why one event of a batch cannot be taken before it is validated: (metric reason, errors), or None."""
    try:
        size = len(encode(raw))
    except UnstorableValue as exc:
        return "unstorable", [f"{describe(loc)}: {message}" for loc, message in exc.problems]
    if size > MAX_EVENT_BYTES:
        return "too_large", [f"event is {size} bytes, over {MAX_EVENT_BYTES // 1024} KB"]
    return None
