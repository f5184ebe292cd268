"""What POST /api/events and /api/events/batch do once the body is read, and their answers as bytes.

Both doors call these: the FastAPI routes (which own the OpenAPI schema and every error answer) and
`fast_path` (which serves the common, valid request without FastAPI's per-request machinery). The
answers are encoded once with orjson, the JSON FastAPI writes for the routes' response models
(`EventAccepted`, `BatchResult`), nulls included, so no response model is built and serialized.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from server.ingestion_api.ingestor import Ingestor
from server.ingestion_api.schemas import MAX_EVENT_BYTES, EventIn, IdentityOutcome
from server.runtime.errors import DependencyUnavailable
from server.runtime.storable import UnstorableValue, describe, encode

JsonObject = dict[str, Any]
EVENTS = TypeAdapter(list[EventIn])


async def accept_event(ingestor: Ingestor, body: EventIn, client: str) -> bytes:
    """Admit, store and acknowledge one validated event: the 202's body (RateLimited, DependencyUnavailable)."""
    ingestor.admit_client(client, 1)
    stored = await ingestor.store_one(body, datetime.now(UTC))
    return orjson.dumps({"eventId": stored.event.event_id, "status": "accepted" if stored.fresh else "duplicate",
                         "userId": body.userId, "anonymousId": body.anonymousId,
                         "identity": identity_json(stored.identity)})


async def accept_batch(ingestor: Ingestor, items: Sequence[Any], client: str) -> tuple[int, bytes]:
    """Judge each item of a batch on its own, store the valid ones: (202 or 207, the body).

    Raises RateLimited for the valid events over the client's rate, and DependencyUnavailable when the
    broker took none of them (and none was rejected)."""
    received_at = datetime.now(UTC)
    results: list[JsonObject] = []
    valid: list[tuple[int, EventIn]] = []
    storable: list[tuple[int, Any]] = []
    for index, raw in enumerate(items):
        refusal = item_refusal(raw)
        if refusal is None:
            storable.append((index, raw))
        else:
            _reject(ingestor, results, index, *refusal)
    try:  # all in one call into the validator; only a batch holding an invalid event is judged item by item
        valid = list(zip((index for index, _ in storable), EVENTS.validate_python([raw for _, raw in storable]),
                         strict=True))
    except ValidationError:
        for index, raw in storable:
            try:
                valid.append((index, EventIn.model_validate(raw)))
            except ValidationError as exc:
                _reject(ingestor, results, index, "invalid", validation_errors(exc))
    if valid:
        ingestor.admit_client(client, len(valid))
    outcomes = await ingestor.store_many([event for _, event in valid], received_at)
    counts = {"accepted": 0, "duplicate": 0, "failed": 0}
    for (index, event), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, DependencyUnavailable):
            counts["failed"] += 1
            results.append(item_json(index, "failed", event.eventId, [str(outcome)]))
        else:
            status = "accepted" if outcome.fresh else "duplicate"
            counts[status] += 1
            results.append(item_json(index, status, outcome.event.event_id, [], identity_json(outcome.identity)))
    rejected, failed = len(items) - len(valid), counts["failed"]
    if valid and failed == len(valid) and not rejected:
        raise DependencyUnavailable("kafka", "no event of the batch was acknowledged", retry_after_s=2)
    if rejected:  # the rejected came first: the answer lists every item in the order sent
        results.sort(key=_index)
    accepted, duplicates = counts["accepted"], counts["duplicate"]
    body = orjson.dumps({"accepted": accepted, "duplicates": duplicates, "rejected": rejected, "failed": failed,
                         "results": results})
    return (202 if accepted + duplicates == len(results) else 207), body


def _reject(ingestor: Ingestor, results: list[JsonObject], index: int, reason: str, errors: list[str]) -> None:
    results.append(item_json(index, "rejected", None, errors))
    ingestor.metrics.rejected.labels(reason).inc()


def _index(result: JsonObject) -> int:
    return int(result["index"])


def item_json(index: int, status: str, event_id: str | None, errors: list[str],
              identity: JsonObject | None = None) -> JsonObject:
    """One `EventResult` as FastAPI would write it."""
    return {"index": index, "status": status, "eventId": event_id, "errors": errors, "identity": identity}


def identity_json(outcome: IdentityOutcome | None) -> JsonObject | None:
    """An `IdentityOutcome` as FastAPI would write it."""
    return None if outcome is None else {"status": outcome.status, "detail": outcome.detail}


def validation_errors(exc: ValidationError) -> list[str]:
    """Each of a validation error's problems as `field.path: message`."""
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]


def item_refusal(raw: Any) -> tuple[str, list[str]] | None:
    """Why one event of a batch cannot be taken before it is validated: (metric reason, errors), or None."""
    try:
        size = len(encode(raw))
    except UnstorableValue as exc:
        return "unstorable", [f"{describe(loc)}: {message}" for loc, message in exc.problems]
    if size > MAX_EVENT_BYTES:
        return "too_large", [f"event is {size} bytes, over {MAX_EVENT_BYTES // 1024} KB"]
    return None

