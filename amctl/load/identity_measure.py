"""`amctl bench`'s identify measurement: identify accepted → the known user's profile shows the merge.

Each visitor sends one anonymous purchase, then identifies as a fresh known user. Its latency runs from
the Ingestion API's 202 for the identify to the Segment API answering the known user's profile with the
visitor's purchase merged in: read with `?after=<the purchase's eventId>`, which the service answers as
soon as the merged profile is stored (it polls the store every 25 ms, so that is the figures' resolution).
A visitor counts as verified when that profile has the purchase's amount, one purchase and the alias.
"""

from __future__ import annotations

import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from amctl.settings import AmctlSettings

WAIT_S = 10.0  # the most the Segment API waits for `after` in one call


@dataclass(frozen=True)
class Visitor:
    anonymous_id: str
    user_id: str
    amount: float


@dataclass(frozen=True)
class Outcome:
    """One visitor's result: seconds from identify accepted to the merged profile, None if never seen."""

    latency_s: float | None
    verified: bool


def make_visitors(run: str, count: int) -> list[Visitor]:
    """`count` visitors of this run, each buying for a different amount (so a wrong merge shows)."""
    return [Visitor(f"idb-{run}-anon-{i}", f"idb-{run}-user-{i}", float(100 + i)) for i in range(count)]


def is_merged(profile: dict[str, Any], visitor: Visitor) -> bool:
    """The known user's profile holds the visitor's purchase and its anonymous id, and is no longer anonymous."""
    return (profile.get("userId") == visitor.user_id and profile.get("totalSpent") == visitor.amount
            and profile.get("purchaseCount") == 1 and visitor.anonymous_id in (profile.get("aliases") or [])
            and profile.get("anonymous") is False)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def summarize(outcomes: list[Outcome], rate: float) -> dict[str, Any]:
    """The stage's figures: how many visitors, how many merges were seen and verified, p50/p99/max in ms."""
    latencies = sorted(o.latency_s * 1000 for o in outcomes if o.latency_s is not None)
    figures: dict[str, Any] = {"visitors": len(outcomes), "rate": rate, "merged": len(latencies),
                               "verified": sum(o.verified for o in outcomes)}
    if latencies:
        figures |= {"p50_ms": round(percentile(latencies, 0.5), 1), "p99_ms": round(percentile(latencies, 0.99), 1),
                    "max_ms": round(latencies[-1], 1)}
    return figures


class IdentifyProbe:
    """Sends a visitor's purchase and identify, then waits for the known user's merged profile."""

    def __init__(self, ingestion: httpx.Client, segments: httpx.Client, timeout_s: float) -> None:
        self.ingestion, self.segments, self.timeout_s = ingestion, segments, timeout_s

    def __call__(self, visitor: Visitor) -> Outcome:
        purchase = self.ingestion.post("/api/events", json={
            "anonymousId": visitor.anonymous_id, "eventType": "purchase", "properties": {"amount": visitor.amount}})
        event_id = purchase.raise_for_status().json()["eventId"]
        self.ingestion.post("/api/identify", json={"userId": visitor.user_id, "anonymousId": visitor.anonymous_id,
                                                   "traits": {}}).raise_for_status()
        accepted = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            wait = min(WAIT_S, max(0.0, deadline - time.monotonic()))
            answer = self.segments.get(f"/api/users/{visitor.user_id}/profile",
                                       params={"after": event_id, "wait": round(wait, 2)})
            if answer.status_code == 200:
                seen = time.perf_counter()
                return Outcome(seen - accepted, is_merged(answer.json(), visitor))
            if answer.status_code != 202:  # 202: not merged within `wait` yet; 404 cannot happen with `after`
                answer.raise_for_status()
        return Outcome(None, False)


def measure_identify_latency(visitors: int = 100, rate: float = 20.0, timeout_s: float = 30.0,
                             workers: int = 16) -> dict[str, Any]:
    """`visitors` visitors started `rate` a second, each: anonymous purchase, identify, merged profile read."""
    settings = AmctlSettings()
    run = uuid.uuid4().hex[:8]
    timeout = httpx.Timeout(10.0 + WAIT_S)
    with (httpx.Client(base_url=settings.url(settings.ports.ingestion_api), timeout=timeout,
                       headers=settings.auth_headers()) as ingestion,
          httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=timeout,
                       headers=settings.auth_headers()) as segments,
          ThreadPoolExecutor(max_workers=workers) as pool):
        probe = IdentifyProbe(ingestion, segments, timeout_s)
        # one visitor through the whole path first: the rule job runs and the store answers
        if probe(Visitor(f"idb-{run}-warm-anon", f"idb-{run}-warm-user", 1.0)).latency_s is None:
            raise RuntimeError(f"no identify was merged within {timeout_s:g} s")
        started = time.perf_counter()
        futures = []
        for i, visitor in enumerate(make_visitors(run, visitors)):
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
            futures.append(pool.submit(probe, visitor))
        outcomes = [f.result() for f in futures]
    return summarize(outcomes, rate)
