"""Per-client token buckets and recently-seen event ids, behind small interfaces.

The local target keeps both in the Ingestion API's memory (one process); on Kubernetes the same
interfaces are served from Aerospike's `cache` namespace with a TTL, shared by every replica.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


class RateLimiter(Protocol):
    def take(self, client: str, tokens: int = 1) -> Decision:
        """Take `tokens` from `client`'s bucket, or say how long until they are there."""


class RecentIds(Protocol):
    def first_seen(self, event_id: str) -> bool:
        """True the first time `event_id` is offered within the window, False for repeats."""

    def forget(self, event_id: str) -> None:
        """Undo `first_seen` (the event was not stored after all, so a retry must go through)."""


class LocalTokenBuckets:
    """Token buckets in memory; idle clients are dropped so memory stays bounded."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate, self.burst, self.max_clients = rate_per_s, float(burst), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str, tokens: int = 1) -> Decision:
        now = time.monotonic()
        level, at = self._buckets.pop(client, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if tokens > self.burst:
            self._buckets[client] = (level, now)
            return Decision(False, tokens / self.rate)
        if level >= tokens:
            self._buckets[client] = (level - tokens, now)
            decision = Decision(True)
        else:
            self._buckets[client] = (level, now)
            decision = Decision(False, (tokens - level) / self.rate)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return decision


class LocalRecentIds:
    """Event ids seen within `window_s`, bounded in count (oldest forgotten first)."""

    def __init__(self, window_s: float, max_ids: int = 1_000_000) -> None:
        self.window_s, self.max_ids = window_s, max_ids
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_seen(self, event_id: str) -> bool:
        now = time.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.window_s and len(self._seen) < self.max_ids:
                break
            del self._seen[oldest]
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True

    def forget(self, event_id: str) -> None:
        self._seen.pop(event_id, None)
