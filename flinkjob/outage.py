"""Waiting out a store or broker outage inside a long-running loop, instead of letting the loop die.

The writer and the feeder hold work they cannot drop (a batch of job output, a segment definition
already read). When PostgreSQL, Aerospike or the broker is unavailable they retry that same work
every second, say so once in the log and in the rule engine's health, and go on when it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.stores.outages import DEPENDENCY_OUTAGES

T = TypeVar("T")
RETRY_EVERY_S = 1.0


class Outage:
    """What a loop is waiting for right now (None when all is well)."""

    def __init__(self, log: logging.Logger, retry_every_s: float = RETRY_EVERY_S) -> None:
        self.log, self.retry_every_s = log, retry_every_s
        self.waiting_for: str | None = None

    async def until_done(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until it does not fail with a transient error; other errors propagate."""
        while True:
            try:
                result = await attempt()
            except DEPENDENCY_OUTAGES as exc:
                if self.waiting_for is None:
                    self.log.warning("%s waits for its stores: %s; retrying every %g s", what, exc, self.retry_every_s)
                self.waiting_for = f"{what}: {exc}"
                await asyncio.sleep(self.retry_every_s)
                continue
            if self.waiting_for is not None:
                self.log.warning("%s resumed", what)
                self.waiting_for = None
            return result
