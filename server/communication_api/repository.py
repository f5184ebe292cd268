"""Campaigns in PostgreSQL: definition, trigger and the status of their fan-out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from server.runtime.errors import Conflict, NotFound
from server.stores.postgres import Database

_COLUMNS = ("id::text AS id, name, segment_id::text AS segment_id, channel, subject, body, trigger, send_at, status,"
            " audience_size, error, created_at, updated_at")
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
    trigger: str  # now | at | on_enter
    send_at: datetime | None
    status: str  # SCHEDULED | SENDING | QUEUED | ACTIVE | CANCELLED | FAILED
    audience_size: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime


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

    async def create(self, name: str, segment_id: str, subject: str, body: str, trigger: str,
                     send_at: datetime | None) -> CampaignRow:
        status = "ACTIVE" if trigger == "on_enter" else "SCHEDULED"
        return await self._one(
            f"INSERT INTO campaigns (id, name, segment_id, subject, body, trigger, send_at, status)"
            f" VALUES (%s, %s, %s, %s, %s, %s, COALESCE(%s, now()), %s) RETURNING {_COLUMNS}",
            (uuid.uuid4(), name, segment_id, subject, body, trigger, send_at, status),
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
            f" OR (status = 'SENDING' AND updated_at < now() - make_interval(secs => %s))"
            f" ORDER BY send_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
            (DISPATCH_LEASE_S,),
        )

    async def still_sending(self, campaign_id: str) -> bool:
        """Renew the fan-out's lease; False if the campaign was cancelled meanwhile."""
        async with self.db.connection() as conn:
            cur = await conn.execute("UPDATE campaigns SET updated_at = now() WHERE id = %s AND status = 'SENDING'",
                                     (campaign_id,))
            return cur.rowcount == 1

    async def finish_fanout(self, campaign_id: str, status: str, audience_size: int | None,
                            error: str | None = None) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE campaigns SET status = %s, audience_size = %s, error = %s, updated_at = now()"
                " WHERE id = %s AND status = 'SENDING'",
                (status, audience_size, error, campaign_id),
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
