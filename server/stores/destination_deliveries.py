"""The delivery worker's side of `destinations` and `destination_deliveries` (migration 0003).

Contract:
- `load` reads every destination (ACTIVE and PAUSED) with its secrets and headers opened, and how
  many of its deliveries are open (pending or retrying). The worker calls it about every second.
- `record` stores one row per (destination, change) in one INSERT; a row already there (the same
  message id: the change was read again) is left as it is, so recording is idempotent. Rows for a
  destination deleted meanwhile are dropped. Only once `record` returned may the offsets move on.
- `due` picks what a destination's sender may call now: the oldest open delivery of each user,
  if its time has come and it is not already being called. A user's next change therefore waits
  until the previous one is delivered or failed, while other users go on.
- `erase` takes erased users out of their finished deliveries (open ones are still delivered).
- `finish` records an attempt and its answer on the delivery and on the destination (consecutive
  failures, last delivery, last error), pausing the destination after too many failures in a row.
When a delivery is due is decided on the database's clock, so that rows the API writes (replay, resume) and
rows the worker writes compare.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg

from server.domain.membership import MembershipChange
from server.runtime.secrets import SecretBox, SecretsUnavailable
from server.runtime.storable import printable
from server.stores.postgres import Database
from server.stores.webhooks import Answer

# A destination committed this long after the API's transaction began still counts as new (see `created_since`).
CREATION_SLACK = timedelta(seconds=5)
# A destination deleted after the INSERT's snapshot fails its foreign key; tried again, the INSERT skips it.
RECORD_TRIES = 3

_LOAD = """
SELECT d.id::text, d.name, d.url, d.segment_ids::text[], d.events, d.headers_sealed, d.secret_sealed,
       d.previous_secret_sealed, d.previous_secret_expires_at, d.status, d.paused_reason,
       d.consecutive_failures, d.last_error, d.created_at,
       (SELECT count(*) FROM destination_deliveries q
         WHERE q.destination_id = d.id AND q.status IN ('pending', 'retrying')),
       now()
  FROM destinations d ORDER BY d.created_at, d.id
"""

_RECORD = """
INSERT INTO destination_deliveries
       (destination_id, message_id, user_id, segment_id, change, segment_version, changed_at, body)
SELECT r.destination_id, r.message_id, r.user_id, r.segment_id, r.change, r.segment_version, r.changed_at, r.body
  FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::uuid[], %s::text[], %s::int[], %s::timestamptz[], %s::text[])
       WITH ORDINALITY AS r (destination_id, message_id, user_id, segment_id, change, segment_version,
                             changed_at, body, n)
 WHERE EXISTS (SELECT 1 FROM destinations d WHERE d.id = r.destination_id)
 ORDER BY r.n
    ON CONFLICT DO NOTHING
RETURNING destination_id::text
"""

# The oldest open deliveries that are due, not in flight, and have no older open one of the same user
# (so each user's go in order), in seq order; and when the next retry falls due (only retrying rows
# wait for a time: pending ones are due from the start). One branch per status, each written out with
# its literal status and its own LIMIT: so each walks the (destination, status, seq) index and stops
# early, never the delivered history (a status taken from a list or a parameter plans a scan of it).
_DUE = """
WITH picked AS (
    SELECT seq FROM (
        (SELECT seq FROM destination_deliveries d
          WHERE destination_id = %(destination)s AND status = 'pending' AND next_attempt_at <= now()
            AND seq <> ALL(%(busy)s::bigint[]) AND NOT EXISTS (SELECT 1 FROM destination_deliveries o
                WHERE o.destination_id = d.destination_id AND o.user_id = d.user_id
                  AND o.status IN ('pending', 'retrying') AND o.seq < d.seq)
          ORDER BY seq LIMIT %(limit)s)
        UNION ALL
        (SELECT seq FROM destination_deliveries d
          WHERE destination_id = %(destination)s AND status = 'retrying' AND next_attempt_at <= now()
            AND seq <> ALL(%(busy)s::bigint[]) AND NOT EXISTS (SELECT 1 FROM destination_deliveries o
                WHERE o.destination_id = d.destination_id AND o.user_id = d.user_id
                  AND o.status IN ('pending', 'retrying') AND o.seq < d.seq)
          ORDER BY seq LIMIT %(limit)s)
    ) AS heads ORDER BY seq LIMIT %(limit)s
)
SELECT now(),
       (SELECT min(next_attempt_at) FROM destination_deliveries
         WHERE destination_id = %(destination)s AND status = 'retrying' AND next_attempt_at > now()),
       q.seq, q.message_id::text, q.user_id, q.body, q.attempts, q.first_attempt_at, q.changed_at
  FROM (SELECT 1) AS one
  LEFT JOIN (picked JOIN destination_deliveries q USING (seq)) ON true
 ORDER BY q.seq
"""

# One statement per finished call (the delivery, then its destination), so a call costs one round trip.
_FINISH_DELIVERY = """
WITH delivery AS (
    UPDATE destination_deliveries
       SET status = %(status)s, attempts = attempts + 1,
           first_attempt_at = coalesce(first_attempt_at, %(started)s),
           next_attempt_at = coalesce(now() + make_interval(secs => %(delay)s::float8), next_attempt_at),
           last_status_code = %(code)s, last_answer = %(answer)s, last_error = %(error)s,
           delivered_at = CASE WHEN %(delivered)s THEN now() END, updated_at = now()
     WHERE seq = %(seq)s AND status IN ('pending', 'retrying')
), touched AS (
"""

# Written only when it changes something a reader sees: every delivery rewriting the one destination row
# would make a destination's calls queue for its lock.
_DELIVERED = """
    UPDATE destinations SET consecutive_failures = 0, last_delivery_at = now()
     WHERE id = %(destination)s AND (consecutive_failures > 0 OR last_delivery_at IS NULL
                                     OR last_delivery_at < now() - interval '1 second')
    RETURNING status
)
SELECT coalesce((SELECT status FROM touched), (SELECT status FROM destinations WHERE id = %(destination)s))
"""

# Old values on the right of SET: the destination pauses on the call that reaches the limit.
_NOT_DELIVERED = """
    UPDATE destinations
       SET consecutive_failures = consecutive_failures + 1, last_error = %(failure)s,
           status = CASE WHEN consecutive_failures + 1 >= %(limit)s THEN 'PAUSED' ELSE status END,
           paused_reason = CASE WHEN status = 'ACTIVE' AND consecutive_failures + 1 >= %(limit)s
                                THEN %(reason)s ELSE paused_reason END,
           updated_at = CASE WHEN status = 'ACTIVE' AND consecutive_failures + 1 >= %(limit)s
                             THEN now() ELSE updated_at END
     WHERE id = %(destination)s
    RETURNING status
)
SELECT (SELECT status FROM touched)
"""


class DestinationStatus(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Destination:
    """A destination as the worker uses it: what it wants, where it is, how to sign for it."""

    id: str
    name: str
    url: str
    segment_ids: frozenset[str] | None  # None: every segment
    events: frozenset[str]
    headers: dict[str, str]
    secret: str | None  # None when it could not be opened (see `unusable`)
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    status: DestinationStatus
    paused_reason: str | None
    consecutive_failures: int
    last_error: str | None
    created_at: datetime
    unusable: str | None = None  # why it cannot be called (its secret does not open)

    def wants(self, change: MembershipChange) -> bool:
        """Whether `change` is recorded for this destination (paused ones record too)."""
        return (change.change in self.events and change.at >= self.created_at
                and (self.segment_ids is None or change.segment_id in self.segment_ids))

    @property
    def sends(self) -> bool:
        return self.status is DestinationStatus.ACTIVE and self.unusable is None

    def signing_secrets(self, now: datetime) -> tuple[str, ...]:
        """The secrets a call is signed with now: the current one, and a rotated-out one until it expires."""
        if self.secret is None:
            return ()
        if self.previous_secret and self.previous_secret_expires_at and now < self.previous_secret_expires_at:
            return self.secret, self.previous_secret
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class LoadedDestinations:
    destinations: dict[str, Destination]
    queued: dict[str, int]  # open (pending + retrying) deliveries per destination
    at: datetime  # the database's time of the snapshot


@dataclass(frozen=True, slots=True)
class NewDelivery:
    destination_id: str
    message_id: str
    change: MembershipChange
    body: str


@dataclass(frozen=True, slots=True)
class DueDelivery:
    seq: int
    message_id: str
    user_id: str
    body: str
    attempts: int  # made before this one
    first_attempt_at: datetime | None
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class DuePick:
    deliveries: list[DueDelivery]
    next_at: datetime | None  # when the next head not picked falls due (None: none is waiting for its time)
    now: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one call ended, as recorded: the status it leaves the delivery in and the answer behind it."""

    status: DeliveryStatus
    answer: Answer
    error: str | None
    delay_s: float | None = None  # until the next attempt, when retrying


class SecretCache:
    """Opens sealed texts once: the same sealed value is not decrypted again on every reload."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self._opened: dict[str, str] = {}

    def open(self, sealed: str) -> str:
        if sealed not in self._opened:
            self._opened[sealed] = self.box.open(sealed)
        return self._opened[sealed]

    def keep_only(self, sealed: Iterable[str]) -> None:
        wanted = set(sealed)
        self._opened = {k: v for k, v in self._opened.items() if k in wanted}


class DestinationDeliveries:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.secrets = SecretCache(box)

    async def load(self) -> LoadedDestinations:
        """Every destination, its secrets and headers opened, with its open deliveries counted."""
        async with self.db.connection() as conn:
            cur = await conn.execute(_LOAD)
            rows = await cur.fetchall()
        destinations, queued, sealed = {}, {}, []
        at: datetime | None = None
        for row in rows:
            destination = self._destination(row)
            destinations[destination.id], queued[destination.id] = destination, int(row[14])
            sealed += [s for s in (row[5], row[6], row[7]) if s]
            at = row[15]
        self.secrets.keep_only(sealed)
        return LoadedDestinations(destinations, queued, at if at is not None else await self._now())

    def _destination(self, row: Sequence[Any]) -> Destination:
        (destination_id, name, url, segment_ids, events, headers_sealed, secret_sealed, previous_sealed,
         previous_expires_at, status, paused_reason, failures, last_error, created_at) = row[:14]
        secret, previous, unusable = None, None, None
        headers: dict[str, Any] = {}
        try:
            secret = self.secrets.open(secret_sealed)
            previous = self.secrets.open(previous_sealed) if previous_sealed else None
            headers = json.loads(self.secrets.open(headers_sealed)) if headers_sealed else {}
        except SecretsUnavailable as exc:
            unusable = str(exc)
        return Destination(
            id=destination_id, name=name, url=url,
            segment_ids=frozenset(segment_ids) if segment_ids is not None else None,
            events=frozenset(events), headers={str(k): str(v) for k, v in headers.items()},
            secret=secret, previous_secret=previous, previous_secret_expires_at=previous_expires_at,
            status=DestinationStatus(status), paused_reason=paused_reason, consecutive_failures=int(failures),
            last_error=last_error, created_at=created_at, unusable=unusable)

    async def _now(self) -> datetime:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
        assert row is not None  # SELECT now() always answers one row
        now: datetime = row[0]
        return now

    async def created_since(self, at: datetime) -> set[str]:
        """Ids of the destinations created about `at` or later (a snapshot taken then may miss them)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT id::text FROM destinations WHERE created_at > %s",
                                     (at - CREATION_SLACK,))
            return {row[0] for row in await cur.fetchall()}

    async def segment_names(self, segment_ids: Iterable[str]) -> dict[str, str]:
        ids = sorted(set(segment_ids))
        if not ids:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT id::text, name FROM segments WHERE id = ANY(%s::uuid[])", (ids,))
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def record(self, deliveries: Sequence[NewDelivery]) -> set[str]:
        """Store the deliveries not stored yet, in order; returns the destinations that got new ones."""
        if not deliveries:
            return set()
        columns: list[list[Any]] = [[] for _ in range(8)]
        for d in deliveries:
            change = d.change
            for column, value in zip(columns, (d.destination_id, d.message_id, change.user_id, change.segment_id,
                                               change.change, change.segment_version, change.at, d.body),
                                     strict=True):
                column.append(value)
        for _ in range(RECORD_TRIES - 1):
            with contextlib.suppress(psycopg.errors.ForeignKeyViolation):  # see RECORD_TRIES
                return await self._insert(columns)
        return await self._insert(columns)

    async def _insert(self, columns: list[list[Any]]) -> set[str]:
        async with self.db.connection() as conn:
            cur = await conn.execute(_RECORD, columns)
            return {row[0] for row in await cur.fetchall()}

    async def erase(self, user_ids: Sequence[str]) -> int:
        """`erase_finished` in a transaction of its own."""
        async with self.db.connection() as conn, conn.transaction():
            return await erase_finished(conn, user_ids)

    async def due(self, destination_id: str, limit: int, busy: Iterable[int]) -> DuePick:
        """Up to `limit` deliveries to call now, skipping the `busy` ones (being called)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(_DUE, {"destination": destination_id, "busy": list(busy), "limit": limit})
            rows = await cur.fetchall()
        deliveries = [DueDelivery(*row[2:]) for row in rows if row[2] is not None]
        return DuePick(deliveries, rows[0][1], rows[0][0])

    async def finish(self, destination_id: str, delivery: DueDelivery, started_at: datetime, attempt: Attempt,
                     pause_after: int, pause_reason: str) -> DestinationStatus | None:
        """Record `attempt` on the delivery and its destination; returns the destination's status after it
        (None when the destination is gone)."""
        answer = attempt.answer
        delivered = attempt.status is DeliveryStatus.DELIVERED
        params = {"destination": destination_id, "seq": delivery.seq, "status": attempt.status.value,
                  "started": started_at, "delay": attempt.delay_s, "code": answer.status_code,
                  "answer": printable(answer.body) if answer.body else None,
                  "error": printable(attempt.error) if attempt.error else None, "delivered": delivered}
        async with self.db.connection() as conn:
            if delivered:
                cur = await conn.execute(_FINISH_DELIVERY + _DELIVERED, params)
            else:
                cur = await conn.execute(_FINISH_DELIVERY + _NOT_DELIVERED, {
                    **params, "failure": printable(answer.error or ""), "limit": pause_after,
                    "reason": printable(pause_reason)})
            row = await cur.fetchone()
        return DestinationStatus(row[0]) if row and row[0] else None


# A finished delivery of an erased user keeps its place in the destination's history (its status counts),
# without the user: user_id and the body's userId become the SHA-256 hex of the id (as in `user_deletions`),
# the traits leave the body, and the start of the receiver's answer (it may echo them) goes. Open ones are
# left to be delivered as they are: the destination still hears that the user left its audiences.
_ERASE = """
UPDATE destination_deliveries d
   SET user_id = e.hashed,
       body = jsonb_set(d.body::jsonb #- '{context,traits}', '{userId}', to_jsonb(e.hashed))::text,
       last_answer = NULL, updated_at = now()
  FROM (SELECT u, encode(sha256(convert_to(u, 'UTF8')), 'hex') FROM unnest(%s::text[]) AS u) AS e (user_id, hashed)
 WHERE d.user_id = e.user_id AND d.status IN ('delivered', 'failed')
"""


async def erase_finished(conn: psycopg.AsyncConnection[Any], user_ids: Sequence[str]) -> int:
    """Take `user_ids` out of their delivered and failed deliveries (see `_ERASE`), in the caller's
    transaction; returns how many rows."""
    if not user_ids:
        return 0
    cur = await conn.execute(_ERASE, (list(user_ids),))
    return cur.rowcount
