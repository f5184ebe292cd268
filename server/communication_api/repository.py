"""Campaigns in PostgreSQL: definition, trigger and the status of their fan-out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from psycopg.rows import dict_row

from server.domain.email import FrequencyCap, QuietHours
from server.runtime.errors import Conflict, NotFound
from server.stores.deliveries import NOTHING_PENDING
from server.stores.postgres import Database

_COLUMNS = ("id::text AS id, name, segment_id::text AS segment_id, channel, subject, body, body_html, trigger, send_at,"
            " status, audience_size, error, frequency_cap_max, frequency_cap_within, quiet_start, quiet_end,"
            " quiet_timezone, fanned_out_at, completed_at, created_at, updated_at")

_FIND_FILTER = ("(%(status)s::text IS NULL OR status = %(status)s)"
                " AND (%(segment)s::uuid IS NULL OR segment_id = %(segment)s)")
# A fan-out whose dispatcher has not reported progress for this long is taken over (crash, restart).
DISPATCH_LEASE_S = 30


@dataclass(frozen=True)
class CampaignRow:
    id: str
    name: str
    segment_id: str
    channel: str
    subject: str
    body: str
    body_html: str | None
    trigger: str  # now | at | on_enter
    send_at: datetime | None
    status: str  # SCHEDULED | SENDING | COMPLETED | ACTIVE | CANCELLED | FAILED
    audience_size: int | None
    error: str | None
    frequency_cap_max: int | None
    frequency_cap_within: timedelta | None
    quiet_start: time | None
    quiet_end: time | None
    quiet_timezone: str | None
    fanned_out_at: datetime | None  # every recipient is recorded (and queued); deliveries may still be under way
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def frequency_cap(self) -> FrequencyCap | None:
        if self.frequency_cap_max is None or self.frequency_cap_within is None:
            return None
        return FrequencyCap(self.frequency_cap_max, self.frequency_cap_within)

    @property
    def quiet_hours(self) -> QuietHours | None:
        if self.quiet_start is None or self.quiet_end is None:
            return None
        return QuietHours(self.quiet_start, self.quiet_end, self.quiet_timezone or "UTC")


@dataclass(frozen=True)
class CampaignDraft:
    """A campaign as it is created: what to send, to whom, when, and the sending rules that apply to it."""

    name: str
    segment_id: str
    subject: str
    body: str
    body_html: str | None
    trigger: str
    send_at: datetime | None
    frequency_cap: FrequencyCap | None
    quiet_hours: QuietHours | None


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} with id '{value}'") from None


class CampaignRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def segment_name(self, segment_id: str) -> str:
        """The live segment's name; NotFound if it does not exist (or was deleted)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT name FROM segments WHERE id = %s AND deleted_at IS NULL",
                                     (_uuid(segment_id, "segment"),))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no segment with id '{segment_id}'")
        return str(row[0])

    async def create(self, draft: CampaignDraft) -> CampaignRow:
        status = "ACTIVE" if draft.trigger == "on_enter" else "SCHEDULED"
        cap, quiet = draft.frequency_cap, draft.quiet_hours
        return await self._one(
            "INSERT INTO campaigns (id, name, segment_id, subject, body, body_html, trigger, send_at, status,"
            " frequency_cap_max, frequency_cap_within, quiet_start, quiet_end, quiet_timezone)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, COALESCE(%s, now()), %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (uuid.uuid4(), draft.name, draft.segment_id, draft.subject, draft.body, draft.body_html, draft.trigger,
             draft.send_at, status, cap.max if cap else None, cap.within if cap else None,
             quiet.start if quiet else None, quiet.end if quiet else None, quiet.timezone if quiet else None),
        )

    async def get(self, campaign_id: str) -> CampaignRow:
        row = await self._maybe(f"SELECT {_COLUMNS} FROM campaigns WHERE id = %s", (_uuid(campaign_id, "campaign"),))
        if row is None:
            raise NotFound(f"no campaign with id '{campaign_id}'")
        return row

    async def find(self, status: str | None, segment_id: str | None, limit: int,
                   offset: int) -> tuple[list[CampaignRow], int]:
        params: dict[str, Any] = {"status": status, "segment": _uuid(segment_id, "segment") if segment_id else None,
                                  "limit": limit, "offset": offset}
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT count(*) AS n FROM campaigns WHERE {_FIND_FILTER}", params)
            total = await cur.fetchone()
            await cur.execute(f"SELECT {_COLUMNS} FROM campaigns WHERE {_FIND_FILTER}"
                              " ORDER BY created_at DESC, id LIMIT %(limit)s OFFSET %(offset)s", params)
            rows = [CampaignRow(**r) for r in await cur.fetchall()]
        return rows, int(total["n"]) if total else 0

    async def cancel(self, campaign_id: str) -> CampaignRow:
        """Stop a campaign: no further jobs are queued and queued ones are not sent."""
        await self.get(campaign_id)  # 404 before 409
        row = await self._maybe(
            f"UPDATE campaigns SET status = 'CANCELLED', updated_at = now() WHERE id = %s AND status <> 'CANCELLED'"
            f" RETURNING {_COLUMNS}",
            (campaign_id,),
        )
        if row is None:
            raise Conflict(f"campaign '{campaign_id}' is already cancelled")
        return row

    async def claim_due(self) -> CampaignRow | None:
        """One scheduled campaign whose time has come, or a fan-out abandoned by a dispatcher that
        stopped; it is marked SENDING (the lease) by this call."""
        return await self._maybe(
            f"UPDATE campaigns SET status = 'SENDING', updated_at = now() WHERE id = ("
            f" SELECT id FROM campaigns WHERE (status = 'SCHEDULED' AND send_at <= now())"
            f" OR (status = 'SENDING' AND fanned_out_at IS NULL AND updated_at < now() - make_interval(secs => %s))"
            f" ORDER BY send_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
            (DISPATCH_LEASE_S,),
        )

    async def still_sending(self, campaign_id: str) -> bool:
        """Renew the fan-out's lease; False if the campaign was cancelled meanwhile."""
        async with self.db.connection() as conn:
            cur = await conn.execute("UPDATE campaigns SET updated_at = now() WHERE id = %s AND status = 'SENDING'",
                                     (campaign_id,))
            return cur.rowcount == 1

    async def finish_fanout(self, campaign_id: str, audience_size: int) -> None:
        """Every recipient is recorded: the campaign stays SENDING until each has an outcome, and is COMPLETED
        at once when none is pending (all skipped, say). The worker completes it after the last delivery."""
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE campaigns SET audience_size = %s, fanned_out_at = now(), updated_at = now(),"
                f" status = CASE WHEN {NOTHING_PENDING} THEN 'COMPLETED' ELSE status END,"
                f" completed_at = CASE WHEN {NOTHING_PENDING} THEN now() END"
                " WHERE id = %s AND status = 'SENDING'",
                (audience_size, campaign_id),
            )

    async def active_on_enter(self) -> dict[str, list[CampaignRow]]:
        """Active triggered campaigns by segment id."""
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM campaigns WHERE status = 'ACTIVE' AND trigger = 'on_enter'")
            result: dict[str, list[CampaignRow]] = {}
            for r in await cur.fetchall():
                row = CampaignRow(**r)
                result.setdefault(row.segment_id, []).append(row)
        return result

    async def _maybe(self, query: str, params: Any) -> CampaignRow | None:
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            row = await cur.fetchone()
        return CampaignRow(**row) if row else None

    async def _one(self, query: str, params: Any) -> CampaignRow:
        row = await self._maybe(query, params)
        assert row is not None, "INSERT … RETURNING returns its row"
        return row
