"""HTTP routes of `/api/destinations`: webhooks that receive every user entering or leaving a segment.

Every operation needs the write scope, reads included: a destination's URL, header names and delivery
answers are configuration an integration owns, not something a dashboard key should see. The signing
secret is answered twice only: on create and on rotate-secret; header values never.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request, Response, status

from server.communication_api.destination_schemas import (
    MASKED,
    DeliveryAttemptPage,
    DeliveryAttemptPublic,
    DestinationCounts,
    DestinationCreate,
    DestinationCreated,
    DestinationPage,
    DestinationPublic,
    DestinationStatus,
    DestinationTestResult,
    DestinationType,
    DestinationUpdate,
    ReplayRequest,
    ReplayResult,
    SecretRotate,
    SecretRotated,
)
from server.domain.webhooks import EVENT_NAMES, encode_body, test_body
from server.runtime.auth import REQUIRED_SCOPE
from server.runtime.errors import InvalidInput
from server.runtime.fields import ID_PATTERN, MAX_ID_CHARS, MAX_OFFSET
from server.runtime.routing import StorableRoute
from server.stores.destinations import (
    DeliveryAttempt,
    DeliveryState,
    DeliveryStats,
    DestinationRepository,
    DestinationRow,
    DestinationSpec,
)
from server.stores.webhooks import Outcome, TargetRefused, WebhookClient

WRITE: Final[dict[str, Any]] = {REQUIRED_SCOPE: "write"}
ANSWER_SHOWN_BYTES: Final = 2048
OPEN_STATES: Final = frozenset({"pending", "retrying"})
NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {404: {"description": "No such destination"}}


def get_destinations(request: Request) -> DestinationRepository:
    return request.app.state.destinations  # type: ignore[no-any-return]


def get_webhooks(request: Request) -> WebhookClient:
    return request.app.state.webhooks  # type: ignore[no-any-return]


Destinations = Annotated[DestinationRepository, Depends(get_destinations)]
Webhooks = Annotated[WebhookClient, Depends(get_webhooks)]

destinations = APIRouter(prefix="/api/destinations", tags=["destinations"], route_class=StorableRoute)


def public(row: DestinationRow, stats: DeliveryStats) -> DestinationPublic:
    return DestinationPublic(
        id=row.id, name=row.name, type=DestinationType(row.type), url=row.url, segment_ids=row.segment_ids,
        events=row.events, headers=dict.fromkeys(row.header_names, MASKED), status=DestinationStatus(row.status),
        paused_reason=row.paused_reason, secret_hint=row.secret_hint, consecutive_failures=row.consecutive_failures,
        last_delivery_at=row.last_delivery_at, last_error=row.last_error,
        counts=DestinationCounts(delivered=stats.delivered, pending=stats.pending, retrying=stats.retrying,
                                 failed=stats.failed),
        lag_seconds=stats.lag_s, created_at=row.created_at, updated_at=row.updated_at,
    )


def attempt_public(attempt: DeliveryAttempt) -> DeliveryAttemptPublic:
    return DeliveryAttemptPublic(
        message_id=attempt.message_id, user_id=attempt.user_id, segment_id=attempt.segment_id,
        event=EVENT_NAMES[attempt.change], status=attempt.status,
        attempts=attempt.attempts, last_status_code=attempt.last_status_code, last_answer=attempt.last_answer,
        last_error=attempt.last_error, changed_at=attempt.changed_at, created_at=attempt.created_at,
        next_attempt_at=attempt.next_attempt_at if attempt.status in OPEN_STATES else None,
        delivered_at=attempt.delivered_at,
    )


async def _callable(webhooks: WebhookClient, url: str) -> None:
    """422 on `url` when the guard refuses the target (not http(s), or private and not allow-listed)."""
    try:
        await webhooks.guard.check(url)
    except TargetRefused as exc:
        raise InvalidInput(f"url: {exc}", [(["body", "url"], str(exc))]) from None


def _spec(body: DestinationCreate | DestinationUpdate) -> DestinationSpec:
    segment_ids = [str(s) for s in body.segment_ids] if body.segment_ids is not None else None
    return DestinationSpec(body.name, body.url, segment_ids, body.events, body.headers)


@destinations.post("", status_code=status.HTTP_201_CREATED, response_model=DestinationCreated, openapi_extra=WRITE,
                   summary="Create a destination; its signing secret is answered this once",
                   responses={404: {"description": "Unknown segment"}, 409: {"description": "Name in use"},
                              422: {"description": "Invalid field, or a target that may not be called"},
                              503: {"description": "AM_SECRETS_KEY is not set"}})
async def create_destination(body: DestinationCreate, repo: Destinations, webhooks: Webhooks,
                             response: Response) -> DestinationCreated:
    await _callable(webhooks, body.url)
    row, secret = await repo.create(_spec(body))
    response.headers["Location"] = f"/api/destinations/{row.id}"
    return DestinationCreated(**public(row, DeliveryStats()).model_dump(), secret=secret)


@destinations.get("", response_model=DestinationPage, openapi_extra=WRITE,
                  summary="List destinations with their delivery counts, in the order they were created")
async def list_destinations(
    repo: Destinations,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DestinationPage:
    rows, total = await repo.find(limit, offset)
    stats = await repo.stats([r.id for r in rows])
    return DestinationPage(items=[public(r, stats[r.id]) for r in rows], total=total, limit=limit, offset=offset)


@destinations.get("/{destination_id}", response_model=DestinationPublic, openapi_extra=WRITE, responses=NOT_FOUND,
                  summary="A destination: status, counts per delivery status and lag")
async def get_destination(destination_id: str, repo: Destinations) -> DestinationPublic:
    row = await repo.get(destination_id)
    return public(row, (await repo.stats([row.id]))[row.id])


@destinations.put("/{destination_id}", response_model=DestinationPublic, openapi_extra=WRITE,
                  summary="Change a destination; status ACTIVE resumes a paused one (its retries are due at once)",
                  responses={**NOT_FOUND, 409: {"description": "Name in use"}})
async def update_destination(destination_id: str, body: DestinationUpdate, repo: Destinations,
                             webhooks: Webhooks) -> DestinationPublic:
    await _callable(webhooks, body.url)
    row = await repo.update(destination_id, _spec(body), body.status.value if body.status else None)
    return public(row, (await repo.stats([row.id]))[row.id])


@destinations.delete("/{destination_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=WRITE,
                     responses=NOT_FOUND, summary="Delete a destination and its deliveries")
async def delete_destination(destination_id: str, repo: Destinations) -> Response:
    await repo.delete(destination_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@destinations.post("/{destination_id}/rotate-secret", response_model=SecretRotated, openapi_extra=WRITE,
                   responses=NOT_FOUND,
                   summary="A new signing secret; the previous one also signs during the grace period")
async def rotate_secret(destination_id: str, repo: Destinations, body: SecretRotate | None = None) -> SecretRotated:
    grace_s = (body or SecretRotate()).grace_seconds
    row, secret = await repo.rotate(destination_id, grace_s)
    return SecretRotated(id=row.id, secret=secret, secret_hint=row.secret_hint,
                         previous_secret_expires_at=row.previous_secret_expires_at)


@destinations.post("/{destination_id}/test", response_model=DestinationTestResult, openapi_extra=WRITE,
                   responses={**NOT_FOUND, 422: {"description": "The target may not be called"}},
                   summary="One signed test call (an Audience Entered marked test); its answer, whatever it is")
async def test_destination(destination_id: str, repo: Destinations, webhooks: Webhooks) -> DestinationTestResult:
    row = await repo.get(destination_id)
    await _callable(webhooks, row.url)  # the guard's view may have changed since the URL was stored
    message = str(uuid.uuid4())
    body = encode_body(test_body(message, datetime.now(UTC)))
    answer = await webhooks.call(row.url, repo.signing_secrets(row), message, body, repo.headers(row))
    shown = answer.body.encode()[:ANSWER_SHOWN_BYTES].decode(errors="ignore")
    return DestinationTestResult(message_id=message, delivered=answer.outcome is Outcome.DELIVERED,
                                 status_code=answer.status_code, answer=shown, error=answer.error,
                                 duration_ms=round(answer.duration_s * 1000, 1))


@destinations.get("/{destination_id}/deliveries", response_model=DeliveryAttemptPage, openapi_extra=WRITE,
                  responses=NOT_FOUND, summary="Per change: status, attempts and the last answer, newest first")
async def list_deliveries(
    destination_id: str,
    repo: Destinations,
    status_: Annotated[DeliveryState | None, Query(alias="status")] = None,
    user_id: Annotated[str | None, Query(alias="userId", max_length=MAX_ID_CHARS, pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page", max_length=18,
                                        pattern=r"^[0-9]+$")] = None,
) -> DeliveryAttemptPage:
    row = await repo.get(destination_id)
    attempts = await repo.deliveries(row.id, status_, user_id, int(cursor) if cursor else None, limit + 1)
    page = attempts[:limit]
    return DeliveryAttemptPage(items=[attempt_public(a) for a in page],
                               next_cursor=str(page[-1].seq) if len(attempts) > limit else None)


@destinations.post("/{destination_id}/replay", response_model=ReplayResult, openapi_extra=WRITE,
                   responses=NOT_FOUND,
                   summary="Send failed (and delivered) changes in a time range again, with their message ids")
async def replay(destination_id: str, body: ReplayRequest, repo: Destinations) -> ReplayResult:
    row = await repo.get(destination_id)
    return ReplayResult(requeued=await repo.replay(row.id, body.from_, body.to, body.failed_only))
