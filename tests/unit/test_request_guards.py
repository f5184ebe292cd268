"""One contract for the rate limiter and the dedupe window: in memory here, in Aerospike with AEROSPIKE_HOSTS."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from server.stores.rate_limit import LocalRecentIds, LocalTokenBuckets, RateLimiter, RecentIds

pytestmark = pytest.mark.unit

ADAPTERS = [
    "memory",
    pytest.param("aerospike", marks=[pytest.mark.live, pytest.mark.skipif(
        not os.environ.get("AEROSPIKE_HOSTS"), reason="set AEROSPIKE_HOSTS=host:3000 to run against Aerospike")]),
]


@pytest.fixture(params=ADAPTERS)
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    """None for the in-memory adapters, else an Aerospike client (closed after the test)."""
    if request.param == "memory":
        yield None
        return
    from server.stores.aerospike_profiles import connect

    client = connect(os.environ["AEROSPIKE_HOSTS"])
    yield client
    client.close()


def buckets(backend: Any, rate_per_s: float, burst: int) -> RateLimiter:
    if backend is None:
        return LocalTokenBuckets(rate_per_s, burst)
    from server.stores.aerospike_cache import AerospikeTokenBuckets

    return AerospikeTokenBuckets(backend, rate_per_s, burst)


def recent_ids(backend: Any, window_s: float) -> RecentIds:
    if backend is None:
        return LocalRecentIds(window_s)
    from server.stores.aerospike_cache import AerospikeRecentIds

    return AerospikeRecentIds(backend, window_s)


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def test_a_bucket_allows_its_burst_then_says_when_to_retry(backend: Any) -> None:
    limiter, client = buckets(backend, rate_per_s=0.5, burst=3), unique("client")
    assert [limiter.take(client).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take(client)
    assert not refused.allowed and 0 < refused.retry_after_s <= 2.0  # one token every 2 s


def test_clients_have_separate_buckets(backend: Any) -> None:
    limiter, greedy, other = buckets(backend, rate_per_s=0.1, burst=1), unique("client"), unique("client")
    assert limiter.take(greedy).allowed and not limiter.take(greedy).allowed
    assert limiter.take(other).allowed


def test_a_bucket_refills_at_its_rate(backend: Any) -> None:
    limiter, client = buckets(backend, rate_per_s=20, burst=2), unique("client")
    assert limiter.take(client, 2).allowed and not limiter.take(client).allowed
    time.sleep(0.2)  # 4 tokens' worth of time, capped at the burst of 2
    assert limiter.take(client, 2).allowed and not limiter.take(client).allowed


def test_a_batch_larger_than_the_burst_is_refused_without_spending(backend: Any) -> None:
    limiter, client = buckets(backend, rate_per_s=1, burst=5), unique("client")
    too_big = limiter.take(client, 6)
    assert not too_big.allowed and too_big.retry_after_s == pytest.approx(6.0)
    assert limiter.take(client, 5).allowed


def test_concurrent_takes_never_spend_a_token_twice(backend: Any) -> None:
    limiter, client = buckets(backend, rate_per_s=0.001, burst=20), unique("client")
    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(lambda _: limiter.take(client).allowed, range(60)))
    assert decisions.count(True) <= 20
    if backend is None:
        assert decisions.count(True) == 20  # one process: no contention losses


def test_an_event_id_is_first_seen_once_until_forgotten(backend: Any) -> None:
    ids, event = recent_ids(backend, window_s=60), unique("event")
    assert ids.first_seen(event)
    assert not ids.first_seen(event)
    ids.forget(event)  # the event was not stored after all: the client's retry must go through
    assert ids.first_seen(event)
    ids.forget(unique("never-seen"))  # forgetting an unknown id is harmless


def test_event_ids_leave_the_window(backend: Any) -> None:
    window = 0.2 if backend is None else 1.0  # Aerospike TTLs are whole seconds
    ids, event = recent_ids(backend, window_s=window), unique("event")
    assert ids.first_seen(event)
    deadline = time.monotonic() + window + 3
    while not ids.first_seen(event):
        assert time.monotonic() < deadline, "the id never left the dedupe window"
        time.sleep(0.1)


def test_the_local_window_is_bounded_in_size() -> None:
    ids = LocalRecentIds(window_s=3600, max_ids=3)
    for event in ("a", "b", "c", "d"):
        assert ids.first_seen(event)
    assert ids.first_seen("a")  # the oldest was dropped to stay within max_ids
    assert not ids.first_seen("d")
