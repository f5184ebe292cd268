"""The backfill's pace on a clock of the test's own (how long it waits, how much it lets through at once), and its
reading ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from flinkjob.pacing import Pace, read_ahead

pytestmark = pytest.mark.unit


class Clock:
    """Time that moves only when the pace sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_takes_wait_so_that_the_rate_holds_on_average() -> None:
    clock = Clock()
    pace = Pace(100, clock, clock.sleep)

    async def takes() -> None:
        for _ in range(5):
            await pace.take(10)  # 10 units at 100/s: 0.1 s each

    asyncio.run(takes())
    assert clock.slept == pytest.approx([0.1, 0.1, 0.1, 0.1])  # the first goes at once
    assert clock.now == pytest.approx(100.4)


def test_idle_time_is_not_saved_up_for_a_burst() -> None:
    clock = Clock()
    pace = Pace(100, clock, clock.sleep)

    async def takes() -> None:
        await pace.take(10)
        clock.now += 60  # a minute without backfill
        await pace.take(10)
        await pace.take(10)

    asyncio.run(takes())
    assert clock.slept == pytest.approx([0.1])  # after the pause, one goes at once and the next waits its turn


def test_no_rate_means_no_wait_and_whole_pages() -> None:
    clock = Clock()
    pace = Pace(0, clock, clock.sleep)
    asyncio.run(pace.take(1_000_000))
    assert clock.slept == [] and pace.chunk(1000) == 1000


def test_one_take_is_a_short_burst_at_most() -> None:
    assert Pace(1000).chunk(1000) == 50  # 50 ms of work
    assert Pace(20_000).chunk(1000) == 1000
    assert Pace(5).chunk(1000) == 1  # never nothing


def test_read_ahead_keeps_the_order_and_raises_what_reading_raised() -> None:
    async def chunks(fail_after: int | None) -> AsyncIterator[list[int]]:
        for i in range(5):
            if i == fail_after:
                raise ConnectionError("store gone")
            yield [i]

    async def read(fail_after: int | None) -> list[list[int]]:
        return [chunk async for chunk in read_ahead(chunks(fail_after))]

    assert asyncio.run(read(None)) == [[0], [1], [2], [3], [4]]
    with pytest.raises(ConnectionError, match="store gone"):
        asyncio.run(read(3))
