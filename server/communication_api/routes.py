"""HTTP routes of the Communication API: campaigns, their counts and their deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from server.communication_api.dispatch import FanOut, OnEnterTrigger
from server.communication_api.repository import CampaignDraft, CampaignRepository, CampaignRow
from server.communication_api.schemas import (
    CampaignCreate,
    CampaignPage,
    CampaignPublic,
    CampaignStatus,
    Channel,
    DeliveryCounts,
    DeliveryPage,
    DeliveryPublic,
    FrequencyCapIn,
    MessageTemplateIn,
    QuietHoursIn,
    ScheduleAt,
)
from server.communication_api.templates import RenderError, validate
from server.domain.email import FrequencyCap
from server.domain.timeutil import format_duration
from server.runtime.errors import InvalidInput
from server.runtime.fields import ID_PATTERN, MAX_ID_CHARS, MAX_OFFSET
from server.runtime.routing import StorableRoute
from server.stores.deliveries import DeliveryLedger, DeliveryStatus

# a time this far in the past is a mistake, not "now"
PAST_TOLERANCE = timedelta(minutes=1)


def get_campaigns(request: Request) -> CampaignRepository:
    return request.app.state.campaigns  # type: ignore[no-any-return]


def get_ledger(request: Request) -> DeliveryLedger:
    return request.app.state.ledger  # type: ignore[no-any-return]


def get_fanout(request: Request) -> FanOut:
    return request.app.state.fanout  # type: ignore[no-any-return]


def get_trigger(request: Request) -> OnEnterTrigger:
    return request.app.state.trigger  # type: ignore[no-any-return]


Campaigns = Annotated[CampaignRepository, Depends(get_campaigns)]
Ledger = Annotated[DeliveryLedger, Depends(get_ledger)]
Dispatcher = Annotated[FanOut, Depends(get_fanout)]
Trigger = Annotated[OnEnterTrigger, Depends(get_trigger)]

campaigns = APIRouter(prefix="/api/campaigns", tags=["campaigns"], route_class=StorableRoute)


def public(row: CampaignRow, counts: dict[str, int]) -> CampaignPublic:
    cap, quiet = row.frequency_cap, row.quiet_hours
    return CampaignPublic(
        id=row.id, name=row.name, segment_id=row.segment_id, channel=Channel(row.channel),
        template=MessageTemplateIn(subject=row.subject, body=row.body, body_html=row.body_html),
        schedule=row.trigger, send_at=row.send_at, status=CampaignStatus(row.status), audience_size=row.audience_size,
        frequency_cap=FrequencyCapIn(max=cap.max, within=format_duration(cap.within)) if cap else None,
        quiet_hours=QuietHoursIn(start=quiet.start.strftime("%H:%M"), end=quiet.end.strftime("%H:%M"),
                                 timezone=quiet.timezone) if quiet else None,
        counts=DeliveryCounts(queued=counts["queued"] + counts["sending"], sent=counts["sent"],
                              failed=counts["failed"], skipped=counts["skipped"], deferred=counts["deferred"],
                              cancelled=counts["cancelled"]),
        error=row.error, created_at=row.created_at, updated_at=row.updated_at, completed_at=row.completed_at,
    )


def _checked_template(body: CampaignCreate) -> None:
    template = body.template
    try:
        validate(template.subject, template.body, template.body_html)
    except RenderError as exc:
        part = str(exc).removeprefix("template.").split(":")[0]
        raise InvalidInput(str(exc), [(["body", "template", part], str(exc))]) from None


def _draft(body: CampaignCreate, send_at: datetime | None, default_cap: FrequencyCap | None) -> CampaignDraft:
    # an absent frequencyCap takes the installation's default; an explicit null means none
    cap = body.frequency_cap.cap() if body.frequency_cap else None
    if "frequency_cap" not in body.model_fields_set:
        cap = default_cap
    trigger = "at" if send_at is not None else str(body.schedule)
    return CampaignDraft(body.name, body.segment_id, body.template.subject, body.template.body,
                         body.template.body_html, trigger, send_at, cap,
                         body.quiet_hours.hours() if body.quiet_hours else None)


@campaigns.post("", status_code=status.HTTP_201_CREATED, response_model=CampaignPublic,
                summary="Create a campaign: send now, at a time, or whenever a user enters the segment",
                responses={404: {"description": "Unknown segment"},
                           422: {"description": "Invalid template or schedule, with its path"}})
async def create_campaign(body: CampaignCreate, request: Request, repo: Campaigns, fanout: Dispatcher,
                          trigger: Trigger, response: Response) -> CampaignPublic:
    _checked_template(body)
    send_at = body.schedule.at if isinstance(body.schedule, ScheduleAt) else None
    if send_at is not None and send_at < datetime.now(UTC) - PAST_TOLERANCE:
        raise InvalidInput("schedule.at is in the past", [(["body", "schedule", "at"], "in the past")])
    fanout.recipients.links.require()  # 503 saying what to set: no mail goes out without its unsubscribe link
    await repo.segment_name(body.segment_id)  # 404 for an unknown segment
    row = await repo.create(_draft(body, send_at, request.app.state.settings.default_frequency_cap))
    fanout.wake() if row.trigger != "on_enter" else trigger.refresh()
    response.headers["Location"] = f"/api/campaigns/{row.id}"
    return public(row, {s.value: 0 for s in DeliveryStatus})


@campaigns.get("", response_model=CampaignPage, summary="List campaigns, newest first")
async def list_campaigns(
    repo: Campaigns,
    ledger: Ledger,
    status_: Annotated[CampaignStatus | None, Query(alias="status")] = None,
    segment_id: Annotated[str | None, Query(alias="segmentId", max_length=64, pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CampaignPage:
    rows, total = await repo.find(status_, segment_id, limit, offset)
    counts = await ledger.counts([r.id for r in rows])
    return CampaignPage(items=[public(r, counts[r.id]) for r in rows], total=total, limit=limit, offset=offset)


@campaigns.get("/{campaign_id}", response_model=CampaignPublic, summary="A campaign with its delivery counts")
async def get_campaign(campaign_id: str, repo: Campaigns, ledger: Ledger) -> CampaignPublic:
    row = await repo.get(campaign_id)
    return public(row, (await ledger.counts([row.id]))[row.id])


@campaigns.post("/{campaign_id}/cancel", response_model=CampaignPublic,
                summary="Cancel: nothing more is queued, and queued mails are not sent",
                responses={409: {"description": "Already cancelled"}})
async def cancel_campaign(campaign_id: str, repo: Campaigns, ledger: Ledger, trigger: Trigger) -> CampaignPublic:
    row = await repo.cancel(campaign_id)
    await ledger.cancel_queued(row.id)
    trigger.refresh()
    return public(row, (await ledger.counts([row.id]))[row.id])


@campaigns.get("/{campaign_id}/deliveries", response_model=DeliveryPage,
               summary="Per recipient: status, reason and attempts, paged by cursor")
async def list_deliveries(
    campaign_id: str,
    repo: Campaigns,
    ledger: Ledger,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page", max_length=MAX_ID_CHARS,
                                        pattern=ID_PATTERN)] = None,
) -> DeliveryPage:
    row = await repo.get(campaign_id)
    rows = await ledger.page(row.id, status_, cursor, limit)
    items = [DeliveryPublic(user_id=d.user_id, email=d.email, status=d.status, reason=d.reason,
                            attempts=d.attempts, updated_at=d.updated_at) for d in rows]
    return DeliveryPage(items=items, next_cursor=rows[-1].user_id if len(rows) == limit else None)
