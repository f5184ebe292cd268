"""Destinations in PostgreSQL (`destinations`), and what the API reads and changes of their deliveries.

The signing secret and the header values are stored sealed (`server.runtime.secrets.SecretBox`): the
row keeps only the header names and a hint of the secret in clear. After a rotation the previous secret
stays sealed beside the new one until `previous_secret_expires_at`, and calls are signed with both.
The delivery rows are written and worked by the delivery worker (`server/delivery_worker`); here they
are counted, listed and put back to pending for a replay.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from server.domain.membership import Change
from server.runtime.errors import Conflict, NotFound
from server.runtime.secrets import SecretBox, new_signing_secret, secret_hint
from server.stores.postgres import Database

_COLUMNS = ("id::text AS id, name, type, url, segment_ids::text[] AS segment_ids, events, header_names,"
            " headers_sealed, secret_sealed, secret_hint, previous_secret_sealed, previous_secret_expires_at,"
            " status, paused_reason, consecutive_failures, last_delivery_at, last_error, created_at, updated_at")
_UPDATE = ("UPDATE destinations SET name = %(name)s, url = %(url)s, segment_ids = %(segments)s::uuid[],"
           " events = %(events)s, header_names = COALESCE(%(header_names)s, header_names),"
           " headers_sealed = CASE WHEN %(header_names)s::text[] IS NULL THEN headers_sealed"
           " ELSE %(headers_sealed)s END,"
           " status = COALESCE(%(status)s, status),"
           # resuming (PAUSED → ACTIVE) starts the failure count afresh
           " paused_reason = CASE WHEN %(status)s = 'ACTIVE' THEN NULL"
           " WHEN %(status)s = 'PAUSED' AND status = 'ACTIVE' THEN %(reason)s ELSE paused_reason END,"
           " consecutive_failures = CASE WHEN %(status)s = 'ACTIVE' AND status = 'PAUSED' THEN 0"
           " ELSE consecutive_failures END,"
           " updated_at = now() WHERE id = %(id)s")
_PAUSED_BY_API = "paused through the API"
DeliveryState = Literal["pending", "retrying", "delivered", "failed"]
# One pass over a destination's deliveries: how many per status, and the age of the oldest open change.
_STATS = ("SELECT destination_id::text,"
          " count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status = 'pending'),"
          " count(*) FILTER (WHERE status = 'retrying'), count(*) FILTER (WHERE status = 'failed'),"
          " extract(epoch FROM now() - min(changed_at) FILTER (WHERE status IN ('pending', 'retrying')))"
          " FROM destination_deliveries WHERE destination_id = ANY(%s) GROUP BY destination_id")
_DELIVERY_COLUMNS = ("seq, message_id::text, user_id, segment_id::text, change, status, attempts, last_status_code,"
                     " last_answer, last_error, changed_at, created_at, next_attempt_at, delivered_at")
_DELIVERY_FILTER = ("destination_id = %(id)s AND (%(status)s::text IS NULL OR status = %(status)s)"
                    " AND (%(user)s::text IS NULL OR user_id = %(user)s) AND (%(before)s::bigint IS NULL"
                    " OR seq < %(before)s)")
_REPLAY = ("UPDATE destination_deliveries SET status = 'pending', attempts = 0, first_attempt_at = NULL,"
           " next_attempt_at = now(), updated_at = now()"
           " WHERE destination_id = %(id)s AND changed_at >= %(from)s"
           " AND (%(to)s::timestamptz IS NULL OR changed_at <= %(to)s)"
           " AND (status = 'failed' OR (status = 'delivered' AND NOT %(failed_only)s))")


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """What a caller decides about a destination; `headers=None` on an update keeps the stored ones."""

    name: str
    url: str
    segment_ids: Sequence[str] | None  # None: every segment
    events: Sequence[str]
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DestinationRow:
    id: str
    name: str
    type: str
    url: str
    segment_ids: list[str] | None
    events: list[str]
    header_names: list[str]
    headers_sealed: str | None = field(repr=False)
    secret_sealed: str = field(repr=False)
    secret_hint: str
    previous_secret_sealed: str | None = field(repr=False)
    previous_secret_expires_at: datetime | None
    status: str  # ACTIVE | PAUSED
    paused_reason: str | None
    consecutive_failures: int
    last_delivery_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """A destination's deliveries per status, and how old its oldest undelivered change is."""

    delivered: int = 0
    pending: int = 0
    retrying: int = 0
    failed: int = 0
    lag_s: float | None = None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One change at one destination, as the delivery worker last left it."""

    seq: int
    message_id: str
    user_id: str
    segment_id: str
    change: Change
    status: DeliveryState
    attempts: int
    last_status_code: int | None
    last_answer: str | None
    last_error: str | None
    changed_at: datetime
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} with id '{value}'") from None


def _duplicate(name: str) -> Conflict:
    return Conflict(f"a destination named '{name}' already exists")


class DestinationRepository:
    """Destinations and their delivery rows; seals and opens their secrets with `box`."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    async def create(self, spec: DestinationSpec) -> tuple[DestinationRow, str]:
        """Store a new destination with a fresh signing secret; returns it and the secret, in clear this once."""
        secret = new_signing_secret()
        names, sealed_headers = self._sealed_headers(spec.headers or {})
        sealed_secret = self.box.seal(secret)  # before anything is stored: no key, nothing written
        try:
            async with self.db.connection() as conn, conn.transaction():
                await self._check_segments(conn, spec.segment_ids)
                row = await self._one(conn, (
                    f"INSERT INTO destinations (id, name, url, segment_ids, events, header_names, headers_sealed,"
                    f" secret_sealed, secret_hint) VALUES (%s, %s, %s, %s::uuid[], %s, %s, %s, %s, %s)"
                    f" RETURNING {_COLUMNS}"),
                    (uuid.uuid4(), spec.name, spec.url, spec.segment_ids, list(spec.events), names, sealed_headers,
                     sealed_secret, secret_hint(secret)))
        except psycopg.errors.UniqueViolation:
            raise _duplicate(spec.name) from None
        return row, secret

    async def get(self, destination_id: str) -> DestinationRow:
        async with self.db.connection() as conn:
            row = await self._maybe(conn, f"SELECT {_COLUMNS} FROM destinations WHERE id = %s",
                                    (_uuid(destination_id, "destination"),))
        if row is None:
            raise NotFound(f"no destination with id '{destination_id}'")
        return row

    async def find(self, limit: int, offset: int) -> tuple[list[DestinationRow], int]:
        """A page of destinations in the order they were created, and how many there are."""
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT count(*) AS n FROM destinations")
            total = await cur.fetchone()
            await cur.execute(f"SELECT {_COLUMNS} FROM destinations ORDER BY created_at, id LIMIT %s OFFSET %s",
                              (limit, offset))
            rows = [DestinationRow(**r) for r in await cur.fetchall()]
        return rows, int(total["n"]) if total else 0

    async def update(self, destination_id: str, spec: DestinationSpec, status: str | None) -> DestinationRow:
        """Replace what `spec` names; `status` ACTIVE resumes a paused destination, PAUSED stops its calls (the
        worker still records its changes), None keeps it. A resume, or a new URL or headers (a fix, most
        likely), makes the deliveries waiting for a retry due now."""
        key = _uuid(destination_id, "destination")
        try:
            async with self.db.connection() as conn, conn.transaction():
                previous = await self._maybe(conn, f"SELECT {_COLUMNS} FROM destinations WHERE id = %s FOR UPDATE",
                                             (key,))
                if previous is None:
                    raise NotFound(f"no destination with id '{destination_id}'")
                await self._check_segments(conn, spec.segment_ids)
                names, sealed = self._sealed_headers(spec.headers) if spec.headers is not None else (None, None)
                row = await self._one(conn, f"{_UPDATE} RETURNING {_COLUMNS}", {
                    "id": key, "name": spec.name, "url": spec.url, "segments": spec.segment_ids,
                    "events": list(spec.events), "header_names": names, "headers_sealed": sealed,
                    "status": status, "reason": _PAUSED_BY_API})
                resumed = previous.status == "PAUSED" and row.status == "ACTIVE"
                if resumed or row.url != previous.url or spec.headers is not None:
                    await conn.execute("UPDATE destination_deliveries SET next_attempt_at = now(), updated_at = now()"
                                       " WHERE destination_id = %s AND status = 'retrying'", (key,))
        except psycopg.errors.UniqueViolation:
            raise _duplicate(spec.name) from None
        return row

    async def delete(self, destination_id: str) -> None:
        """Remove a destination; its delivery rows go with it (ON DELETE CASCADE)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("DELETE FROM destinations WHERE id = %s",
                                     (_uuid(destination_id, "destination"),))
            if cur.rowcount == 0:
                raise NotFound(f"no destination with id '{destination_id}'")

    async def rotate(self, destination_id: str, grace_s: int) -> tuple[DestinationRow, str]:
        """A new signing secret; the current one is still signed with for `grace_s` seconds (0: not at all).
        A secret rotated out earlier and still in its grace period is dropped: two are honoured at most."""
        await self.get(destination_id)  # 404 before 503 when AM_SECRETS_KEY is unset
        secret = new_signing_secret()
        sealed = self.box.seal(secret)
        async with self.db.connection() as conn:
            row = await self._maybe(conn, (
                f"UPDATE destinations SET previous_secret_sealed = CASE WHEN %(grace)s > 0 THEN secret_sealed END,"
                f" previous_secret_expires_at = CASE WHEN %(grace)s > 0"
                f" THEN now() + make_interval(secs => %(grace)s) END,"
                f" secret_sealed = %(sealed)s, secret_hint = %(hint)s, updated_at = now()"
                f" WHERE id = %(id)s RETURNING {_COLUMNS}"),
                {"grace": grace_s, "sealed": sealed, "hint": secret_hint(secret),
                 "id": _uuid(destination_id, "destination")})
        if row is None:
            raise NotFound(f"no destination with id '{destination_id}'")
        return row, secret

    async def stats(self, destination_ids: Sequence[str]) -> dict[str, DeliveryStats]:
        """Per destination, its counts per status and lag, in one query (zeros for one without deliveries)."""
        result = {d: DeliveryStats() for d in destination_ids}
        if not destination_ids:
            return result
        async with self.db.connection() as conn:
            cur = await conn.execute(_STATS, ([uuid.UUID(d) for d in destination_ids],))
            for destination_id, delivered, pending, retrying, failed, lag in await cur.fetchall():
                result[destination_id] = DeliveryStats(int(delivered), int(pending), int(retrying), int(failed),
                                                       max(0.0, float(lag)) if lag is not None else None)
        return result

    async def deliveries(self, destination_id: str, status: str | None, user_id: str | None, before: int | None,
                         limit: int) -> list[DeliveryAttempt]:
        """Newest first: up to `limit` deliveries older than `before` (a seq), optionally of one status or user."""
        params = {"id": _uuid(destination_id, "destination"), "status": status, "user": user_id, "before": before,
                  "limit": limit}
        async with self.db.connection() as conn:
            cur = await conn.execute(f"SELECT {_DELIVERY_COLUMNS} FROM destination_deliveries"
                                     f" WHERE {_DELIVERY_FILTER} ORDER BY seq DESC LIMIT %(limit)s", params)
            return [DeliveryAttempt(*row) for row in await cur.fetchall()]

    async def replay(self, destination_id: str, since: datetime, until: datetime | None, failed_only: bool) -> int:
        """Put failed (and, unless `failed_only`, delivered) deliveries whose change happened in [since, until]
        back to pending, due now; they go again with the same message id and body. Returns how many."""
        params = {"id": _uuid(destination_id, "destination"), "from": since, "to": until, "failed_only": failed_only}
        async with self.db.connection() as conn:
            cur = await conn.execute(_REPLAY, params)
            return cur.rowcount

    def signing_secrets(self, row: DestinationRow) -> list[str]:
        """The secrets a call is signed with now: the current one, and the previous one until it expires."""
        secrets = [self.box.open(row.secret_sealed)]
        if row.previous_secret_sealed and row.previous_secret_expires_at \
                and row.previous_secret_expires_at > datetime.now(UTC):
            secrets.append(self.box.open(row.previous_secret_sealed))
        return secrets

    def headers(self, row: DestinationRow) -> dict[str, str]:
        """The headers sent with every call, opened."""
        if not row.headers_sealed:
            return {}
        opened: dict[str, str] = json.loads(self.box.open(row.headers_sealed))
        return opened

    def _sealed_headers(self, headers: dict[str, str]) -> tuple[list[str], str | None]:
        """The names kept in clear and the sealed JSON of the whole; an empty set is stored as nothing."""
        if not headers:
            return [], None
        return list(headers), self.box.seal(json.dumps(headers, ensure_ascii=False))

    @staticmethod
    async def _check_segments(conn: psycopg.AsyncConnection[Any], segment_ids: Sequence[str] | None) -> None:
        """NotFound naming the first of `segment_ids` that is not a live segment."""
        if not segment_ids:
            return
        cur = await conn.execute("SELECT id::text FROM segments WHERE id = ANY(%s::uuid[]) AND deleted_at IS NULL",
                                 (list(segment_ids),))
        live = {row[0] for row in await cur.fetchall()}
        missing = [s for s in segment_ids if s not in live]
        if missing:
            raise NotFound(f"no segment with id '{missing[0]}'")

    @staticmethod
    async def _maybe(conn: psycopg.AsyncConnection[Any], query: str, params: Any) -> DestinationRow | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            row = await cur.fetchone()
        return DestinationRow(**row) if row else None

    @classmethod
    async def _one(cls, conn: psycopg.AsyncConnection[Any], query: str, params: Any) -> DestinationRow:
        row = await cls._maybe(conn, query, params)
        assert row is not None, "the row was just written"
        return row
