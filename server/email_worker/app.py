"""The email worker's process: the consumer loop, plus `/actuator/health` and `/metrics` over HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.email_worker.signing import dkim_signer
from server.email_worker.smtp import SmtpSender
from server.email_worker.worker import EmailWorker
from server.runtime.app import build_app
from server.runtime.settings import ServiceSettings
from server.stores.deliveries import DeliveryLedger
from server.stores.kafka import AsyncProducer, BrokerHealth
from server.stores.postgres import Database
from server.stores.suppressions import SuppressionList

log = logging.getLogger("email-worker")


def create_app(settings: ServiceSettings) -> FastAPI:
    # first: a DKIM setting that cannot sign refuses the start before any client is made
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_timeout_s, settings.email_from,
                        pool_size=settings.smtp_pool_size, pool_idle_s=settings.smtp_pool_idle_s,
                        signer=dkim_signer(settings))
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)
    producer = AsyncProducer.for_service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open(settings.startup_wait_s)
        task = asyncio.create_task(app.state.worker.run(), name="email-worker")
        yield
        app.state.worker.stop()  # mails being handed over finish; nothing claimed is abandoned
        try:
            await asyncio.wait_for(task, timeout=settings.smtp_timeout_s + 5)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("the worker did not stop in time; mails it had claimed will be reported in doubt")
        sender.close()
        producer.close()
        await db.close()

    app = build_app(
        service="email-worker",
        title="Audience Manager — email worker",
        description="Delivers campaign mails from email-jobs over SMTP.",
        settings=settings,
        lifespan=lifespan,
    )
    app.state.worker = EmailWorker(settings, DeliveryLedger(db), SuppressionList(db), sender, producer,
                                   app.state.metrics_registry)
    app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.state.health.add("worker", app.state.worker.health)
    return app
