"""A steady rate for background work (the feeder's backfill), so it never takes what live events need."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
# At most this much work is let through at once: a rate is kept smooth, never a burst per second.
BURST_S = 0.05


class Pace:
    """Lets `rate` units of work through per second on average (0: no limit); `take(n)` waits its turn."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self._next = clock()

    def chunk(self, most: int) -> int:
        """How many units to take at once: `most`, or fewer so one take stays within a short burst."""
        return most if self.rate <= 0 else max(1, min(most, int(self.rate * BURST_S)))

    async def take(self, units: int) -> None:
        """Wait until `units` more fit the rate (the clock restarts after idle time: no saved-up burst)."""
        if self.rate <= 0 or units <= 0:
            return
        now = self.clock()
        start = max(self._next, now)
        self._next = start + units / self.rate
        if start > now:
            await self.sleep(start - now)


async def read_ahead(chunks: AsyncIterator[T], depth: int = 2) -> AsyncIterator[T]:
    """`chunks` in order, read up to `depth` ahead in a task of their own: two paced steps (reading the store,
    sending requests) then overlap instead of taking turns. An error reading them is raised here, in turn."""
    queue: asyncio.Queue[tuple[T | None, BaseException | None, bool]] = asyncio.Queue(depth)

    async def fill() -> None:
        try:
            async for chunk in chunks:
                await queue.put((chunk, None, False))
        except Exception as exc:  # handed to the reader, whose caller decides (an outage retries the pass)
            await queue.put((None, exc, True))
            return
        await queue.put((None, None, True))

    task = asyncio.create_task(fill())
    try:
        while True:
            chunk, error, done = await queue.get()
            if error is not None:
                raise error
            if done:
                return
            yield chunk  # type: ignore[misc]  # not done: a chunk
    finally:
        task.cancel()
