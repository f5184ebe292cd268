"""Feeds segment definitions to the job and backfills changed segments to users already seen.

Reads `segment-rules` from the start (it holds every definition; tombstones mark deletes),
republishes each definition on the job's rules topic, and for every new version asks the job to
re-evaluate that segment for each known user (deletes: for each current member).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, TopicPartition

from server.stores.kafka import AsyncProducer
from server.stores.profile_store import ProfileStore
from server.stores.topics import REEVALUATIONS, RULE_DEFINITIONS, SEGMENT_RULES

log = logging.getLogger("rule-engine.feeder")
SETTLE_S = 3.0


def definition_of(msg: Message) -> dict[str, Any]:
    raw_key = msg.key()
    key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key or "")
    value = msg.value()
    if value is None:
        return {"id": key, "deleted": True}
    definition: dict[str, Any] = json.loads(value)
    return definition


class RuleFeeder:
    def __init__(self, bootstrap: str, prefix: str, producer: AsyncProducer, store: ProfileStore, page: int) -> None:
        self.producer, self.store, self.page, self.prefix = producer, store, page, prefix
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}rule-engine-feeder",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(prefix + SEGMENT_RULES, 0, 0)])
        self.versions: dict[str, int] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self.backfilled_users = 0
        self.last_backfill_rate: float | None = None

    async def run(self) -> None:
        while True:
            msgs = await asyncio.to_thread(self.consumer.consume, 100, 0.1)
            for msg in msgs:
                if msg.error():
                    continue
                await self.handle(definition_of(msg))

    async def handle(self, definition: dict[str, Any]) -> None:
        segment_id = str(definition["id"])
        version = int(definition.get("version") or 0)
        deleted = bool(definition.get("deleted"))
        seen = self.versions.get(segment_id)
        await self.producer.send(self.prefix + RULE_DEFINITIONS, segment_id, orjson.dumps(definition))
        if not deleted and seen is not None and version <= seen:
            return  # a repeat (e.g. the Segment API's start-up snapshot): nothing new to backfill
        self.versions[segment_id] = version if not deleted else max(version, seen or 0)
        await self.backfill(definition, deleted)
        # An event processed just before the definition reached the job, whose profile was not yet
        # in the store during this pass, would be missed: a second pass once that has settled.
        task = asyncio.create_task(self._settle_pass(definition, deleted))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_pass(self, definition: dict[str, Any], deleted: bool) -> None:
        await asyncio.sleep(SETTLE_S)
        await self.backfill(definition, deleted)

    async def backfill(self, definition: dict[str, Any], deleted: bool) -> None:
        """One re-evaluation request per user who may be affected, in pages."""
        segment_id = str(definition["id"])
        started, sent, after = time.perf_counter(), 0, None
        while True:
            if deleted:
                members = await self.store.segment_members(segment_id, after, self.page)
                users = [m.user_id for m in members]
            else:
                users = [p["userId"] for p in await self.store.scan_profiles(after, self.page)]
            if not users:
                break
            request = {"kind": "reevaluate", "segment": definition}
            await asyncio.gather(*(
                self.producer.send(self.prefix + REEVALUATIONS, user, orjson.dumps({**request, "userId": user}))
                for user in users
            ))
            sent += len(users)
            after = users[-1]
            if len(users) < self.page:
                break
        self.backfilled_users += sent
        if sent:
            self.last_backfill_rate = sent / (time.perf_counter() - started)
            log.info("backfill of segment %s: %d users (%.0f/s)", segment_id, sent, self.last_backfill_rate)

    def close(self) -> None:
        self.consumer.close()
