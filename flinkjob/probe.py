"""Readiness that means it: a probe token sent through both inputs until it comes out the other end.

A job can be RUNNING while its sources are still starting; events sent then wait. The rule engine
reports UP only once a probe published on the rules input and on the keyed input has come back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from server.domain.pipeline import PROBE_ID, ProbeRecord
from server.stores.kafka import AsyncProducer
from server.stores.records import encode
from server.stores.topics import REEVALUATIONS, RULE_DEFINITIONS


class PipelineProbe:
    def __init__(self, producer: AsyncProducer, prefix: str) -> None:
        self.producer, self.prefix = producer, prefix
        self.token = uuid.uuid4().hex

    async def run(self, seen: Callable[[], str | None], interval_s: float = 0.25) -> None:
        """Publish the token on both inputs until `seen()` returns it."""
        record = encode(ProbeRecord(self.token))
        await self.producer.send(self.prefix + RULE_DEFINITIONS, PROBE_ID, record)
        while seen() != self.token:
            await self.producer.send(self.prefix + REEVALUATIONS, PROBE_ID, record)
            await asyncio.sleep(interval_s)
