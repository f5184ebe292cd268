"""Segment insights: how segments overlap, how one grew and shrank hour by hour, what its members are like.

Each answer is one read of the profile store (`overlap`, `hourly_history`, `trait_breakdown`), never one per
user or per hour. They read what the store holds now: a segment's past sizes come from the membership
ledger (`membership_changes`), as the current size less the net changes after each hour, and a user's
erasure takes the user's ledger rows with it.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from server.domain.timeutil import parse_timestamp
from server.runtime.auth import REQUIRED_SCOPE
from server.runtime.errors import InvalidInput
from server.runtime.routing import StorableRoute
from server.segment_api.routes import Repository, Store
from server.segment_api.schemas import (
    HistoryPointPublic,
    OverlapPublic,
    OverlapRequest,
    PairOverlapPublic,
    SegmentHistoryPublic,
    TraitBreakdownPublic,
    TraitValueCount,
)
from server.stores.profile_store import HOUR

DEFAULT_HISTORY = timedelta(hours=24)
MAX_HISTORY = timedelta(days=31)
# the range every hour of which PostgreSQL and Python can both name (and add an hour to)
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
MAX_TRAIT_CHARS = 128  # as a rule's field name
TRAIT_PATTERN = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"
_QUOTED_CHARS = 40  # how much of a refused value an error quotes

insights = APIRouter(prefix="/api/segments", tags=["segments"], route_class=StorableRoute)


def _refuse(location: list[str | int], message: str) -> InvalidInput:
    name = ".".join(str(part) for part in location[1:])
    return InvalidInput(f"{name}: {message}", [(location, message)])


def overlap_ids(raw: list[str]) -> list[str]:
    """The canonical ids of `segmentIds`: each a UUID, none twice; 422 naming the element otherwise."""
    ids: list[str] = []
    for index, value in enumerate(raw):
        location: list[str | int] = ["body", "segmentIds", index]
        try:
            canonical = str(uuid.UUID(value))
        except ValueError:
            quoted = value if len(value) <= _QUOTED_CHARS else value[:_QUOTED_CHARS] + "…"
            raise _refuse(location, f"{quoted!r} is not a segment id (a UUID)") from None
        if canonical in ids:
            raise _refuse(location, f"segment {canonical} is named twice (also segmentIds[{ids.index(canonical)}])")
        ids.append(canonical)
    return ids


@insights.post("/overlap", response_model=OverlapPublic, summary="How the members of 2 to 10 segments overlap",
               responses={404: {"description": "One of the segments does not exist (named)"},
                          422: {"description": "Too few or too many ids, one twice, or one not a UUID"}},
               openapi_extra={REQUIRED_SCOPE: "read"})  # a query that takes a body: it changes nothing
async def overlap(body: OverlapRequest, repo: Repository, store: Store) -> OverlapPublic:
    """Each segment's size, the users in all of them and the users in every unordered pair, now."""
    ids = overlap_ids(body.segment_ids)
    for segment_id in ids:  # at most 10 lookups by primary key; a deleted one is unknown too
        await repo.get(segment_id)
    result = await store.overlap(ids)
    return OverlapPublic(sizes=dict(result.sizes), intersection=result.intersection,
                         pairs=[PairOverlapPublic(a=p.a, b=p.b, intersection=p.intersection) for p in result.pairs])


def _instant(raw: str | None, name: str) -> datetime | None:
    """An ISO-8601 query value in UTC (naive: taken as UTC); 422 naming the parameter otherwise."""
    if raw is None:
        return None
    try:
        value = parse_timestamp(raw)
    except (ValueError, OverflowError):
        hint = " (a '+' in a URL is a space: write the offset as %2B or use Z)" if " " in raw else ""
        raise _refuse(["query", name], f"expected an ISO-8601 timestamp such as 2026-12-01T00:00:00Z{hint}") from None
    if not EARLIEST <= value < LATEST:
        raise _refuse(["query", name], "expected a time between 1970 and 9999")
    return value


def history_range(raw_from: str | None, raw_to: str | None, now: datetime) -> tuple[datetime, datetime]:
    """(from, to) of a history request: `to` defaults to now and `from` to 24 hours before `to`; `from` must be
    before `to` and at most 31 days before it (both 422s name `from`, the side that sets how far back)."""
    to = _instant(raw_to, "to") or now
    start = _instant(raw_from, "from")
    if start is None:
        start = max(to - DEFAULT_HISTORY, EARLIEST)
    if start >= to:
        raise _refuse(["query", "from"], "must be before to")
    if to - start > MAX_HISTORY:
        raise _refuse(["query", "from"], f"the range may span at most 31 days, not {(to - start) / HOUR:.0f} hours")
    return start, to


@insights.get("/{segment_id}/history", response_model=SegmentHistoryPublic, response_model_by_alias=True,
              summary="A segment's size, entries and exits per hour (default: the last 24 hours)",
              responses={422: {"description": "from/to not ISO-8601, from not before to, or over 31 days"}})
async def history(
    segment_id: str, repo: Repository, store: Store,
    from_: Annotated[str | None, Query(alias="from", max_length=64, json_schema_extra={"format": "date-time"},
                                       description="ISO-8601; default: 24 hours before `to`")] = None,
    to: Annotated[str | None, Query(max_length=64, json_schema_extra={"format": "date-time"},
                                    description="ISO-8601; default: now")] = None,
) -> SegmentHistoryPublic:
    """Every hour that overlaps [from, to), zeros included: who entered and exited in it, and the size at its
    end, which is the current size less the net changes after that hour."""
    start, end = history_range(from_, to, datetime.now(UTC))
    await repo.get(segment_id)
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    hours = math.ceil((end - first_hour) / HOUR)
    points = await store.hourly_history(segment_id, first_hour, hours)
    # by its wire name: `from` is a Python keyword, so the field cannot be passed by it
    return SegmentHistoryPublic.model_validate({"segmentId": segment_id, "from": start, "to": end, "points": [
        HistoryPointPublic(at=p.at, entered=p.entered, exited=p.exited, size=p.size) for p in points]})


@insights.get("/{segment_id}/breakdown", response_model=TraitBreakdownPublic,
              summary="A segment's members counted by the value of one trait")
async def breakdown(
    segment_id: str, repo: Repository, store: Store,
    trait: Annotated[str, Query(min_length=1, max_length=MAX_TRAIT_CHARS, pattern=TRAIT_PATTERN,
                                description="A trait name, or a dotted path into nested traits (address.city): "
                                            "letters, digits and _")],
    limit: Annotated[int, Query(ge=1, le=100, description="How many values to list")] = 20,
) -> TraitBreakdownPublic:
    """The most common values first; `other` counts the members whose value is not listed, `missing` those
    without the trait (no profile, no such trait, or null)."""
    await repo.get(segment_id)
    result = await store.trait_breakdown(segment_id, trait, limit)
    return TraitBreakdownPublic(segment_id=segment_id, trait=trait, members=result.members,
                                values=[TraitValueCount(value=v.value, count=v.count) for v in result.values],
                                other=result.other, missing=result.missing)
