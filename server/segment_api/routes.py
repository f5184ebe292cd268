"""HTTP routes of the Segment API: segments, their members and stats, and users' memberships."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from server.domain.membership import MembershipChange
from server.domain.profile import Profile
from server.domain.rules import Rule, RuleValidationError, lint_rule, parse_rule, references
from server.domain.segment import SegmentStatus, SegmentType
from server.domain.timeutil import format_timestamp
from server.runtime.auth import REQUIRED_SCOPE
from server.runtime.errors import DependencyUnavailable, InvalidInput, NotFound
from server.runtime.fields import ID_PATTERN, MAX_ID_CHARS, MAX_OFFSET
from server.runtime.routing import StorableRoute
from server.segment_api.explain import explanation
from server.segment_api.membership import MembershipPublisher
from server.segment_api.reads import UserRead, read_user
from server.segment_api.references import invalid_rules
from server.segment_api.repository import SegmentRepository, SegmentRow
from server.segment_api.schemas import (
    EventPending,
    ExplanationPublic,
    MemberPage,
    MemberPublic,
    PreviewRequest,
    PreviewResult,
    SegmentCreate,
    SegmentPage,
    SegmentPublic,
    SegmentStats,
    SegmentUpdate,
    StaticMembersChange,
    UserProfile,
    UserSegment,
    UserSegments,
    WindowCounts,
)
from server.stores.matching import matching_pages
from server.stores.outbox import OutboxRelay
from server.stores.profile_store import ProfileStore

PREVIEW_PAGE = 1000
DELETE_PAGE = 1000  # members of a deleted STATIC segment read and announced to the rule job at a time
_ETAG = re.compile(r'(?:W/)?"?([1-9][0-9]{0,8})"?')  # versions are PostgreSQL integers
UserIdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                 description="Letters, digits and _ . : @ + -")]


# async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request for each
async def get_repository(request: Request) -> SegmentRepository:
    return request.app.state.segments  # type: ignore[no-any-return]


async def get_store(request: Request) -> ProfileStore:
    return request.app.state.profiles  # type: ignore[no-any-return]


async def get_relay(request: Request) -> OutboxRelay:
    return request.app.state.relay  # type: ignore[no-any-return]


async def get_membership(request: Request) -> MembershipPublisher:
    return request.app.state.membership  # type: ignore[no-any-return]


Repository = Annotated[SegmentRepository, Depends(get_repository)]
Store = Annotated[ProfileStore, Depends(get_store)]
Relay = Annotated[OutboxRelay, Depends(get_relay)]
Membership = Annotated[MembershipPublisher, Depends(get_membership)]

segments = APIRouter(prefix="/api/segments", tags=["segments"], route_class=StorableRoute)
users = APIRouter(prefix="/api/users", tags=["users"], route_class=StorableRoute)


def checked_rules(rules: dict[str, Any] | None, segment_type: str) -> tuple[list[str], Rule | None]:
    """Validate a rule tree for a segment of `segment_type`; returns lint warnings and the parsed rule (None for
    STATIC segments), raises 422. Its segment references are checked by the repository, under its lock."""
    if segment_type == SegmentType.STATIC:
        if rules is not None:
            raise InvalidInput("STATIC segments have members, not rules",
                               [(["body", "rules"], "rules: not allowed for STATIC segments")])
        return [], None
    if rules is None:
        raise InvalidInput("DYNAMIC segments need rules", [(["body", "rules"], "rules: required for DYNAMIC segments")])
    try:
        rule = parse_rule(rules)
    except RuleValidationError as exc:
        raise invalid_rules(exc.issues) from None
    return [str(w) for w in lint_rule(rule)], rule


def public(row: SegmentRow, warnings: list[str] | None = None) -> SegmentPublic:
    return SegmentPublic(id=row.id, name=row.name, description=row.description, type=SegmentType(row.type),
                         status=SegmentStatus(row.status), rules=row.rules, version=row.version,
                         created_at=row.created_at, updated_at=row.updated_at, warnings=warnings or [])


def _etag(version: int) -> str:
    return f'W/"{version}"'


@segments.post("", status_code=status.HTTP_201_CREATED, response_model=SegmentPublic, response_model_by_alias=True,
               summary="Create a segment", responses={409: {"description": "A segment with this name exists"},
                                                      422: {"description": "Invalid rules, with their paths"}})
async def create_segment(body: SegmentCreate, repo: Repository, relay: Relay, response: Response) -> SegmentPublic:
    warnings, rule = checked_rules(body.rules, body.type)
    row = await repo.create(body.name, body.description, body.type, body.status, body.rules, rule)
    relay.wake()
    response.headers["ETag"] = _etag(row.version)
    response.headers["Location"] = f"/api/segments/{row.id}"
    return public(row, warnings)


@segments.get("", response_model=SegmentPage, summary="List segments")
async def list_segments(
    repo: Repository,
    type: Annotated[SegmentType | None, Query()] = None,  # the API's parameter name
    status_: Annotated[SegmentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SegmentPage:
    rows, total = await repo.list(type, status_, limit, offset)
    return SegmentPage(items=[public(r) for r in rows], total=total, limit=limit, offset=offset)


@segments.post("/preview", response_model=PreviewResult, summary="Count the profiles a rule tree matches now",
               openapi_extra={REQUIRED_SCOPE: "read"})  # a query that takes a body: it changes nothing
async def preview(body: PreviewRequest, repo: Repository, store: Store) -> PreviewResult:
    """Members of referenced segments are read from the store (who is in them now)."""
    warnings, rule = checked_rules(body.rules, SegmentType.DYNAMIC)
    assert rule is not None  # a DYNAMIC rule always parses to one
    referenced = sorted(references(rule))
    if referenced:  # the same references a create would accept (no lock: nothing is written)
        issues = (await repo.reference_graph()).problems(rule)
        if issues:
            raise invalid_rules(issues)
    matching = scanned = 0
    sample: list[str] = []
    async for page in matching_pages(store, {"preview": rule}, PREVIEW_PAGE):
        scanned += len(page.user_ids)
        found = page.matching["preview"]
        matching += len(found)
        sample += found[:body.sample_size - len(sample)]
    return PreviewResult(matching=matching, scanned=scanned, sample=sample, warnings=warnings)


@segments.get("/{segment_id}", response_model=SegmentPublic, summary="Get a segment")
async def get_segment(segment_id: str, repo: Repository, response: Response) -> SegmentPublic:
    row = await repo.get(segment_id)
    response.headers["ETag"] = _etag(row.version)
    return public(row)


@segments.put("/{segment_id}", response_model=SegmentPublic, summary="Update a segment (bumps its version)",
              responses={409: {"description": "Stale version or duplicate name"},
                         412: {"description": "If-Match did not match"}})
async def update_segment(
    segment_id: str, body: SegmentUpdate, repo: Repository, relay: Relay, response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> SegmentPublic:
    current = await repo.get(segment_id)
    expected = body.version
    if if_match is not None:
        etag = _ETAG.fullmatch(if_match.strip())
        if etag is None:
            message = "If-Match must be an ETag such as W/\"3\" (versions go up to 999999999)"
            raise InvalidInput(message, [(["header", "If-Match"], message)])
        expected = int(etag.group(1))
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    warnings, rule = checked_rules(changes["rules"], current.type) if "rules" in changes else ([], None)
    if "rules" not in changes and current.type == SegmentType.DYNAMIC and current.rules is None:
        raise InvalidInput("DYNAMIC segments need rules", [(["body", "rules"], "rules: required")])
    row = await repo.update(segment_id, changes, expected, precondition=if_match is not None, rule=rule)
    relay.wake()
    response.headers["ETag"] = _etag(row.version)
    return public(row, warnings)


@segments.delete("/{segment_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a segment",
                 openapi_extra={REQUIRED_SCOPE: "admin"},  # destructive: members, history and campaigns lose it
                 responses={409: {"description": "Other segments refer to it; the answer names them"},
                            503: {"description": "The rule job was not told a STATIC segment's members left; "
                                                 "nothing was deleted"}})
async def delete_segment(segment_id: str, repo: Repository, store: Store, relay: Relay,
                         membership: Membership) -> Response:
    """A segment other live segments refer to is not deleted (409): their rules would refer to nothing.

    Deleting a STATIC segment tells the rule job that each member left it (acknowledged before the delete commits),
    so the job stops holding it for them; its members leave the store here, not through the rule engine."""
    row = await repo.get(segment_id)

    async def members_leave() -> None:
        now, after = datetime.now(UTC), None
        while page := await store.segment_members(segment_id, after, DELETE_PAGE):
            await membership.publish_to_job([MembershipChange(m.user_id, segment_id, "exited", now, row.version,
                                                              source="static") for m in page])
            if len(page) < DELETE_PAGE:
                break
            after = page[-1].user_id

    await repo.delete(segment_id, before_commit=members_leave if row.type == SegmentType.STATIC else None)
    if row.type == SegmentType.STATIC:  # no rule engine involved: members leave here
        await store.remove_segment(segment_id)
    relay.wake()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@segments.post("/{segment_id}/members", response_model=SegmentStats, summary="Add or remove STATIC members",
               responses={503: {"description": "The broker did not acknowledge the changes; nothing unheard applied"}})
async def change_static_members(segment_id: str, body: StaticMembersChange, repo: Repository, store: Store,
                                membership: Membership) -> SegmentStats:
    """Only real changes (adds of non-members, removes of members) are published on `segment-membership` and to
    the rule job (for rules referring to the segment), acknowledged, and then applied, so every consumer of the
    topic and the job hear what the store shows."""
    row = await repo.get(segment_id)
    if row.type != SegmentType.STATIC:
        raise InvalidInput("only STATIC segments take explicit members; DYNAMIC ones follow their rules",
                           [(["path", "segment_id"], "segment is DYNAMIC")])
    members = await store.members_among(segment_id, [*body.add, *body.remove])
    changes = static_changes(segment_id, row.version, body, members, datetime.now(UTC))
    heard = await membership.publish(changes)
    await store.apply_changes(heard, source="static")
    if len(heard) < len(changes):
        raise DependencyUnavailable("kafka", f"{len(changes) - len(heard)} of {len(changes)} member changes were not"
                                             " acknowledged and not applied; repeat the request")
    return await stats(segment_id, repo, store)


def static_changes(segment_id: str, version: int, body: StaticMembersChange, members: set[str],
                   now: datetime) -> list[MembershipChange]:
    """The changes `body` makes to a segment whose current members among its users are `members`:
    adds first, then removes, each only where it changes something."""
    current, changes = set(members), []
    for user in body.add:
        if user not in current:
            current.add(user)
            changes.append(MembershipChange(user, segment_id, "entered", now, version, source="static"))
    for user in body.remove:
        if user in current:
            current.discard(user)
            changes.append(MembershipChange(user, segment_id, "exited", now, version, source="static"))
    return changes


@segments.get("/{segment_id}/members", response_model=MemberPage, summary="A segment's members, paged by cursor")
async def members(
    segment_id: str, repo: Repository, store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page", max_length=MAX_ID_CHARS,
                                        pattern=ID_PATTERN)] = None,
) -> MemberPage:
    await repo.get(segment_id)
    rows = await store.segment_members(segment_id, cursor, limit)
    items = [MemberPublic(user_id=m.user_id, segment_version=m.segment_version, entered_at=m.entered_at,
                          source=m.source) for m in rows]
    return MemberPage(items=items, next_cursor=rows[-1].user_id if len(rows) == limit else None)


@segments.get("/{segment_id}/stats", response_model=SegmentStats, summary="Size and recent entries/exits")
async def stats(segment_id: str, repo: Repository, store: Store) -> SegmentStats:
    await repo.get(segment_id)
    now = datetime.now(UTC)
    hour = await store.change_counts(segment_id, now - timedelta(hours=1))
    day = await store.change_counts(segment_id, now - timedelta(days=1))
    return SegmentStats(segment_id=segment_id, size=await store.segment_size(segment_id),
                        entered=WindowCounts(last_hour=hour.entered, last_day=day.entered),
                        exited=WindowCounts(last_hour=hour.exited, last_day=day.exited))


AfterQuery = Annotated[str | None, Query(
    min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
    description="An eventId the caller sent: answer once the user's profile has applied it (read-your-writes). "
                "The profile keeps the ids of the user's last 16 events, so only those can be waited for.")]
WaitQuery = Annotated[float, Query(ge=0, le=10, description="How long to wait for `after`, in seconds")]
PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": EventPending, "description": "The event named by `after` was not applied within `wait`"}}


def pending(read: UserRead, after: str, wait: float) -> JSONResponse:
    body = EventPending(detail=f"event {after} is not applied yet after {wait:.1f} s", user_id=read.user_id)
    return JSONResponse(body.model_dump(by_alias=True), status_code=status.HTTP_202_ACCEPTED)


@users.get("/{user_id}/segments", response_model=UserSegments, responses=PENDING,
           summary="The segments a user is in (by its id or a linked anonymous id)")
async def user_segments(user_id: UserIdPath, repo: Repository, store: Store, after: AfterQuery = None,
                        wait: WaitQuery = 2.0) -> UserSegments | JSONResponse:
    if after is not None:
        read = await read_user(store, user_id, after, wait)
        if not read.applied:
            return pending(read, after, wait)
    canonical, memberships = await store.resolve_memberships(user_id)
    names = await repo.names([m.segment_id for m in memberships])
    return UserSegments(user_id=canonical, resolved_from=user_id if canonical != user_id else None, segments=[
        UserSegment(segment_id=m.segment_id, name=names.get(m.segment_id, ""), segment_version=m.segment_version,
                    entered_at=m.entered_at, because=dict(m.because) if m.because is not None else None)
        for m in memberships
    ])


@users.get("/{user_id}/profile", response_model=UserProfile, responses=PENDING,
           summary="A user's profile: traits, aggregates and aliases (by its id or a linked anonymous id)")
async def user_profile(user_id: UserIdPath, store: Store, after: AfterQuery = None,
                       wait: WaitQuery = 2.0) -> UserProfile | JSONResponse:
    read = await read_user(store, user_id, after, wait)
    if not read.applied and after is not None:
        return pending(read, after, wait)
    if read.profile is None:
        raise NotFound(f"no profile for user '{user_id}' (no event seen yet)")
    profile = Profile.from_json(read.profile)  # internal state (history, recentEvents) stays out of the answer
    return UserProfile(
        user_id=read.user_id, resolved_from=read.resolved_from, anonymous=profile.anonymous,
        aliases=await store.aliases_of(read.user_id), traits=profile.traits, total_spent=profile.total_spent,
        purchase_count=profile.purchase_count, event_count=profile.event_count,
        first_seen=format_timestamp(profile.first_seen) if profile.first_seen else None,
        last_seen=format_timestamp(profile.last_seen) if profile.last_seen else None,
        event_counts=profile.event_counts)


@users.get("/{user_id}/segments/{segment_id}/explain", response_model=ExplanationPublic, responses={
    **PENDING, 404: {"description": "No such user, or no such segment (deleted ones included); the detail says which"}},
    summary="Why a user is (or is not) in a segment: the rule on the stored profile, and the reason it entered")
async def explain_membership(user_id: UserIdPath, segment_id: str, repo: Repository, store: Store,
                             after: AfterQuery = None, wait: WaitQuery = 2.0) -> ExplanationPublic | JSONResponse:
    segment = await repo.get(segment_id)
    read = await read_user(store, user_id, after, wait)
    if not read.applied and after is not None:
        return pending(read, after, wait)
    memberships = await store.user_memberships(read.user_id)
    return explanation(segment, read, memberships, datetime.now(UTC))
