"""`amctl bench --soak`: the soak against the running local stack (see `amctl.load.soak` for its figures).

Events of a population of its own (`soak-<run>-<n>`) go one per request at a steady rate while a reading
is taken every interval: RSS per component, the broker's size, the answers so far and the rule engine's
assignment histogram (event received → membership written, as on the end-to-end ladder). At the end the
job is left to settle, and the events each user had acknowledged are compared with the `eventCount` of
the profile the job wrote for that user.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import psycopg

from amctl import monitor
from amctl.load.measures import _drain, _scrape, _segments
from amctl.load.profile import MIXES, EventFactory
from amctl.load.runner import LoadPlan, LoadResult, run_load
from amctl.load.schedule import ArrivalSchedule, Stage
from amctl.load.soak import Losses, Reading, SoakConfig, losses, report, sample
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings

ASSIGNMENT = "am_segment_assignment_seconds"
APPLIED = "am_rule_engine_events_processed_total"
EVALUATED = "am_rule_engine_evaluation_seconds_count"
WRITTEN = "am_profiles_written_total"
SETTLE_TIMEOUT_S = 1800.0  # a long soak's backlog can take many minutes to work off
STUCK_AFTER_S = 60.0  # nothing applied, evaluated or written for this long: the job is not catching up
BROKER_TIMEOUT_S = 5.0  # longer than status allows: a loaded broker answering late is still a figure


class SoakRun:
    """One soak: its population, the events acknowledged per user, and the readings taken so far."""

    def __init__(self, settings: AmctlSettings, config: SoakConfig) -> None:
        self.settings, self.config = settings, config
        self.stack = LocalStack(settings)
        self.metrics = f"{settings.url(settings.ports.rule_engine)}/metrics"
        self.prefix = f"soak-{uuid.uuid4().hex[:6]}-"
        self.acked_by_user: Counter[str] = Counter()
        self.acked = 0  # the same events counted once more, readable from any thread (the live view's)
        self.load: LoadResult | None = None  # the runner's live result, once it has reported progress
        self.started = 0.0

    def on_acked(self, body: bytes) -> None:
        self.acked_by_user[orjson.loads(body)["userId"]] += 1
        self.acked += 1

    def reading(self, at_s: float, counts: tuple[int, int, int]) -> Reading:
        """The stack now; `counts` (acked, refused, dropped) were taken on the load's own thread."""
        scraped = _scrape(self.metrics)
        return Reading(at_s, self.stack.memory(), *counts, scraped.total(APPLIED), scraped.buckets(ASSIGNMENT),
                       self.stack.broker_size(BROKER_TIMEOUT_S), self.stack.memory(proportional=True))

    def counts(self) -> tuple[int, int, int]:
        load = self.load
        if load is None:
            return 0, 0, 0
        return self.acked, sum(load.errors.values()), load.dropped

    def plan(self) -> LoadPlan:
        events = EventFactory(users=self.config.users, mix=MIXES["default"], seed=random.randrange(10**6),
                              user_prefix=self.prefix)
        return LoadPlan(url=self.settings.url(self.settings.ports.ingestion_api) + "/api/events",
                        schedule=ArrivalSchedule([Stage(self.config.rate, self.config.duration_s)]),
                        events=events, on_acked=self.on_acked)

    async def sampled_load(self, first: Reading,
                           on_sample: Callable[[dict[str, Any], LoadResult | None], None]) -> list[Reading]:
        """Send the load; every interval, and once it has ended, take a reading off the event loop's thread
        (the counts are taken on it, where the runner updates them)."""

        def progress(result: LoadResult) -> None:
            self.load = result

        load = asyncio.create_task(run_load(self.plan(), progress, progress_every_s=0.2))
        readings: list[Reading] = []
        previous = first
        end = self.started + self.config.duration_s
        while not load.done():
            due = self.started + self.config.every_s * (len(readings) + 1)
            if due >= end - 1.0:  # the last interval ends with the load (and its last answers)
                await asyncio.wait([load])
            else:
                await asyncio.wait([load], timeout=max(due - time.monotonic(), 0.0))
            if load.done():
                self.load = load.result()
            readings.append(await asyncio.to_thread(self.reading, time.monotonic() - self.started, self.counts()))
            on_sample(sample(previous, readings[-1]), self.load)
            previous = readings[-1]
        return readings

    def applied_by_user(self) -> dict[str, int]:
        """The `eventCount` of every profile of this run's population, as the job wrote it."""
        with psycopg.connect(self.stack.service_env()["AM_DATABASE_URL"]) as conn:
            rows = conn.execute("SELECT user_id, coalesce((profile->>'eventCount')::int, 0) FROM user_profiles"
                                " WHERE user_id LIKE %s", (self.prefix + "%",)).fetchall()
        return {str(user): int(count) for user, count in rows}

    def settle(self, progress: Callable[[str], None]) -> tuple[Losses, float, bool]:
        """Wait until every acknowledged event is applied to its user's profile, however long the job's backlog
        takes, unless neither the shortfall nor the job's counters (events applied, evaluations, profiles
        written) move for `STUCK_AFTER_S`, or `SETTLE_TIMEOUT_S` passes: then what is still short is
        reported, not settled."""
        started = moved = time.monotonic()
        last: tuple[float, ...] = ()
        with httpx.Client(timeout=5.0) as client:
            while True:
                found = losses(self.acked_by_user, self.applied_by_user())
                if found.lost == 0:
                    return found, time.monotonic() - started, True
                job = monitor.scrape(client, self.metrics)
                now = (found.lost, *(job.total(name) for name in (APPLIED, EVALUATED, WRITTEN)))
                if now != last:
                    last, moved = now, time.monotonic()
                if time.monotonic() - moved > STUCK_AFTER_S or time.monotonic() - started > SETTLE_TIMEOUT_S:
                    return found, time.monotonic() - started, False
                progress(f"waiting for the rule job to apply what was acknowledged: {found.lost:,} events to go")
                time.sleep(1.0)

    def run(self, progress: Callable[[str], None],
            on_sample: Callable[[dict[str, Any], LoadResult | None], None]) -> dict[str, Any]:
        """The whole soak: segments, the load with its readings, the settle and loss check, the report."""
        progress(f"creating {self.config.segments} segments and waiting for their backfill")
        segments = _segments(self.settings, self.config.segments)
        try:
            time.sleep(4)  # the new segments' backfill starts (and its settle pass three seconds later)
            _drain(self.metrics)
            progress(f"sending {self.config.rate:g} events/s over {self.config.users:,} users")
            first = self.reading(0.0, (0, 0, 0))
            self.started = time.monotonic()
            readings = asyncio.run(self.sampled_load(first, on_sample))
            found, settle_s, settled = self.settle(progress)
        finally:
            progress("removing the soak's segments")
            with httpx.Client(base_url=self.settings.url(self.settings.ports.segment_api), timeout=10) as client:
                for segment in segments:
                    client.delete(f"/api/segments/{segment}")
        refused = dict(sorted(self.load.errors.items())) if self.load is not None else {}
        return report(self.config, first, readings, found, settle_s, settled) | {
            "refused_by_status": refused, "user_prefix": self.prefix}
