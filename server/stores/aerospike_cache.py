"""Rate-limit buckets and recent event ids in Aerospike's `cache` namespace (the Kubernetes target).

Shared by every Ingestion API replica, unlike the in-memory versions in `rate_limit`. Records
expire by TTL, so idle clients and old event ids cost nothing. A bucket is updated with an
optimistic compare-and-set on the record's generation, so concurrent replicas never both spend
the same token. The client is synchronous: each call is one round trip (well under a millisecond
inside the cluster) made on the caller's thread.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import aerospike
from aerospike import exception as aerospike_errors

from server.stores.rate_limit import Decision

CACHE_NS = "cache"
CAS_RETRIES = 5


class AerospikeTokenBuckets:
    """`RateLimiter` on Aerospike: set `buckets`, key client, bins `tokens` and `at` (ms)."""

    def __init__(self, client: Any, rate_per_s: float, burst: int) -> None:
        self.client, self.rate, self.burst = client, rate_per_s, float(burst)
        self.ttl_s = max(60, math.ceil(self.burst / self.rate) * 2)  # a full bucket is the same as no record

    def take(self, client: str, tokens: int = 1) -> Decision:
        key = (CACHE_NS, "buckets", client)
        if tokens > self.burst:
            return Decision(False, tokens / self.rate)
        for _ in range(CAS_RETRIES):
            now_ms = int(time.time() * 1000)
            try:
                _, meta, bins = self.client.get(key)
                level = min(self.burst, float(bins["tokens"]) + (now_ms - int(bins["at"])) / 1000 * self.rate)
                policy = {"gen": aerospike.POLICY_GEN_EQ}
                meta = {"gen": meta["gen"], "ttl": self.ttl_s}
            except aerospike_errors.RecordNotFound:
                level, policy, meta = self.burst, {"exists": aerospike.POLICY_EXISTS_CREATE}, {"ttl": self.ttl_s}
            allowed = level >= tokens
            remaining = level - tokens if allowed else level
            try:
                self.client.put(key, {"tokens": remaining, "at": now_ms}, meta=meta, policy=policy)
            except (aerospike_errors.RecordGenerationError, aerospike_errors.RecordExistsError):
                continue  # another replica changed the bucket first: read it again
            return Decision(True) if allowed else Decision(False, (tokens - level) / self.rate)
        return Decision(False, 1 / self.rate)  # heavy contention on one client's bucket: ask it to slow down


class AerospikeRecentIds:
    """`RecentIds` on Aerospike: set `event_ids`, one record per id, created only if absent, TTL = window."""

    def __init__(self, client: Any, window_s: float) -> None:
        self.client, self.ttl_s = client, max(1, math.ceil(window_s))

    def first_seen(self, event_id: str) -> bool:
        try:
            self.client.put((CACHE_NS, "event_ids", event_id), {"seen": 1}, meta={"ttl": self.ttl_s},
                            policy={"exists": aerospike.POLICY_EXISTS_CREATE})
        except aerospike_errors.RecordExistsError:
            return False
        return True

    def forget(self, event_id: str) -> None:
        with contextlib.suppress(aerospike_errors.RecordNotFound):
            self.client.remove((CACHE_NS, "event_ids", event_id))
