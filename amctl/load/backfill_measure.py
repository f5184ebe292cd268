"""`amctl bench`'s backfill: a segment created over 100,000 stored profiles while live events flow, and what
the live events' latency does meanwhile.

The profiles are seeded straight into the stack's PostgreSQL (COPY), dated a day back so the settle pass after
the segment's creation (profiles written since) leaves them out; the rule job holds no state for them, so its
re-evaluation of each is a cheap miss and the figures weigh the feeder's scan and the records through the job's
keyed input. The live events (every one a fresh user entering a segment of their own marker) give the rule
engine's `am_segment_assignment_seconds` samples: once without a backfill, then while it runs, in the same run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import psycopg

from amctl.load.measures import _drain, _scrape
from amctl.load.profile import MIXES, EventFactory
from amctl.load.runner import LoadPlan, run_load
from amctl.load.schedule import ArrivalSchedule, Stage
from amctl.monitor import quantile
from amctl.settings import AmctlSettings

ASSIGNMENT = "am_segment_assignment_seconds"
WARM_UP_S = 4.0
SPENT_MODULO = 5000  # seeded totalSpent is i % 5000, so `totalSpent >= threshold` matches a known share


@dataclass
class MarkedEvents(EventFactory):
    """The load generator's events, each carrying the run's marker (the live segment's rule)."""

    marker: str = ""

    def event(self) -> dict[str, Any]:
        body = super().event()
        body["properties"]["benchLive"] = self.marker
        return body


def threshold_for(profiles: int, share: float) -> tuple[int, int]:
    """The `totalSpent >= threshold` that matches about `share` of the seeded profiles, and how many it matches."""
    threshold = round(SPENT_MODULO * (1 - share))
    return threshold, sum(1 for i in range(profiles) if i % SPENT_MODULO >= threshold)


def seed_profiles(database_url: str, prefix: str, profiles: int) -> None:
    """`profiles` stored profiles of users `<prefix><n>` (cohort `prefix`, totalSpent n % 5000), by COPY."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur, cur.copy(
            "COPY user_profiles (user_id, profile, updated_at) FROM STDIN") as copy:
        for i in range(profiles):
            user = f"{prefix}{i:07d}"
            body = {"userId": user, "traits": {"cohort": prefix, "plan": ("free", "pro", "team")[i % 3]},
                    "totalSpent": i % SPENT_MODULO, "purchaseCount": i % 7, "eventCount": 1 + i % 40}
            copy.write_row((user, orjson.dumps(body).decode(), "2026-11-24T00:00:00Z"))


def _remove(database_url: str, prefix: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("DELETE FROM user_profiles WHERE user_id LIKE %s", (prefix + "%",)).rowcount


def _stored_profiles(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM user_profiles").fetchone()
    return int(row[0]) if row else 0


def _consumers(client: httpx.Client) -> dict[str, Any]:
    details: dict[str, Any] = client.get("/actuator/health").json()["components"]["consumers"].get("details", {})
    return details


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def measure_backfill(profiles: int = 100_000, share: float = 0.075, rate: float = 200.0,
                     baseline_s: float = 8.0, window_s: float = 30.0) -> dict[str, Any]:
    """Seed `profiles`, then with live events at `rate`/s: `baseline_s` without a backfill, then a segment
    matching `share` of them created and `window_s` more. Reports the records the backfill sent (the old way
    sent one per stored profile), how long until its first pass had sent them, and the live p50/p99 in both
    windows (event received → membership written)."""
    settings = AmctlSettings()
    database_url = os.environ["AM_DATABASE_URL"]  # the bench hands every measure the services' environment
    metrics = f"{settings.url(settings.ports.rule_engine)}/metrics"
    run = uuid.uuid4().hex[:6]
    prefix = f"backfill-{run}-"
    threshold, matching = threshold_for(profiles, share)
    segments = httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=30)
    engine = httpx.Client(base_url=settings.url(settings.ports.rule_engine), timeout=10)
    created: list[str] = []

    def create(name: str, rules: dict[str, Any]) -> str:
        answer = segments.post("/api/segments", json={"name": f"{name} {run}", "rules": rules})
        answer.raise_for_status()
        created.append(str(answer.json()["id"]))
        return created[-1]

    try:
        _drain(metrics)  # what earlier stages sent
        create("backfill bench live", {"field": "benchLive", "operator": "eq", "value": run})  # no stored match
        started = time.perf_counter()
        seed_profiles(database_url, prefix, profiles)
        seed_s = time.perf_counter() - started
        stored = _stored_profiles(database_url)
        _drain(metrics)
        plan = LoadPlan(url=settings.url(settings.ports.ingestion_api) + "/api/events",
                        schedule=ArrivalSchedule([Stage(rate, WARM_UP_S + baseline_s + window_s)]),
                        events=MarkedEvents(users=5_000_000, mix=MIXES["default"], seed=7, marker=run,
                                            user_prefix=f"live-{run}-"))
        load: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: load.update(asyncio.run(run_load(plan)).as_json()), daemon=True)
        sender.start()
        time.sleep(WARM_UP_S)  # past the load's first seconds (connections opening, the live segment's first entries)
        quiet = _scrape(metrics).buckets(ASSIGNMENT)
        time.sleep(baseline_s)
        before = _scrape(metrics).buckets(ASSIGNMENT)
        sent_before = int(_consumers(engine).get("backfilledUsers", 0))
        created_at = time.perf_counter()
        create("backfill bench", {"all": [{"field": "cohort", "operator": "eq", "value": prefix},
                                          {"field": "totalSpent", "operator": "gte", "value": threshold}]})
        first_pass_s = None
        while sender.is_alive():
            # the count grows when a pass has sent all it had to: the first growth ends the first pass
            if first_pass_s is None and int(_consumers(engine).get("backfilledUsers", 0)) > sent_before:
                first_pass_s = time.perf_counter() - created_at
            time.sleep(0.1)
        after = _scrape(metrics).buckets(ASSIGNMENT)
        _drain(metrics)  # the settle pass too
        sent = int(_consumers(engine).get("backfilledUsers", 0)) - sent_before
    finally:
        for segment_id in reversed(created):
            segments.delete(f"/api/segments/{segment_id}")
        removed = _remove(database_url, prefix)
        segments.close()
        engine.close()
    return {
        "profiles": stored, "seeded": removed, "seed_s": round(seed_s, 1), "segments": 1, "candidates": matching,
        "records_sent": sent, "old_way_records": stored,
        "duration_s": round(first_pass_s, 2) if first_pass_s is not None else None,
        "live_rate": load.get("achieved_rate"), "live_dropped": load.get("dropped"),
        "live_p50_ms": _ms(quantile(before, after, 0.5)), "live_p99_ms": _ms(quantile(before, after, 0.99)),
        "no_backfill_p50_ms": _ms(quantile(quiet, before, 0.5)),
        "no_backfill_p99_ms": _ms(quantile(quiet, before, 0.99)),
    }
