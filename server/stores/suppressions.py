"""The suppression list: one row per address that must not be mailed again, with why and since when.

Unsubscribes (the one-click link), hard bounces (a permanent refusal of the recipient at send time), the
`emailOptOut` trait and entries added by hand all land here. The fan-out skips suppressed recipients,
and the email worker checks again when it claims a mail, so an unsubscribe between the two still holds.
The first reason an address was suppressed for is kept; adding it again changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

from server.domain.email import normalized_address
from server.stores.postgres import Database


class SuppressionReason(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    HARD_BOUNCE = "hard_bounce"
    OPTED_OUT = "opted_out"
    MANUAL = "manual"

    @property
    def skip_reason(self) -> str:
        """What a skipped delivery says."""
        return _SKIP_REASONS[self]


_SKIP_REASONS = {SuppressionReason.UNSUBSCRIBED: "unsubscribed", SuppressionReason.HARD_BOUNCE: "hard bounce",
                 SuppressionReason.OPTED_OUT: "opted out (emailOptOut)", SuppressionReason.MANUAL: "suppressed"}


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: SuppressionReason
    campaign_id: str | None
    user_id: str | None
    detail: str | None
    created_at: datetime


_COLUMNS = "address, reason, campaign_id::text, user_id, detail, created_at"


def _suppression(row: Sequence[Any]) -> Suppression:
    address, reason, campaign_id, user_id, detail, created_at = row
    return Suppression(address, SuppressionReason(reason), campaign_id, user_id, detail, created_at)


async def suppress(conn: psycopg.AsyncConnection[Any], address: str, reason: SuppressionReason,
                   campaign_id: str | None = None, user_id: str | None = None, detail: str | None = None) -> bool:
    """Add `address` in the caller's transaction; False if it was already suppressed (its first reason stays)."""
    cur = await conn.execute(
        "INSERT INTO email_suppressions (address, reason, campaign_id, user_id, detail) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (address) DO NOTHING",
        (normalized_address(address), reason.value, campaign_id, user_id, detail),
    )
    return cur.rowcount == 1


async def suppression_of(conn: psycopg.AsyncConnection[Any], address: str) -> SuppressionReason | None:
    """Why `address` is suppressed, in the caller's transaction; None if it may be mailed."""
    cur = await conn.execute("SELECT reason FROM email_suppressions WHERE address = %s",
                             (normalized_address(address),))
    row = await cur.fetchone()
    return SuppressionReason(row[0]) if row else None


class SuppressionList:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, address: str, reason: SuppressionReason, campaign_id: str | None = None,
                  user_id: str | None = None, detail: str | None = None) -> Suppression:
        """Suppress `address` (if it is not already) and return its entry."""
        async with self.db.connection() as conn:
            await suppress(conn, address, reason, campaign_id, user_id, detail)
            entry = await self._get(conn, address)
        assert entry is not None, "inserted or already there"
        return entry

    async def add_new(self, address: str, reason: SuppressionReason, campaign_id: str | None = None,
                      user_id: str | None = None, detail: str | None = None) -> tuple[Suppression, bool]:
        """`add`, and whether this call added the entry (False: it was there already, and is left as it was)."""
        async with self.db.connection() as conn:
            added = await suppress(conn, address, reason, campaign_id, user_id, detail)
            entry = await self._get(conn, address)
        assert entry is not None, "inserted or already there"
        return entry, added

    async def add_many(self, entries: Sequence[tuple[str, SuppressionReason, str | None, str | None]]) -> None:
        """(address, reason, campaign id, user id) each; existing entries are kept as they are."""
        if not entries:
            return
        async with self.db.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO email_suppressions (address, reason, campaign_id, user_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (address) DO NOTHING",
                [(normalized_address(a), r.value, c, u) for a, r, c, u in entries],
            )

    async def get(self, address: str) -> Suppression | None:
        async with self.db.connection() as conn:
            return await self._get(conn, address)

    @staticmethod
    async def _get(conn: psycopg.AsyncConnection[Any], address: str) -> Suppression | None:
        cur = await conn.execute(f"SELECT {_COLUMNS} FROM email_suppressions WHERE address = %s",
                                 (normalized_address(address),))
        row = await cur.fetchone()
        return _suppression(row) if row else None

    async def remove(self, address: str) -> bool:
        """Mail `address` again; False if it was not suppressed."""
        async with self.db.connection() as conn:
            cur = await conn.execute("DELETE FROM email_suppressions WHERE address = %s",
                                     (normalized_address(address),))
            return cur.rowcount == 1

    async def reasons(self, addresses: Sequence[str]) -> dict[str, SuppressionReason]:
        """The suppressed ones among `addresses` (normalized), with their reason: one query for a page."""
        if not addresses:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT address, reason FROM email_suppressions WHERE address = ANY(%s)",
                                     (sorted({normalized_address(a) for a in addresses}),))
            return {address: SuppressionReason(reason) for address, reason in await cur.fetchall()}

    async def page(self, reason: SuppressionReason | None, after: str | None, limit: int) -> list[Suppression]:
        """Entries by address, after the cursor `after`."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM email_suppressions WHERE (%s::text IS NULL OR reason = %s)"
                " AND address > %s ORDER BY address LIMIT %s",
                (reason, reason, after or "", limit),
            )
            return [_suppression(row) for row in await cur.fetchall()]

    async def count(self, reason: SuppressionReason | None) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM email_suppressions WHERE %s::text IS NULL OR reason = %s",
                                     (reason, reason))
            row = await cur.fetchone()
            return int(row[0]) if row else 0


async def forget_suppressed_users(conn: psycopg.AsyncConnection[Any], user_ids: Sequence[str]) -> int:
    """Erasure, in the caller's transaction: the entries keep the address (it must stay suppressed) but lose
    whose it was."""
    if not user_ids:
        return 0
    cur = await conn.execute("UPDATE email_suppressions SET user_id = NULL WHERE user_id = ANY(%s)", (list(user_ids),))
    return cur.rowcount
