"""Segment's HTTP tracking API (`/v1/track`, `identify`, `alias`, `page`, `screen`, `group`, `batch`).

Segment's libraries and any tool that speaks to Segment can send here unchanged: the write key is the
HTTP Basic username (checked exactly as an X-API-Key is, `WriteKeyAuth`), `messageId` is the eventId
(repeats are dropped), a `timestamp` is corrected for the sender's clock as Segment does
(timestamp + (receive time - sentAt)). Each call becomes one of our events and passes the same checks,
rate limit and 202-after-ack path as `/api/events`; Segment's clients want a 2xx and read no more, so
a call answers 200 `{"success": true}` once the broker has it.

- track → eventType = `event`, properties as sent;
- identify → an `identify` event with the traits as properties, and the ids linked when it has both;
- page / screen → a `page` / `screen` event, its `name` (and `category`) among the properties;
- group → a `group` event with the group's traits and `groupId`;
- alias → `previousId` linked to `userId`, as `/api/identify` does (409 when the store refuses).

Fields Segment's libraries add that we do not keep (`context`, `integrations`, `channel`, `version`, …)
are accepted and ignored, as Segment's own API does.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from server.ingestion_api.answers import item_refusal, validation_errors
from server.ingestion_api.identity import made
from server.ingestion_api.ingestor import Outcome
from server.ingestion_api.routes import IngestorDep, batch_result, item_result
from server.ingestion_api.schemas import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    BatchResult,
    EventIn,
    EventResult,
    IdentityOutcome,
    field_error,
)
from server.runtime.errors import Conflict, InvalidInput
from server.runtime.fields import UserId
from server.runtime.routing import PER_ITEM, StorableRoute
from server.stores.outages import DEPENDENCY_OUTAGES

CALLS = ("track", "identify", "alias", "page", "screen", "group")
SEGMENT_BODY_LIMITS = {**{f"/v1/{call}": MAX_EVENT_BYTES for call in CALLS}, "/v1/batch": MAX_BATCH_BYTES}
JsonObject = dict[str, Any]

segment = APIRouter(prefix="/v1", tags=["segment"], route_class=StorableRoute)


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO-8601 timestamp string")
    return value


# an ISO-8601 string, as Segment's libraries send it; a number is refused, not read as seconds since 1970
Timestamp = Annotated[datetime, BeforeValidator(_iso_text)]

class WriteKeyAuth:
    """Pure ASGI middleware: on `/v1/*` the Basic username (Segment's write key) is presented as the
    X-API-Key, so the one key check of every API applies to it; an X-API-Key sent as well wins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            if not any(name == b"x-api-key" for name, _ in headers):
                key = next((k for name, value in headers if name == b"authorization"
                            and (k := basic_username(value))), None)
                if key:
                    scope = {**scope, "headers": [*headers, (b"x-api-key", key.encode())]}
        await self.app(scope, receive, send)


def basic_username(header: bytes) -> str | None:
    """The username of an `Authorization: Basic …` header (Segment sends `writeKey:`), or None."""
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


class SegmentMessage(BaseModel):
    """What every Segment call carries; what Segment's libraries add beyond it is ignored."""

    model_config = ConfigDict(extra="ignore")

    userId: str | None = None
    anonymousId: str | None = None
    messageId: str | None = None
    timestamp: Timestamp | None = None
    sentAt: Timestamp | None = None
    context: JsonObject = Field(default_factory=dict)
    integrations: JsonObject = Field(default_factory=dict)


class TrackIn(SegmentMessage):
    type: Literal["track"] = "track"
    event: str
    properties: JsonObject = Field(default_factory=dict)


class IdentifyCall(SegmentMessage):
    type: Literal["identify"] = "identify"
    traits: JsonObject = Field(default_factory=dict)


class PageIn(SegmentMessage):
    type: Literal["page"] = "page"
    name: str | None = None
    category: str | None = None
    properties: JsonObject = Field(default_factory=dict)


class ScreenIn(PageIn):
    type: Literal["screen"] = "screen"  # type: ignore[assignment]


class GroupIn(SegmentMessage):
    type: Literal["group"] = "group"
    groupId: UserId
    traits: JsonObject = Field(default_factory=dict)


class AliasIn(SegmentMessage):
    type: Literal["alias"] = "alias"
    userId: UserId
    previousId: UserId


Call = TrackIn | IdentifyCall | PageIn | ScreenIn | GroupIn | AliasIn
MODELS: dict[str, type[Call]] = {"track": TrackIn, "identify": IdentifyCall, "page": PageIn, "screen": ScreenIn,
                                 "group": GroupIn, "alias": AliasIn}


class SegmentBatchIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Segment's libraries send writeKey, context, integrations here

    batch: list[JsonObject] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)
    sentAt: Timestamp | None = None


class SegmentAccepted(BaseModel):
    success: bool = True
    identity: IdentityOutcome | None = None


class SegmentBatchResult(BatchResult):
    success: bool


def corrected_time(timestamp: datetime | None, sent_at: datetime | None, received_at: datetime) -> datetime | None:
    """Segment's clock-skew correction: the sender's clock is off by (sentAt - receive time)."""
    if timestamp is None or sent_at is None:
        return timestamp
    return _utc(timestamp) + (received_at - _utc(sent_at))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _event_fields(call: Call) -> tuple[str, JsonObject, dict[str, str]]:
    """(eventType, properties, how our field names read in Segment's) for one call."""
    if isinstance(call, TrackIn):
        return call.event, call.properties, {"eventType": "event"}
    if isinstance(call, IdentifyCall):
        return "identify", call.traits, {"properties": "traits"}
    if isinstance(call, GroupIn):
        return "group", {**call.traits, "groupId": call.groupId}, {"properties": "traits"}
    if isinstance(call, PageIn):
        named = {name: value for name, value in (("name", call.name), ("category", call.category)) if value}
        return call.type, {**call.properties, **named}, {}
    raise TypeError(f"{call.type} is not an event")


def to_event(call: Call, received_at: datetime, batch_sent_at: datetime | None = None) -> EventIn:
    """Our event for a Segment call; ValidationError naming Segment's fields when it breaks our rules."""
    event_type, properties, renamed = _event_fields(call)
    renamed["eventId"] = "messageId"
    body = {"userId": call.userId, "anonymousId": call.anonymousId, "eventType": event_type, "properties": properties,
            "eventId": call.messageId, "timestamp": corrected_time(call.timestamp, call.sentAt or batch_sent_at,
                                                                    received_at)}
    try:
        return EventIn.model_validate(body)
    except ValidationError as exc:
        raise ValidationError.from_exception_data("SegmentCall", [
            InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"].replace("{", "(").replace("}", ")")),
                             loc=(renamed.get(str(e["loc"][0]), e["loc"][0]), *e["loc"][1:]) if e["loc"] else (),
                             input=e.get("input"))
            for e in exc.errors()]) from None


def parse_call(kind: str, raw: Mapping[str, Any]) -> Call:
    """A call of `kind` from its JSON; ValidationError naming the field."""
    model = MODELS.get(kind)
    if model is None:
        raise field_error("SegmentCall", "type", f"expected one of {', '.join(MODELS)}")
    call = model.model_validate(raw)
    if isinstance(call, AliasIn) and call.userId == call.previousId:
        raise field_error("AliasIn", "previousId", "must differ from userId")
    return call


def _invalid(exc: ValidationError) -> InvalidInput:
    problems: list[tuple[list[str | int], str]] = [(["body", *e["loc"]], e["msg"]) for e in exc.errors()]
    return InvalidInput("invalid Segment call", problems)


async def _single(kind: str, body: JsonObject, request: Request, ingestor: IngestorDep) -> SegmentAccepted:
    received_at = datetime.now(UTC)
    try:
        call = parse_call(kind, body)
        if isinstance(call, AliasIn):
            ingestor.admit(request, 1)
            await ingestor.identify(call.previousId, call.userId, {}, received_at)
            return SegmentAccepted()
        event = to_event(call, received_at)
    except ValidationError as exc:
        ingestor.metrics.rejected.labels("invalid").inc()
        raise _invalid(exc) from None
    ingestor.admit(request, 1)
    stored = await ingestor.store_one(event, received_at)
    return SegmentAccepted(identity=stored.identity)


def _single_route(kind: str) -> Callable[..., Any]:
    async def route(body: Annotated[JsonObject, Body()], request: Request, ingestor: IngestorDep) -> SegmentAccepted:
        return await _single(kind, body, request, ingestor)

    route.__name__ = f"segment_{kind}"
    route.__doc__ = f"Segment's `{kind}` call; 200 `{{\"success\": true}}` once the broker has it."
    return route


for _kind in CALLS:
    segment.add_api_route(
        f"/{_kind}", _single_route(_kind), methods=["POST"], response_model=SegmentAccepted,
        summary=f"Segment {_kind}",
        responses={409: {"description": "alias: the store refuses the link"}, 422: {"description": "A field is "
                   "invalid: the detail names it"}, 503: {"description": "Not acknowledged in time; retry"}})


@segment.post("/batch", response_model=SegmentBatchResult, summary="Segment batch: each call judged on its own",
              responses={207: {"description": "Some calls rejected: see results"},
                         503: {"description": "Some calls not acknowledged: retry the batch (messageIds dedupe)"}},
              openapi_extra={PER_ITEM: "batch"})
async def segment_batch(body: SegmentBatchIn, request: Request, response: Response,
                        ingestor: IngestorDep) -> SegmentBatchResult | JSONResponse:
    """Calls the broker took are not taken twice when the batch is retried: Segment's clients give every
    call a messageId, so a retry after a 503 stores only what was missing."""
    received_at = datetime.now(UTC)
    results: list[EventResult] = []
    events: list[tuple[int, EventIn]] = []
    aliases: list[tuple[int, AliasIn]] = []
    for index, raw in enumerate(body.batch):
        refusal = item_refusal(raw)
        if refusal is None:
            try:
                call = parse_call(str(raw.get("type", "")), raw)
                if isinstance(call, AliasIn):
                    aliases.append((index, call))
                else:
                    events.append((index, to_event(call, received_at, body.sentAt)))
                continue
            except ValidationError as exc:
                refusal = "invalid", validation_errors(exc)
        results.append(EventResult(index=index, status="rejected", errors=refusal[1]))
        ingestor.metrics.rejected.labels(refusal[0]).inc()
    if events or aliases:
        ingestor.admit(request, len(events) + len(aliases))
    results += [await _alias_result(index, call, received_at, ingestor) for index, call in aliases]  # links first
    outcomes: Sequence[Outcome] = await ingestor.store_many([event for _, event in events], received_at)
    results += [item_result(index, event.eventId, outcome)
                for (index, event), outcome in zip(events, outcomes, strict=True)]
    counts = batch_result(results)
    result = SegmentBatchResult(success=counts.accepted + counts.duplicates == len(results), **dict(counts))
    if result.failed:
        return JSONResponse(result.model_dump(mode="json"), status_code=503, headers={"Retry-After": "2"})
    response.status_code = 200 if result.success else 207
    return result


async def _alias_result(index: int, call: AliasIn, at: datetime, ingestor: IngestorDep) -> EventResult:
    try:
        link = await ingestor.identify(call.previousId, call.userId, {}, at)
    except Conflict as exc:
        return EventResult(index=index, status="rejected", eventId=call.messageId, errors=[str(exc)])
    except DEPENDENCY_OUTAGES as exc:
        return EventResult(index=index, status="failed", eventId=call.messageId, errors=[str(exc)])
    return EventResult(index=index, status="accepted", eventId=call.messageId,
                       identity=IdentityOutcome(status=made(link)))

