"""Segment API (:30081): segments with rule trees in PostgreSQL, published to `segment-rules`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.runtime.app import build_app
from server.runtime.settings import ServiceSettings
from server.segment_api.erasure import erasure
from server.segment_api.export import export
from server.segment_api.insights import insights
from server.segment_api.membership import MembershipPublisher
from server.segment_api.repository import SegmentRepository
from server.segment_api.routes import segments, users
from server.stores.kafka import AsyncProducer, BrokerHealth
from server.stores.outbox import OutboxRelay
from server.stores.postgres import Database
from server.stores.selection import profile_store
from server.stores.topics import REEVALUATIONS, SEGMENT_MEMBERSHIP, SEGMENT_RULES

# 10,000 static members of up to 128 characters fit; a rule tree needs far less
MAX_BODY_BYTES = 2 * 1024 * 1024


def create_app(settings: ServiceSettings) -> FastAPI:
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)
    producer = AsyncProducer.for_service(settings, delivery_timeout_s=5.0)
    relay = OutboxRelay(db, producer, settings.topic(SEGMENT_RULES))
    repository = SegmentRepository(db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open(settings.startup_wait_s)
        await repository.snapshot()
        task = asyncio.create_task(relay.run(), name="outbox-relay")
        yield
        relay.stop()
        # a relay waiting on a broker that is down is cancelled: its rows stay queued for the next start
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=5)
        producer.close()
        await db.close()

    app = build_app(
        service="segment-api",
        title="Audience Manager — Segment API",
        description="Segments with rule trees; who is in them; users' memberships and profiles.",
        settings=settings,
        lifespan=lifespan,
        max_body_bytes=MAX_BODY_BYTES,
        requires_api_keys=True,
    )
    app.state.db = db
    app.state.segments = repository
    app.state.profiles = profile_store(settings, db)
    app.state.relay = relay
    # STATIC changes go to the rule job's feedback topic too, for the rules that refer to STATIC segments
    app.state.membership = MembershipPublisher(producer, settings.topic(SEGMENT_MEMBERSHIP),
                                               settings.topic(REEVALUATIONS))
    app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.state.health.add("outbox", relay.health)
    app.include_router(segments)
    app.include_router(export)
    app.include_router(insights)
    app.include_router(users)
    app.include_router(erasure)
    return app
