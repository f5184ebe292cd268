"""POST /api/events, /api/events/batch and /api/identify: validate, limit, dedupe, and answer only after the ack."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from server.ingestion_api.answers import accept_batch, accept_event
from server.ingestion_api.identity import made
from server.ingestion_api.ingestor import Ingestor, Outcome, client_of
from server.ingestion_api.schemas import (
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

router = APIRouter(prefix="/api/events", tags=["events"], route_class=StorableRoute)
identity = APIRouter(prefix="/api/identify", tags=["identity"], route_class=StorableRoute)


async def get_ingestor(request: Request) -> Ingestor:  # async: a sync dependency costs a thread hop per request
    return request.app.state.ingestor  # type: ignore[no-any-return]


IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=EventAccepted,
             summary="Accept one event (202 only once the broker has it)",
             responses={413: {"description": "Over 32 KB"}, 429: {"description": "Over the client's rate"},
                        503: {"description": "The broker did not acknowledge in time; retry"}})
async def ingest(body: EventIn, request: Request, ingestor: IngestorDep) -> Response:
    return json_answer(202, await accept_event(ingestor, body, client_of(request)))


@router.post("/batch", response_model=BatchResult, summary="Accept up to 500 events, each judged on its own",
             responses={202: {"description": "Every event accepted"},
                        207: {"description": "Some events rejected or not stored: see results"}},
             openapi_extra={PER_ITEM: "events"})  # an unstorable event is rejected here, not the whole batch
async def ingest_batch(body: BatchIn, request: Request, ingestor: IngestorDep) -> Response:
    return json_answer(*await accept_batch(ingestor, body.events, client_of(request)))


def json_answer(status_code: int, body: bytes) -> Response:
    """An answer already encoded by `answers` (FastAPI passes a Response through untouched)."""
    return Response(body, status_code, media_type="application/json")


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
