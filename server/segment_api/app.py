"""Segment API (:30081): segments with rule trees in PostgreSQL, published to `segment-rules`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.runtime.app import build_app
from server.runtime.settings import ServiceSettings
from server.stores.kafka import BrokerHealth
from server.stores.postgres import Database


def create_app(settings: ServiceSettings) -> FastAPI:
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open(settings.startup_wait_s)
        yield
        await db.close()

    app = build_app(
        service="segment-api",
        title="Audience Manager — Segment API",
        description="Create segments with rule trees; memberships per user.",
        settings=settings,
        lifespan=lifespan,
    )
    app.state.db = db
    app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    return app
