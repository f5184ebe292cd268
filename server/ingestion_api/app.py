"""Ingestion API (:30082): user events in, acknowledged only once the broker has them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.runtime.app import build_app
from server.runtime.settings import ServiceSettings
from server.stores.kafka import AsyncProducer, BrokerHealth


def create_app(settings: ServiceSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.producer = AsyncProducer(settings.kafka_bootstrap, delivery_timeout_s=5.0)
        yield
        app.state.producer.close()

    app = build_app(
        service="ingestion-api",
        title="Audience Manager — Ingestion API",
        description="Accept user events; 202 only after the broker acknowledged them.",
        settings=settings,
        lifespan=lifespan,
    )
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    return app
