"""The delivery ledger: one row per (campaign, user) in `campaign_deliveries`.

The row is the idempotency key: the Communication API records it before a job is published, and
the email worker claims it (queued → sending) before it talks to SMTP. A job read twice (replay,
rebalance, a duplicate publish) finds its row already claimed or finished and sends nothing. A
worker that dies between claiming and finishing leaves the row `sending`: after the lease it is
marked failed as *in doubt* rather than sent again, so a user never gets the same campaign twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

from server.stores.postgres import Database


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class ClaimResult(StrEnum):
    SEND = "send"  # this worker owns the delivery now
    DONE = "done"  # already finished (or skipped): nothing to do
    BUSY = "busy"  # another worker holds a fresh claim
    CANCELLED = "cancelled"  # the campaign was cancelled before this job ran


@dataclass(frozen=True, slots=True)
class DeliveryEntry:
    user_id: str
    email: str | None
    status: DeliveryStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    user_id: str
    email: str | None
    status: str
    reason: str | None
    attempts: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    result: ClaimResult
    attempts: int = 0


EMPTY_COUNTS = {s.value: 0 for s in DeliveryStatus}


class DeliveryLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, campaign_id: str, entries: Sequence[DeliveryEntry]) -> list[str]:
        """Insert rows not recorded yet; returns the users of `entries` whose row is `queued`
        (new or left from an interrupted run): exactly the jobs to publish."""
        if not entries:
            return []
        async with self.db.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO campaign_deliveries (campaign_id, user_id, email, status, reason)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(campaign_id, e.user_id, e.email, e.status.value, e.reason) for e in entries],
            )
            await cur.execute(
                "SELECT user_id FROM campaign_deliveries WHERE campaign_id = %s AND user_id = ANY(%s)"
                " AND status = 'queued' ORDER BY user_id",
                (campaign_id, [e.user_id for e in entries]),
            )
            return [row[0] for row in await cur.fetchall()]

    async def claim(self, campaign_id: str, user_id: str) -> Claim:
        """Take a queued delivery for sending (counting the attempt), or say why not."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT d.status, c.status FROM campaign_deliveries d JOIN campaigns c ON c.id = d.campaign_id"
                " WHERE d.campaign_id = %s AND d.user_id = %s FOR UPDATE OF d",
                (campaign_id, user_id),
            )
            row = await cur.fetchone()
            if row is None:
                return Claim(ClaimResult.DONE)  # never recorded: not ours to send
            status, campaign_status = row
            if status == DeliveryStatus.SENDING:
                return Claim(ClaimResult.BUSY)
            if status != DeliveryStatus.QUEUED:
                return Claim(ClaimResult.DONE)
            if campaign_status == "CANCELLED":
                await self._set(conn, campaign_id, user_id, DeliveryStatus.CANCELLED, "campaign cancelled")
                return Claim(ClaimResult.CANCELLED)
            cur = await conn.execute(
                "UPDATE campaign_deliveries SET status = 'sending', attempts = attempts + 1, updated_at = now()"
                " WHERE campaign_id = %s AND user_id = %s RETURNING attempts",
                (campaign_id, user_id),
            )
            claimed = await cur.fetchone()
            return Claim(ClaimResult.SEND, int(claimed[0]) if claimed else 0)

    async def finish(self, campaign_id: str, user_id: str, status: DeliveryStatus, reason: str | None = None) -> None:
        """Record the outcome of a claimed delivery (sent, failed, or queued again for a retry)."""
        async with self.db.connection() as conn:
            await self._set(conn, campaign_id, user_id, status, reason)

    @staticmethod
    async def _set(conn: psycopg.AsyncConnection[Any], campaign_id: str, user_id: str, status: DeliveryStatus,
                   reason: str | None) -> None:
        await conn.execute(
            "UPDATE campaign_deliveries SET status = %s, reason = %s, updated_at = now()"
            " WHERE campaign_id = %s AND user_id = %s",
            (status.value, reason, campaign_id, user_id),
        )

    async def expire_stale_claims(self, lease_s: float) -> int:
        """Mark deliveries claimed longer than `lease_s` ago as failed (in doubt); returns how many."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE campaign_deliveries SET status = 'failed', updated_at = now(),"
                " reason = 'in doubt: the worker stopped during SMTP delivery; not resent to avoid a duplicate'"
                " WHERE status = 'sending' AND updated_at < now() - make_interval(secs => %s)",
                (lease_s,),
            )
            return cur.rowcount

    async def cancel_queued(self, campaign_id: str) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE campaign_deliveries SET status = 'cancelled', reason = 'campaign cancelled',"
                " updated_at = now() WHERE campaign_id = %s AND status = 'queued'",
                (campaign_id,),
            )
            return cur.rowcount

    async def counts(self, campaign_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per campaign, how many deliveries are in each status (every status present, zeros included)."""
        result = {cid: dict(EMPTY_COUNTS) for cid in campaign_ids}
        if not campaign_ids:
            return result
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT campaign_id::text, status, count(*) FROM campaign_deliveries"
                " WHERE campaign_id = ANY(%s) GROUP BY 1, 2",
                (list(campaign_ids),),
            )
            for campaign_id, status, count in await cur.fetchall():
                result[campaign_id][status] = int(count)
        return result

    async def page(self, campaign_id: str, status: DeliveryStatus | None, after: str | None,
                   limit: int) -> list[Delivery]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT user_id, email, status, reason, attempts, updated_at FROM campaign_deliveries"
                " WHERE campaign_id = %s AND (%s::text IS NULL OR status = %s) AND user_id > %s"
                " ORDER BY user_id LIMIT %s",
                (campaign_id, status, status, after or "", limit),
            )
            return [Delivery(*row) for row in await cur.fetchall()]


# Each erased user's rows: user_id becomes the SHA-256 hex of the id (as in `user_deletions`; with the row's
# creation time after it if the campaign already holds a row of that hash, from an earlier erasure), the
# address goes, also from the reason (an SMTP refusal quotes it), and what was still queued is cancelled.
# Sent, failed and skipped rows keep their status, so the campaign's counts stay as they were.
_ERASE = """
UPDATE campaign_deliveries d
   SET user_id = e.hashed || CASE WHEN EXISTS (SELECT 1 FROM campaign_deliveries o
                                                WHERE o.campaign_id = d.campaign_id AND o.user_id = e.hashed)
                                  THEN ':' || floor(extract(epoch FROM d.created_at) * 1000000)::bigint::text
                                  ELSE '' END,
       email = NULL,
       reason = CASE WHEN d.status = 'queued' THEN 'recipient deleted'
                     WHEN d.email IS NOT NULL AND d.email <> '' THEN replace(d.reason, d.email, '[erased]')
                     ELSE d.reason END,
       status = CASE WHEN d.status = 'queued' THEN 'cancelled' ELSE d.status END,
       updated_at = now()
  FROM (SELECT u, encode(sha256(convert_to(u, 'UTF8')), 'hex') FROM unnest(%s::text[]) AS u) AS e (user_id, hashed)
 WHERE d.user_id = e.user_id
"""


async def erase_recipients(conn: psycopg.AsyncConnection[Any], user_ids: Sequence[str]) -> int:
    """Take the personal data of `user_ids` out of every campaign's deliveries (see `_ERASE`), in the caller's
    transaction; returns how many rows. Erasing again finds nothing: the ids are gone."""
    if not user_ids:
        return 0
    cur = await conn.execute(_ERASE, (list(user_ids),))
    return cur.rowcount
