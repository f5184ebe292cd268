"""The measurements `amctl bench` runs against a live local stack (each returns a dict of figures)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from amctl.load import cpu, ladder
from amctl.load.http1 import HttpPool
from amctl.load.profile import CATEGORIES, MIXES, EventFactory
from amctl.load.runner import LoadPlan, run_load
from amctl.load.schedule import ArrivalSchedule, Stage
from amctl.local import processes
from amctl.monitor import Sample, parse, quantile
from amctl.settings import AmctlSettings

Factory = Callable[[], bytes]


async def _closed_loop(url: str, body: Factory, workers: int, seconds: float) -> int:
    """Requests completed by `workers` senders that each wait for an answer before the next."""
    done = 0
    deadline = time.perf_counter() + seconds
    path = urlsplit(url).path
    async with HttpPool(url) as pool:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await pool.request("POST", path, body())
                if response.status < 300:
                    done += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return done


def _throughput(url: str, batch: int, seconds: float, workers: int) -> float:
    events = EventFactory(users=100_000, mix=MIXES["default"])
    if batch > 1:
        def body() -> bytes:
            return orjson.dumps({"events": [events.event() for _ in range(batch)]})
    else:
        def body() -> bytes:
            return orjson.dumps(events.event())
    started = time.perf_counter()
    done = asyncio.run(_closed_loop(url, body, workers, seconds))
    return done * batch / (time.perf_counter() - started)


def measure_ingestion(seconds: float = 5.0) -> dict[str, Any]:
    """Events/s through the Ingestion API (single and batches of 100), beside a bare FastAPI
    endpoint and a raw confluent-kafka producer measured in the same run."""
    settings = AmctlSettings()
    base = settings.url(settings.ports.ingestion_api)
    single = _throughput(f"{base}/api/events", 1, seconds, 16)
    batch = _throughput(f"{base}/api/events/batch", 100, seconds, 8)
    with _bare_server() as bare:
        bare_single = _throughput(f"{bare}/api/events", 1, seconds, 16)
        bare_batch = _throughput(f"{bare}/api/events/batch", 100, seconds, 8)
    raw = _raw_producer(f"{settings.host}:{settings.ports.kafka}", seconds)
    return {
        "single_events_per_s": round(single), "batch_events_per_s": round(batch),
        "bare_fastapi_single_per_s": round(bare_single), "bare_fastapi_batch_per_s": round(bare_batch),
        "raw_producer_per_s": round(raw),
        "single_vs_bare_fastapi": round(single / bare_single, 3), "batch_vs_bare_fastapi": round(batch / bare_batch, 3),
        "batch_vs_raw_producer": round(batch / raw, 3),
    }


@contextmanager
def _bare_server(*flags: str) -> Iterator[str]:
    """Run `amctl.load.bare` on a free port; yields its base URL."""
    port = processes.free_port()
    bare = subprocess.Popen([sys.executable, "-m", "amctl.load.bare", str(port), *flags])
    try:
        deadline = time.monotonic() + 15
        while not processes.port_accepts("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        bare.terminate()
        bare.wait(10)


def measure_generator_accuracy(rates: list[float], seconds: float = 5.0,
                               batch_rates: Sequence[float] = (10_000,), batch_size: int = 100) -> dict[str, Any]:
    """`amctl events send`'s achieved rate against a target that keeps up (a raw 202 responder), one event
    per request at `rates` and in batches of `batch_size` at `batch_rates` (events/s), with the cores the
    generator itself used: the end-to-end ladder's top steps are batched, and the generator must not be their
    ceiling."""
    figures: dict[str, Any] = {}
    with _bare_server("--raw") as bare:
        runs = [(rate, 1, f"at_{rate:g}") for rate in rates]
        runs += [(rate, batch_size, f"batch_at_{rate:g}") for rate in batch_rates]
        for rate, batch, key in runs:
            path = "/api/events/batch" if batch > 1 else "/api/events"
            plan = LoadPlan(url=f"{bare}{path}", schedule=ArrivalSchedule([Stage(rate / batch, seconds)]),
                            events=EventFactory(users=1000, mix=MIXES["default"]), batch_size=batch)
            cpu_started, started = time.process_time(), time.perf_counter()
            summary = asyncio.run(run_load(plan)).as_json()
            cores = (time.process_time() - cpu_started) / (time.perf_counter() - started)
            figures[key] = {
                "achieved_rate": summary["achieved_rate"],
                "achieved_vs_target": round(summary["achieved_rate"] / rate, 4),
                "late": summary["late"], "dropped": summary["dropped"], "errors": summary["errors"],
                "p99_ms": summary["latency_ms"]["p99"], "generator_cpu_cores": round(cores, 3),
            }
    return figures


def _raw_producer(bootstrap: str, seconds: float) -> float:
    from confluent_kafka import Producer

    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5})
    events = EventFactory(users=100_000, mix=MIXES["default"])
    payloads = [orjson.dumps(events.event()) for _ in range(1000)]
    acked = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal acked
        acked += err is None

    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < seconds:
        try:
            producer.produce(topic, payloads[sent % 1000], on_delivery=on_delivery)
            sent += 1
        except BufferError:
            producer.poll(0.01)
        producer.poll(0)
    producer.flush(30)
    return acked / (time.perf_counter() - started)


def _scrape(url: str) -> Sample:
    return parse(httpx.get(url, timeout=5).text, time.monotonic())


DRAIN_TIMEOUT_S = 180.0


def _drain(metrics_url: str, timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until the rule engine has worked off everything queued — its written profiles and the
    records its job evaluated (events and backfill requests) both stand still for 6 s, longer than
    the job's metrics can lag (Flink's metric fetcher, then the rule engine's refresh, 2 s each) and
    the gap before a backfill's settle pass — and return how long that took, so one stage's backlog
    does not spill into the next measurement."""
    started = time.monotonic()
    last: tuple[float, ...] = ()
    still_since = time.monotonic()
    while time.monotonic() - started < timeout_s:
        sample = _scrape(metrics_url)
        now = tuple(sample.total(name) for name in ("am_profiles_written_total",
                                                    "am_rule_engine_evaluation_seconds_count"))
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 6.0:
            break
        time.sleep(0.25)
    return time.monotonic() - started


def _segments(settings: AmctlSettings, count: int) -> list[str]:
    """`count` segments over the load generator's categories and event counts; returns the ids created."""
    ids = []
    with httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=10) as client:
        for i in range(count):
            rules = {"all": [{"field": "category", "operator": "eq", "value": CATEGORIES[i % len(CATEGORIES)]},
                             {"field": "eventCount", "operator": "gte", "value": 1 + i // len(CATEGORIES)}]}
            response = client.post("/api/segments", json={"name": f"bench {uuid.uuid4().hex[:6]} {i}", "rules": rules})
            if response.is_success:
                ids.append(str(response.json()["id"]))
    return ids


def measure_assignment_latency(
    rates: Sequence[int] = ladder.LADDER_RATES, seconds: float = 10.0, segments: int = 20,
    single_up_to: int = ladder.SINGLE_UP_TO, batch_size: int = ladder.BATCH_SIZE, idle_s: float = 3.0,
    warmup_s: float = 2.0,
) -> dict[str, Any]:
    """Event received → membership written (p50/p99/max) with `segments` active segments, on a ladder of
    open-model rates (single events up to `single_up_to` ev/s, batches above), draining between steps and
    stopping once a step clearly fails; with the cores each component of the stack used at every step."""
    settings = AmctlSettings()
    metrics = f"{settings.url(settings.ports.rule_engine)}/metrics"
    _drain(metrics)  # what earlier measurements sent
    _segments(settings, segments)
    time.sleep(4)  # the new segments' backfill starts (and its settle pass three seconds later)
    backfill = _drain(metrics)
    name = "am_segment_assignment_seconds"
    roots = cpu.local_stack_roots(settings)

    def send(step: ladder.Step) -> dict[str, Any]:
        path = "/api/events/batch" if step.batch_size > 1 else "/api/events"
        plan = LoadPlan(url=settings.url(settings.ports.ingestion_api) + path,
                        schedule=ArrivalSchedule([Stage(step.rate / step.batch_size, step.seconds)]),
                        events=EventFactory(users=5_000_000, mix=MIXES["default"], seed=random.randrange(10**6)),
                        batch_size=step.batch_size)
        return asyncio.run(run_load(plan)).as_json()

    def run(step: ladder.Step) -> ladder.StepResult:
        before = _scrape(metrics).buckets(name)
        started = cpu.snapshot(roots)
        load = send(step)
        use = cpu.cpu_use(started, cpu.snapshot(roots))
        drain_s = _drain(metrics)
        after = _scrape(metrics).buckets(name)
        p50, p99 = quantile(before, after, 0.5), quantile(before, after, 0.99)
        top = ladder.highest_bucket(before, after)
        return ladder.StepResult(
            step, load["achieved_rate"], load["sent"], load["dropped"], load["errors"], load["late"],
            int(after.get(float("inf"), 0) - before.get(float("inf"), 0)),
            p50 * 1000 if p50 is not None else None, p99 * 1000 if p99 is not None else None,
            top * 1000 if top is not None and top != float("inf") else None, drain_s, drain_s < DRAIN_TIMEOUT_S,
            use)

    if warmup_s > 0:  # the services' first connections and code paths, not measured
        send(ladder.Step(200, 1, warmup_s))
        _drain(metrics)
    idle = cpu.snapshot(roots)
    time.sleep(idle_s)  # what the stack burns with no load: the floor under every step's figures
    idle_use = cpu.cpu_use(idle, cpu.snapshot(roots))
    steps = ladder.plan(rates, seconds, single_up_to, batch_size)
    rungs = ladder.climb(steps, run)
    return ladder.report(ladder.Setup(segments, backfill + 4, idle_use), rungs, steps)


def measure_seed_flow(trials: int = 5) -> dict[str, Any]:
    """The seed's flow: with "High Value Users" (totalSpent > 1000) live, a new user's purchase of
    1500 is POSTed; timed until GET /api/users/{id}/segments lists the segment (polled every 5 ms)."""
    settings = AmctlSettings()
    seg = httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=10)
    ing = httpx.Client(base_url=settings.url(settings.ports.ingestion_api), timeout=10)
    timings: list[float | None] = []
    try:
        sid = seg.post("/api/segments", json={"name": f"High Value Users {uuid.uuid4().hex[:8]}", "rules": {
            "conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]}}).json()["id"]
        time.sleep(1.0)  # the definition reaches the job (propagation is measured on its own)
        for _ in range(trials):
            user = f"seed-{uuid.uuid4().hex[:10]}"
            started = time.perf_counter()
            ing.post("/api/events", json={"userId": user, "eventType": "purchase",
                                          "properties": {"amount": 1500, "category": "electronics"}})
            found = None
            while found is None and time.perf_counter() - started < 10:
                segments = seg.get(f"/api/users/{user}/segments").json()["segments"]
                if any(s["segmentId"] == sid for s in segments):
                    found = time.perf_counter() - started
                else:
                    time.sleep(0.005)
            timings.append(found)
    finally:
        seg.close()
        ing.close()
    measured = sorted(t for t in timings if t is not None)
    return {"trials": trials, "listed_ms": [round(t * 1000) if t is not None else None for t in timings],
            "median_ms": round(measured[len(measured) // 2] * 1000) if measured else None,
            "max_ms": round(measured[-1] * 1000) if measured else None}


def measure_rule_propagation(trials: int = 5) -> dict[str, Any]:
    """Segment created → applied to the next event: events for fresh users every 50 ms after the
    create call returns; the first one assigned bounds the propagation time."""
    settings = AmctlSettings()
    seg = httpx.Client(base_url=settings.url(settings.ports.segment_api), timeout=10)
    ing = httpx.Client(base_url=settings.url(settings.ports.ingestion_api), timeout=10)
    times = []
    try:
        for _ in range(trials):
            marker = uuid.uuid4().hex[:10]
            created = time.perf_counter()
            sid = seg.post("/api/segments", json={"name": f"propagation {marker}",
                                                  "rules": {"field": "marker", "operator": "eq", "value": marker}}
                           ).json()["id"]
            sent: list[tuple[str, float]] = []
            found = None
            while found is None and time.perf_counter() - created < 10:
                user = f"prop-{marker}-{len(sent)}"
                sent.append((user, time.perf_counter() - created))
                ing.post("/api/events", json={"userId": user, "eventType": "page_view",
                                              "properties": {"marker": marker}})
                time.sleep(0.05)
                for user, at in sent:
                    segments = seg.get(f"/api/users/{user}/segments").json()["segments"]
                    if any(s["segmentId"] == sid for s in segments):
                        found = at
                        break
            times.append(found)
    finally:
        seg.close()
        ing.close()
    measured = [t for t in times if t is not None]
    return {"trials": trials, "propagation_ms": [round(t * 1000) if t is not None else None for t in times],
            "max_ms": round(max(measured) * 1000) if measured else None}


def measure_user_segments_latency(rate: float = 500.0, seconds: float = 10.0) -> dict[str, Any]:
    """GET /api/users/{id}/segments at a fixed open-model rate."""
    settings = AmctlSettings()
    base = settings.url(settings.ports.segment_api)
    rng = random.Random(7)
    plan = LoadPlan(url=base, schedule=ArrivalSchedule([Stage(rate, seconds)]),
                    events=EventFactory(users=1, mix=MIXES["default"]),
                    get_url=lambda: f"/api/users/prop-user-{rng.randrange(1000)}/segments")
    summary = asyncio.run(run_load(plan)).as_json()
    return {"rate": rate, "achieved_rate": summary["achieved_rate"], "errors": summary["errors"],
            "dropped": summary["dropped"], "p50_ms": summary["latency_ms"]["p50"],
            "p99_ms": summary["latency_ms"]["p99"]}


