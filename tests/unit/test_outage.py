"""A loop waiting out an outage retries the same work, says what it waits for, and resumes."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from psycopg_pool import PoolTimeout

from flinkjob.outage import Outage
from server.runtime.errors import DependencyUnavailable

pytestmark = pytest.mark.unit


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


@pytest.mark.parametrize("outage", [
    DependencyUnavailable("kafka", "no ack within 5 s"),
    psycopg.OperationalError("terminating connection due to administrator command"),
    PoolTimeout("couldn't get a connection after 2.00 sec"),
    KafkaException(KafkaError(KafkaError._TRANSPORT)),
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
], ids=lambda e: type(e).__name__)
def test_each_kind_of_store_or_broker_outage_is_waited_out(outage: Exception) -> None:
    attempts = 0

    async def attempt() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise outage
        return attempts

    assert asyncio.run(Outage(logging.getLogger("test"), retry_every_s=0.001).until_done("writing", attempt)) == 2


def test_a_local_os_error_is_a_bug_not_an_outage() -> None:
    async def attempt() -> None:
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent")

    with pytest.raises(FileNotFoundError):
        asyncio.run(Outage(logging.getLogger("test"), retry_every_s=0.001).until_done("writing", attempt))
