"""A loop waiting out an outage retries the same work, says what it waits for, and resumes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flinkjob.outage import Outage
from server.runtime.errors import DependencyUnavailable


def test_transient_failures_are_retried_and_reported_until_the_work_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(logging.getLogger("test"), retry_every_s=0.001)
    attempts: list[str | None] = []

    async def attempt() -> str:
        attempts.append(outage.waiting_for)
        if len(attempts) < 3:
            raise DependencyUnavailable("postgres", "connection refused")
        return "written"

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(outage.until_done("writing", attempt)) == "written"
    assert attempts == [None, "writing: postgres unavailable: connection refused",
                        "writing: postgres unavailable: connection refused"]
    assert outage.waiting_for is None
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["writing waits for its stores", "writing resumed"]


def test_other_errors_are_not_swallowed() -> None:
    async def attempt() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(Outage(logging.getLogger("test")).until_done("writing", attempt))
