"""The open-model load runner: sends are started when due, never held back by slow responses.

If a send is due while `concurrency` requests are already in flight it is dropped and counted
(k6's dropped_iterations), so an overloaded target shows up as drops, not as a quietly lower rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from hdrh.histogram import HdrHistogram

from amctl.load.http1 import HttpPool, HttpProtocolError
from amctl.load.profile import EventFactory
from amctl.load.schedule import ArrivalSchedule
from amctl.load.thresholds import Threshold

LATE_AFTER_S = 0.005


@dataclass
class LoadResult:
    """Counts and an HDR histogram of latencies (microseconds) of one load run."""

    target_rate: float
    duration_s: float
    batch_size: int
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 120_000_000, 3))
    sent: int = 0
    completed: int = 0
    dropped: int = 0
    late: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # statuses by the second of the run each request was sent in: when an outage began and ended
    by_second: dict[int, Counter[str]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # from the first send to the last one started (at least the planned duration): a generator that
    # falls behind sends its last events late, and its achieved rate drops accordingly
    send_window_s: float = 0.0

    def record(self, status: str, seconds: float, ok: bool, sent_at_s: float | None = None) -> None:
        self.completed += 1
        self.statuses[status] += 1
        if sent_at_s is not None:
            self.by_second.setdefault(int(sent_at_s), Counter())[status] += 1
        if not ok:
            self.errors[status] += 1
        self.histogram.record_value(max(1, int(seconds * 1_000_000)))

    def figures(self) -> dict[str, float]:
        h, attempts = self.histogram, self.sent + self.dropped

        def ms(percentile: float) -> float:
            return float(h.get_value_at_percentile(percentile)) / 1000 if h.get_total_count() else 0.0

        return {
            "achieved_rate": self.sent * self.batch_size / max(self.duration_s, self.send_window_s),
            "errors": sum(self.errors.values()) / self.completed if self.completed else 0.0,
            "dropped": self.dropped / attempts if attempts else 0.0,
            "p50": ms(50), "p90": ms(90), "p95": ms(95), "p99": ms(99), "p999": ms(99.9),
            "max": h.get_max_value() / 1000 if h.get_total_count() else 0.0,
            "mean": h.get_mean_value() / 1000 if h.get_total_count() else 0.0,
        }

    def as_json(self, thresholds: list[Threshold] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        f = self.figures()
        return {
            "target_rate": self.target_rate,
            "duration_s": self.duration_s,
            "batch_size": self.batch_size,
            "sent": self.sent,
            "events_sent": self.sent * self.batch_size,
            "completed": self.completed,
            "achieved_rate": round(f["achieved_rate"], 2),
            "send_window_s": round(max(self.duration_s, self.send_window_s), 3),
            "dropped": self.dropped,
            "late": self.late,
            "errors": sum(self.errors.values()),
            "error_rate": f["errors"],
            "errors_by_status": dict(self.errors),
            "statuses": dict(self.statuses),
            "statuses_by_second": [{"second": s, "statuses": dict(c)} for s, c in sorted(self.by_second.items())],
            "latency_ms": {k: round(f[k], 3) for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean")},
            "thresholds": [
                {"threshold": t.text, "passed": passed, "actual": actual}
                for t in thresholds
                for passed, actual in [t.check(f)]
            ],
        }


@dataclass(frozen=True)
class LoadPlan:
    url: str
    schedule: ArrivalSchedule
    events: EventFactory
    batch_size: int = 1
    concurrency: int = 256
    timeout_s: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    # when set, each send is a GET of the path this returns (read benchmarks) instead of a POST of events
    get_url: Callable[[], str] | None = None  # a path on the same server as `url`
    # called with the body of every POST answered 2xx: who needs to know which events were acknowledged
    on_acked: Callable[[bytes], None] | None = None


async def run_load(plan: LoadPlan, on_progress: Callable[[LoadResult], None] | None = None,
                   progress_every_s: float = 0.5) -> LoadResult:
    """Send by the schedule; returns when every started request has finished."""
    batch = plan.batch_size > 1
    result = LoadResult(target_rate=plan.schedule.expected_sends() * plan.batch_size / plan.schedule.duration_s,
                        duration_s=plan.schedule.duration_s, batch_size=plan.batch_size)
    in_flight: set[asyncio.Task[None]] = set()
    target = urlsplit(plan.url)
    post_path = target.path + (f"?{target.query}" if target.query else "")
    async with HttpPool(plan.url, plan.timeout_s, plan.headers) as pool:

        async def send(body: bytes | None) -> None:
            started = time.perf_counter()
            sent_at_s = loop.time() - start
            try:
                if plan.get_url is not None:
                    response = await pool.request("GET", plan.get_url())
                else:
                    response = await pool.request("POST", post_path, body)
                ok = 200 <= response.status < 300
                result.record(str(response.status), time.perf_counter() - started, ok, sent_at_s)
                if ok and body is not None and plan.on_acked is not None:
                    plan.on_acked(body)
            except TimeoutError:
                result.record("timeout", time.perf_counter() - started, False, sent_at_s)
            except (OSError, HttpProtocolError) as exc:
                result.record(type(exc).__name__, time.perf_counter() - started, False, sent_at_s)

        def body() -> bytes | None:
            if plan.get_url is not None:
                return None
            if batch:
                return orjson.dumps({"events": [plan.events.event() for _ in range(plan.batch_size)]})
            return orjson.dumps(plan.events.event())

        loop = asyncio.get_running_loop()
        start = loop.time()
        next_progress = start + progress_every_s
        for due in plan.schedule.due_times():
            now = loop.time()
            if due > now - start:
                await asyncio.sleep(due - (now - start))
                now = loop.time()
            if now - start - due > LATE_AFTER_S:
                result.late += 1
            if len(in_flight) >= plan.concurrency:
                result.dropped += 1
            else:
                task = asyncio.create_task(send(body()))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                result.sent += 1
            result.send_window_s = now - start
            if on_progress is not None and now >= next_progress:
                result.elapsed_s = now - start
                on_progress(result)
                next_progress = now + progress_every_s
        remaining = start + plan.schedule.duration_s - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        result.elapsed_s = loop.time() - start
        if in_flight:
            await asyncio.wait(in_flight, timeout=plan.timeout_s + 1)
    if on_progress is not None:
        on_progress(result)
    return result
