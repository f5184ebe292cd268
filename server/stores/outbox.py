"""The outbox: segment changes queued with the change itself, and the relay that publishes them to
`segment-rules` in the order they were made.

A row is marked published only after the broker acknowledged it, and the relay stops at the first
failure, so a broker outage delays publishing but never loses or reorders a change. (A record the
broker did take just before a failure may be published again: consumers keep the newest version.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from server.domain.segment import SegmentDefinition
from server.runtime.health import ComponentHealth
from server.stores.kafka import AsyncProducer
from server.stores.outages import DEPENDENCY_OUTAGES
from server.stores.postgres import Database

log = logging.getLogger("outbox")
RELAY_LOCK = 7_301_001  # one relay at a time across replicas keeps the order


class OutboxRelay:
    def __init__(self, db: Database, producer: AsyncProducer, topic: str, batch: int = 200,
                 poll_s: float = 0.5) -> None:
        self.db, self.producer, self.topic = db, producer, topic
        self.batch, self.poll_s = batch, poll_s
        self._wake = asyncio.Event()
        self._stopped = False
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    async def drain_once(self) -> int:
        """Publish up to one batch of pending rows; returns how many were published."""
        async with self.db.connection() as conn, conn.transaction():
            locked = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RELAY_LOCK,))).fetchone()
            if not locked or not locked[0]:
                return 0
            cur = await conn.execute(
                "SELECT seq, segment_id::text, payload FROM segment_outbox WHERE published_at IS NULL"
                " ORDER BY seq LIMIT %s",
                (self.batch,),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            # produced in list order, so the broker sees this order; only the acked prefix counts as published
            failures = await self.producer.send_many(self.topic, [(key, _encode(payload)) for _, key, payload in rows])
            done = [seq for (seq, _, _), _ in itertools.takewhile(lambda pair: pair[1] is None,
                                                                  zip(rows, failures, strict=True))]
            if done:
                await conn.execute("UPDATE segment_outbox SET published_at = now() WHERE seq = ANY(%s)", (done,))
        failed = next((f for f in failures if f is not None), None)
        if failed is not None:
            raise failed
        return len(done)

    async def run(self) -> None:
        """Drain until stopped; back off while the broker or the database is unavailable."""
        failures = 0
        while not self._stopped:
            try:
                published = await self.drain_once()
                failures, self.last_error = 0, None
            except DEPENDENCY_OUTAGES as exc:
                failures += 1
                self.last_error = str(exc)
                if failures == 1:
                    log.warning("outbox relay paused: %s (retrying)", exc)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(failures, 5)))
                continue
            if published >= self.batch:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def health(self) -> ComponentHealth:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                " FROM segment_outbox WHERE published_at IS NULL"
            )
            row = await cur.fetchone()
        pending, oldest = (int(row[0]), float(row[1])) if row else (0, 0.0)
        details: dict[str, Any] = {"pending": pending, "oldestAgeS": round(oldest, 1)}
        if self.last_error:
            details["lastError"] = self.last_error
        # a broker outage delays publishing but loses nothing: the service stays UP
        return ComponentHealth("UP", details)


async def enqueue(cur: psycopg.AsyncCursor[Any], definition: SegmentDefinition) -> None:
    """Queue `definition` for publishing, in the caller's transaction (a delete as a tombstone)."""
    await cur.execute(
        "INSERT INTO segment_outbox (segment_id, payload) VALUES (%s, %s)",
        (definition.id, None if definition.deleted else Jsonb(definition.to_json())),
    )
    await cur.execute("NOTIFY segment_outbox")


def _encode(payload: Any) -> bytes | None:
    """The row's payload as published: `SegmentDefinition.to_json()` as stored, or a tombstone (None)."""
    return None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
