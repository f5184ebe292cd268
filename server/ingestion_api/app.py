"""Ingestion API (:30082): user events in, acknowledged only once the broker has them.

It also links anonymous ids to users (`/api/identify`, and any event carrying both ids), which needs
the profile store: PostgreSQL on the local target, Aerospike on Kubernetes (`server.stores.selection`).
Segment's HTTP tracking API (`/v1/*`) is served beside our own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware

from server.ingestion_api.fast_path import EventFastPath
from server.ingestion_api.ingestor import Ingestor
from server.ingestion_api.metrics import IngestionMetrics
from server.ingestion_api.routes import identity, router
from server.ingestion_api.schemas import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from server.ingestion_api.segment import SEGMENT_BODY_LIMITS, WriteKeyAuth, segment
from server.runtime.app import build_app
from server.runtime.settings import ServiceSettings
from server.stores.kafka import AsyncProducer, BrokerHealth
from server.stores.postgres import Database
from server.stores.selection import profile_store, request_guards


def create_app(settings: ServiceSettings) -> FastAPI:
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)
    store = profile_store(settings, db)
    uses_postgres = not settings.aerospike_hosts  # on Kubernetes the links live in Aerospike: no pool to open

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if uses_postgres:
            await db.open(settings.startup_wait_s)
        # one long-lived producer for every request: never a connection per event
        producer = AsyncProducer.for_service(settings)
        producer.connect()  # started: the first event should not wait for the broker handshake
        app.state.ingestor = Ingestor(
            settings, producer, store,
            *request_guards(settings),
            IngestionMetrics(app.state.metrics_registry),
        )
        yield
        producer.close()
        if uses_postgres:
            await db.close()

    app = build_app(
        service="ingestion-api",
        title="Audience Manager — Ingestion API",
        description="Accept user events and identities; 202 only after the broker acknowledged them. "
                    "Segment's HTTP tracking API too, under /v1 (the write key as the Basic username).",
        settings=settings,
        lifespan=lifespan,
        body_limits={"/api/events": MAX_EVENT_BYTES, "/api/events/batch": MAX_BATCH_BYTES,
                     "/api/identify": MAX_EVENT_BYTES, **SEGMENT_BODY_LIMITS},
        requires_api_keys=True,
    )
    app.add_middleware(WriteKeyAuth)
    # appended, not added: innermost of the middlewares, so the body limit and the HTTP metrics still apply
    app.user_middleware.append(Middleware(EventFastPath, routes=router.routes))
    if uses_postgres:
        app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.include_router(router)
    app.include_router(identity)
    app.include_router(segment)
    return app
