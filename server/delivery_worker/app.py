"""The delivery worker's process: the consumer and the destinations' senders, plus `/actuator/health`
and `/metrics` over HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.delivery_worker.worker import DeliveryWorker
from server.runtime.app import build_app
from server.runtime.secrets import SecretBox
from server.runtime.settings import ServiceSettings
from server.stores.destination_deliveries import DestinationDeliveries
from server.stores.kafka import BrokerHealth
from server.stores.postgres import Database
from server.stores.webhooks import DestinationGuard, WebhookClient

log = logging.getLogger("delivery-worker")
# Each destination's own concurrency bounds its calls; the shared pool must never make one wait for another.
MAX_CONNECTIONS = 10_000


def create_app(settings: ServiceSettings) -> FastAPI:
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)
    store = DestinationDeliveries(db, SecretBox(settings.secrets_key.get_secret_value()))
    guard = DestinationGuard(settings.blocks_private_destinations, settings.destination_allow)
    client = WebhookClient(guard, settings.destination_timeout_s, max_connections=MAX_CONNECTIONS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open(settings.startup_wait_s)
        task = asyncio.create_task(app.state.worker.run(), name="delivery-worker")
        yield
        app.state.worker.stop()  # calls in flight finish and are recorded; the rest stays queued
        try:
            await asyncio.wait_for(task, timeout=settings.destination_timeout_s + 5)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("the worker did not stop in time; its calls in flight will be made again")
        except Exception:  # already logged by the worker; stopping goes on
            log.debug("the worker had stopped with an error")
        await client.aclose()
        await db.close()

    app = build_app(
        service="delivery-worker",
        title="Audience Manager — delivery worker",
        description="Calls the destinations (signed webhooks) with every change on segment-membership.",
        settings=settings,
        lifespan=lifespan,
    )
    app.state.worker = DeliveryWorker(settings, store, client, app.state.metrics_registry)
    app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.state.health.add("worker", app.state.worker.health)
    return app
