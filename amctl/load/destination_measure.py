"""`amctl bench`'s destination measurement: event sent → signed "Audience Entered" arrived at a webhook.

The receiver runs inside the measuring process (the local webhook receiver's app on a free port), so the
send and arrival times come from one clock; it verifies every call with the destination's secret as a
receiver would (standardwebhooks, at arrival).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from amctl.local import processes
from amctl.local.webhook_sink import ReceivedRequest, create_app, running
from amctl.settings import AmctlSettings


class Arrivals:
    """What the receiver got: each user's first "Audience Entered", when it arrived and whether it verified."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, bool]] = {}
        self.calls = 0
        self.webhook: Webhook | None = None  # set once the destination's secret is known
        self._lock = threading.Lock()

    def keep(self, request: ReceivedRequest) -> None:
        arrived = time.perf_counter()
        body = request.json_body()
        user = body.get("userId") if isinstance(body, dict) and body.get("event") == "Audience Entered" else None
        verified = self.webhook is not None
        try:
            if self.webhook is not None:
                self.webhook.verify(request.body, request.webhook)
        except WebhookVerificationError:
            verified = False
        with self._lock:
            self.calls += 1
            if isinstance(user, str):
                self.first.setdefault(user, (arrived, verified))

    def wait_for(self, users: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if users <= self.first.keys():
                    return True
            time.sleep(0.01)
        return False


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def measure_destination_latency(users: int = 100, rate: float = 50.0, timeout_s: float = 30.0) -> dict[str, Any]:
    """One purchase per fresh user that makes it enter a segment with a webhook destination, `rate` a
    second; each user's latency runs from sending the event to its signed "Audience Entered" arriving."""
    settings = AmctlSettings()
    run = uuid.uuid4().hex[:8]
    arrivals = Arrivals()
    sent: dict[str, float] = {}
    with (httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=10,
                       headers=settings.auth_headers()) as segments,
          httpx.Client(base_url=settings.url(settings.ports.communication_api), timeout=10,
                       headers=settings.auth_headers()) as destinations,
          httpx.Client(base_url=settings.url(settings.ports.ingestion_api), timeout=10,
                       headers=settings.auth_headers()) as events,
          running(create_app(arrivals.keep), settings.host, processes.free_port()) as receiver):

        def enter(user: str) -> float:
            at = time.perf_counter()
            events.post("/api/events", json={"userId": user, "eventType": "purchase", "properties": {
                "amount": 1500, "destinationBench": run}}).raise_for_status()
            return at

        segment = segments.post("/api/segments", json={"name": f"destination bench {run}", "rules": {
            "conditions": [{"field": "destinationBench", "operator": "eq", "value": run}]}}).raise_for_status().json()
        try:
            destination = destinations.post("/api/destinations", json={
                "name": f"bench {run}", "type": "WEBHOOK", "url": f"{receiver}/hooks/bench-{run}",
                "segmentIds": [segment["id"]], "events": ["entered"]}).raise_for_status().json()
            arrivals.webhook = Webhook(destination["secret"])
            try:
                # one user through the whole path first: the rule job has the segment, the worker the destination
                warm_up = f"dest-{run}-warm-up"
                enter(warm_up)
                if not arrivals.wait_for({warm_up}, timeout_s):
                    raise RuntimeError(f"no delivery reached the receiver within {timeout_s:g} s")
                started = time.perf_counter()
                for i in range(users):
                    time.sleep(max(0.0, started + i / rate - time.perf_counter()))
                    sent[f"dest-{run}-{i}"] = enter(f"dest-{run}-{i}")
                arrivals.wait_for(set(sent), timeout_s)
            finally:
                destinations.delete(f"/api/destinations/{destination['id']}")
        finally:
            segments.delete(f"/api/segments/{segment['id']}")
    arrived = {u: arrivals.first[u] for u in sent if u in arrivals.first}
    latencies = sorted((at - sent[u]) * 1000 for u, (at, _) in arrived.items())
    figures: dict[str, Any] = {"users": users, "rate": rate, "delivered": len(arrived),
                               "verified": sum(verified for _, verified in arrived.values()),
                               "calls": arrivals.calls}
    if latencies:
        figures |= {"p50_ms": round(_percentile(latencies, 0.5), 1), "p99_ms": round(_percentile(latencies, 0.99), 1),
                    "max_ms": round(latencies[-1], 1)}
    return figures
