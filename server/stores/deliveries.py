"""The delivery ledger: one row per (campaign, user) in `campaign_deliveries`.

The row is the idempotency key: the Communication API records it before a job is published, and
the email worker claims it (queued → sending) before it talks to SMTP. A job read twice (replay,
rebalance, a duplicate publish) finds its row already claimed or finished and sends nothing. A
worker that dies between claiming and finishing leaves the row `sending`: after the lease it is
marked failed as *in doubt* rather than sent again, so a user never gets the same campaign twice.

The claim is also where the sending rules are decided, in the claim's own transaction, as late as
possible: a suppressed address is skipped (an unsubscribe after the fan-out still holds), a recipient
inside the campaign's quiet hours is deferred (the row keeps the rendered job and `not_before`; the
worker's sweep publishes it again then), and the frequency cap counts the address's mails from every
campaign in the window under a per-address advisory lock, so two campaigns at once cannot both pass it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from server.domain.email import EmailJob, FrequencyCap, QuietHours, normalized_address
from server.domain.timeutil import format_timestamp
from server.stores.postgres import Database
from server.stores.suppressions import suppression_of


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    DEFERRED = "deferred"


class ClaimResult(StrEnum):
    SEND = "send"  # this worker owns the delivery now
    DONE = "done"  # already finished (or skipped, or deferred to later): nothing to do now
    BUSY = "busy"  # another worker holds a fresh claim
    CANCELLED = "cancelled"  # the campaign was cancelled before this job ran
    SKIPPED = "skipped"  # suppressed, or over the frequency cap: recorded with the reason
    DEFERRED = "deferred"  # inside the recipient's quiet hours: published again when they end


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
    reason: str | None = None


EMPTY_COUNTS = {s.value: 0 for s in DeliveryStatus}
# A campaign's every recipient has an outcome: nothing queued, being sent, or waiting for quiet hours to end.
NOTHING_PENDING = ("NOT EXISTS (SELECT 1 FROM campaign_deliveries p WHERE p.campaign_id = campaigns.id"
                   " AND p.status IN ('queued', 'sending', 'deferred'))")
# A fanned-out campaign with nothing pending is COMPLETED (a campaign still fanning out is not: more may come).
_COMPLETE = ("UPDATE campaigns SET status = 'COMPLETED', completed_at = now(), updated_at = now()"
             f" WHERE status = 'SENDING' AND fanned_out_at IS NOT NULL AND {NOTHING_PENDING}")


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

    async def claim(self, job: EmailJob, now: datetime | None = None) -> Claim:
        """Take a queued (or due deferred) delivery for sending, counting the attempt, or say why not:
        the campaign was cancelled, the address is suppressed or over the cap, or it is quiet hours."""
        now = now or datetime.now(UTC)
        campaign_id, user_id = job.campaign_id, job.user_id
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT d.status, d.not_before, d.email, c.status, c.frequency_cap_max, c.frequency_cap_within,"
                " c.quiet_start, c.quiet_end, c.quiet_timezone"
                " FROM campaign_deliveries d JOIN campaigns c ON c.id = d.campaign_id"
                " WHERE d.campaign_id = %s AND d.user_id = %s FOR UPDATE OF d",
                (campaign_id, user_id),
            )
            row = await cur.fetchone()
            if row is None:
                return Claim(ClaimResult.DONE)  # never recorded: not ours to send
            status, not_before, email, campaign_status, cap_max, cap_within, quiet_start, quiet_end, quiet_tz = row
            if status == DeliveryStatus.SENDING:
                return Claim(ClaimResult.BUSY)
            due_again = status == DeliveryStatus.DEFERRED and not_before is not None and not_before <= now
            if status != DeliveryStatus.QUEUED and not due_again:
                return Claim(ClaimResult.DONE)
            if campaign_status == "CANCELLED":
                await self._set(conn, campaign_id, user_id, DeliveryStatus.CANCELLED, "campaign cancelled")
                return Claim(ClaimResult.CANCELLED)
            address = email or job.to
            suppressed = await suppression_of(conn, address)
            if suppressed is not None:
                return await self._skip(conn, job, suppressed.skip_reason)
            if quiet_start is not None and quiet_end is not None:
                resumes = QuietHours(quiet_start, quiet_end, quiet_tz or "UTC").resumes_at(now, job.timezone)
                if resumes is not None:
                    return await self._defer(conn, job, resumes)
            if cap_max is not None and cap_within is not None:
                cap = FrequencyCap(cap_max, cap_within)
                if await self._mails_within(conn, address, now - cap.within) >= cap.max:
                    return await self._skip(conn, job, cap.describe())
            cur = await conn.execute(
                "UPDATE campaign_deliveries SET status = 'sending', attempts = attempts + 1, sent_at = %s,"
                " not_before = NULL, job = NULL, updated_at = now()"
                " WHERE campaign_id = %s AND user_id = %s RETURNING attempts",
                (now, campaign_id, user_id),
            )
            claimed = await cur.fetchone()
            return Claim(ClaimResult.SEND, int(claimed[0]) if claimed else 0)

    @staticmethod
    async def _mails_within(conn: psycopg.AsyncConnection[Any], address: str, since: datetime) -> int:
        """Mails sent (or being sent) to `address` since `since`, from every campaign. The advisory lock, held
        to the end of the claim's transaction, makes the count and the claim that follows it one step."""
        normalized = normalized_address(address)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('email-cap:' || %s, 0))", (normalized,))
        cur = await conn.execute(
            "SELECT count(*) FROM campaign_deliveries WHERE lower(email) = %s AND status IN ('sending', 'sent')"
            " AND sent_at >= %s",
            (normalized, since),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _skip(self, conn: psycopg.AsyncConnection[Any], job: EmailJob, reason: str) -> Claim:
        await self._set(conn, job.campaign_id, job.user_id, DeliveryStatus.SKIPPED, reason)
        await conn.execute(_COMPLETE + " AND id = %s", (job.campaign_id,))
        return Claim(ClaimResult.SKIPPED, reason=reason)

    @staticmethod
    async def _defer(conn: psycopg.AsyncConnection[Any], job: EmailJob, until: datetime) -> Claim:
        reason = f"quiet hours: held until {format_timestamp(until)}"
        await conn.execute(
            "UPDATE campaign_deliveries SET status = 'deferred', reason = %s, not_before = %s, job = %s,"
            " republished_at = NULL, updated_at = now() WHERE campaign_id = %s AND user_id = %s",
            (reason, until, Jsonb(job.to_json()), job.campaign_id, job.user_id),
        )
        return Claim(ClaimResult.DEFERRED, reason=reason)

    async def finish(self, campaign_id: str, user_id: str, status: DeliveryStatus, reason: str | None = None) -> None:
        """Record the outcome of a claimed delivery (sent, failed, or queued again for a retry); the campaign is
        COMPLETED with its last outcome."""
        async with self.db.connection() as conn:
            await self._set(conn, campaign_id, user_id, status, reason)
            if status is not DeliveryStatus.QUEUED:
                await conn.execute(_COMPLETE + " AND id = %s", (campaign_id,))

    async def complete_finished(self) -> int:
        """COMPLETED for every fanned-out campaign with nothing pending (the sweep's catch-all, e.g. after
        expired claims); returns how many."""
        async with self.db.connection() as conn:
            cur = await conn.execute(_COMPLETE)
            return cur.rowcount

    async def due_deferred(self, now: datetime, limit: int = 500) -> list[EmailJob]:
        """Deferred jobs whose quiet hours have ended and that were not published again in the last minute;
        they are marked published. A job published twice is harmless: the claim keeps it single."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE campaign_deliveries SET republished_at = now() WHERE (campaign_id, user_id) IN ("
                " SELECT campaign_id, user_id FROM campaign_deliveries WHERE status = 'deferred' AND not_before <= %s"
                " AND (republished_at IS NULL OR republished_at < now() - interval '1 minute')"
                " ORDER BY not_before LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING job",
                (now, limit),
            )
            return [EmailJob.from_json(row[0]) for row in await cur.fetchall() if row[0]]

    async def address_of(self, campaign_id: str, user_id: str) -> str | None:
        """The address a campaign's mail to `user_id` went to; None if there was none (or it was erased)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT email FROM campaign_deliveries WHERE campaign_id = %s AND user_id = %s",
                (_uuid_or_none(campaign_id), user_id),
            )
            row = await cur.fetchone()
        return str(row[0]) if row and row[0] else None

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
                "UPDATE campaign_deliveries SET status = 'cancelled', reason = 'campaign cancelled', job = NULL,"
                " updated_at = now() WHERE campaign_id = %s AND status IN ('queued', 'deferred')",
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


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


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
       job = NULL,
       reason = CASE WHEN d.status IN ('queued', 'deferred') THEN 'recipient deleted'
                     WHEN d.email IS NOT NULL AND d.email <> '' THEN replace(d.reason, d.email, '[erased]')
                     ELSE d.reason END,
       status = CASE WHEN d.status IN ('queued', 'deferred') THEN 'cancelled' ELSE d.status END,
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
