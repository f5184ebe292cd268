"""Communication API (:30083): email campaigns to a segment's users, one job per recipient, and the
destinations (webhooks) that receive every user entering or leaving a segment."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.communication_api.destinations import destinations
from server.communication_api.dispatch import FanOut, OnEnterTrigger, Recipients
from server.communication_api.repository import CampaignRepository
from server.communication_api.routes import campaigns
from server.communication_api.suppressions import suppressions as suppression_routes
from server.communication_api.unsubscribe import unsubscribe
from server.runtime.app import build_app
from server.runtime.errors import ConfigurationError
from server.runtime.secrets import SecretBox
from server.runtime.settings import ServiceSettings
from server.runtime.tokens import UnsubscribeLinks, UnsubscribeTokens
from server.stores.deliveries import DeliveryLedger
from server.stores.destinations import DestinationRepository
from server.stores.kafka import AsyncProducer, BrokerHealth
from server.stores.postgres import Database
from server.stores.selection import profile_store
from server.stores.suppressions import SuppressionList
from server.stores.topics import EMAIL_JOBS, ON_ENTER_GROUP, SEGMENT_MEMBERSHIP
from server.stores.webhooks import DestinationGuard, WebhookClient


def create_app(settings: ServiceSettings) -> FastAPI:
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)
    producer = AsyncProducer.for_service(settings)
    repository, ledger = CampaignRepository(db), DeliveryLedger(db)
    try:
        box = SecretBox(settings.secrets_key.get_secret_value())  # unset: destinations answer 503, the rest works
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    guard = DestinationGuard(settings.blocks_private_destinations, settings.destination_allow)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open(settings.startup_wait_s)
        # the test call's client; the delivery worker has its own
        app.state.webhooks = WebhookClient(guard, settings.destination_timeout_s)
        tasks = [asyncio.create_task(app.state.fanout.run(), name="campaign-fan-out"),
                 asyncio.create_task(app.state.trigger.run(), name="on-enter-trigger")]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
        producer.close()
        await app.state.webhooks.aclose()
        await db.close()

    app = build_app(
        service="communication-api",
        title="Audience Manager — Communication API",
        description="Email campaigns to the users of a segment: now, at a time, or when a user enters it, with "
                    "one-click unsubscribe, a suppression list, frequency caps and quiet hours; destinations "
                    "(webhooks) that receive every user entering or leaving a segment.",
        settings=settings,
        lifespan=lifespan,
        requires_api_keys=True,
    )
    store = profile_store(settings, db)  # after build_app: a refused start connects to nothing
    suppressions = SuppressionList(db)
    links = UnsubscribeLinks(UnsubscribeTokens(settings.secrets_key.get_secret_value()),
                             settings.unsubscribe_base_url, settings.email_unsubscribe_mailto)
    recipients = Recipients(ledger, suppressions, links, producer, settings.topic(EMAIL_JOBS),
                            app.state.metrics_registry)
    app.state.campaigns, app.state.ledger, app.state.suppressions = repository, ledger, suppressions
    app.state.unsubscribe_links = links
    app.state.destinations = DestinationRepository(db, box)
    app.state.fanout = FanOut(repository, store, recipients)
    app.state.trigger = OnEnterTrigger(settings.kafka_bootstrap, settings.topic(SEGMENT_MEMBERSHIP),
                                       settings.topic_prefix + ON_ENTER_GROUP, repository, store,
                                       recipients, app.state.metrics_registry,
                                       session_timeout_ms=settings.kafka_session_timeout_ms)
    app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.state.health.add("fanOut", app.state.fanout.health)
    app.state.health.add("onEnterTrigger", app.state.trigger.health)
    app.include_router(campaigns)
    app.include_router(destinations)
    app.include_router(unsubscribe)
    app.include_router(suppression_routes)
    return app
