"""Ingestion API (:30082): user events in, acknowledged only once the broker has them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.ingestion_api.metrics import IngestionMetrics
from server.ingestion_api.routes import Ingestor, router
from server.ingestion_api.schemas import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from server.runtime.app import build_app
from server.runtime.settings import ServiceSettings
from server.stores.kafka import AsyncProducer, BrokerHealth
from server.stores.selection import request_guards


def create_app(settings: ServiceSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one long-lived producer for every request: never a connection per event
        producer = AsyncProducer.for_service(settings)
        app.state.ingestor = Ingestor(
            settings, producer,
            *request_guards(settings),
            IngestionMetrics(app.state.metrics_registry),
        )
        yield
        producer.close()

    app = build_app(
        service="ingestion-api",
        title="Audience Manager — Ingestion API",
        description="Accept user events; 202 only after the broker acknowledged them.",
        settings=settings,
        lifespan=lifespan,
        body_limits={"/api/events": MAX_EVENT_BYTES, "/api/events/batch": MAX_BATCH_BYTES},
        requires_api_keys=True,
    )
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.include_router(router)
    return app
