"""The rule engine process: submits the Flink job, feeds it rules, writes its output, reports health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from flinkjob.feeder import RuleFeeder
from flinkjob.metrics import FlinkJobMetrics
from flinkjob.probe import PipelineProbe
from flinkjob.settings import RuleEngineSettings
from flinkjob.writer import StoreWriter
from server.runtime.app import build_app
from server.runtime.health import ComponentHealth
from server.stores.kafka import AsyncProducer, BrokerHealth
from server.stores.postgres import Database
from server.stores.selection import profile_store

log = logging.getLogger("rule-engine")
JOB_NAME = "audience-rule-engine"


class FlinkJob:
    """The submitted job, and its state as the Flink REST API reports it."""

    def __init__(self, settings: RuleEngineSettings) -> None:
        self.settings = settings
        self.rest = f"http://{settings.flink_jobmanager or f'{settings.host}:{settings.flink_ui_port}'}"
        self.client: Any = None
        self.found_job_id: str | None = None

    def submit(self) -> None:
        if self.settings.flink_jobmanager:  # a session cluster: `python -m flinkjob.submit` submits the job
            return
        from flinkjob.job import build  # imports PyFlink (starts a JVM gateway): only in this process

        self.client = build(self.settings).execute_async(JOB_NAME)
        log.info("submitted Flink job %s", self.client.get_job_id())

    def job_id(self) -> str | None:
        """The job this process submitted or, on a session cluster, the one `overview` found last."""
        return str(self.client.get_job_id()) if self.client else self.found_job_id

    async def overview(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=2) as client:
            jobs = (await client.get(f"{self.rest}/jobs/overview")).json()["jobs"]
            if self.settings.flink_jobmanager:  # submitted by `flinkjob.submit`: the newest job of that name
                job = max((j for j in jobs if j["name"] == JOB_NAME), key=lambda j: j["start-time"], default=None)
                self.found_job_id = job["jid"] if job else None
            else:
                job = next((j for j in jobs if j["jid"] == self.job_id()), None)
            if job is None:
                return {"state": "NOT SUBMITTED"}
            job_id = job["jid"]
            checkpoints = (await client.get(f"{self.rest}/jobs/{job_id}/checkpoints")).json()
            failure = None
            if job["state"] != "RUNNING" or job.get("tasks", {}).get("failed"):
                exceptions = (await client.get(f"{self.rest}/jobs/{job_id}/exceptions")).json()
                root = exceptions.get("root-exception") or ""
                failure = root.strip().splitlines()[-1] if root.strip() else None
        latest = (checkpoints.get("latest") or {}).get("completed") or {}
        overview = {"state": job["state"], "jobId": job_id, "lastCheckpointId": latest.get("id"),
                    "lastCheckpointAt": latest.get("latest_ack_timestamp")}
        if failure:
            overview["lastFailure"] = failure
        return overview

    async def health(self) -> ComponentHealth:
        overview = await self.overview()
        return ComponentHealth("UP" if overview["state"] == "RUNNING" else "DOWN", overview)

    def cancel(self) -> None:
        if self.client is None:
            return
        # `amctl down` signals the whole process group, so the JVM is often gone already: py4j would log
        # a traceback ("Answer from Java side is empty") on the root logger for an ordinary shutdown
        quiet = _DropGatewayGone()
        logging.root.addFilter(quiet)
        try:
            with contextlib.suppress(Exception):  # the job may already be gone
                self.client.cancel().result()
        finally:
            logging.root.removeFilter(quiet)


class _DropGatewayGone(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Exception while sending command."


def create_app(settings: RuleEngineSettings) -> FastAPI:
    db = Database(settings.database_conninfo, settings.database_pool_max, settings.dependency_timeout_s)
    job = FlinkJob(settings)
    store = profile_store(settings, db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.open(settings.startup_wait_s)
        producer = AsyncProducer.for_service(settings)
        await asyncio.to_thread(job.submit)
        writer = StoreWriter(settings.kafka_bootstrap, settings.topic_prefix, store, settings.writer_batch,
                             app.state.metrics_registry)
        feeder = RuleFeeder(settings.kafka_bootstrap, settings.topic_prefix, producer, store, settings.backfill_page,
                            app.state.metrics_registry, settings.backfill_rate, settings.backfill_scan_rate)
        probe = PipelineProbe(producer, settings.topic_prefix)
        app.state.writer, app.state.feeder, app.state.probe = writer, feeder, probe
        job_metrics = FlinkJobMetrics(job.rest, job.job_id)
        app.state.metrics_registry.register(job_metrics)
        tasks = [asyncio.create_task(writer.run(), name="writer"), asyncio.create_task(feeder.run(), name="feeder"),
                 asyncio.create_task(probe.run(lambda: writer.probe_seen), name="probe"),
                 asyncio.create_task(job_metrics.run(), name="job-metrics")]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(job.cancel)
        writer.close()
        feeder.close()
        producer.close()
        await db.close()

    app = build_app(service="rule-engine", title="Audience Manager — rule engine",
                    description="Health and metrics of the real-time rule job.", settings=settings, lifespan=lifespan)

    async def consuming() -> ComponentHealth:
        writer: StoreWriter | None = getattr(app.state, "writer", None)
        tasks = {t.get_name(): t for t in asyncio.all_tasks() if t.get_name() in ("writer", "feeder")}
        dead = [name for name in ("writer", "feeder") if name not in tasks or tasks[name].done()]
        if writer is None or dead:
            return ComponentHealth("DOWN", {"stopped": dead or ["writer", "feeder"]})
        feeder: RuleFeeder = app.state.feeder
        waiting = [o.waiting_for for o in (writer.outage, feeder.outage) if o.waiting_for]
        if waiting:
            return ComponentHealth("DOWN", {"waiting": "; ".join(waiting)})
        if writer.probe_seen != app.state.probe.token:
            return ComponentHealth("DOWN", {"waiting": "for the first probe through the job (sources starting)"})
        return ComponentHealth("UP", {"segments": feeder.live_segments, "backfilledUsers": feeder.backfilled_users,
                                      "lastBackfillUsersPerS": feeder.last_backfill_rate,
                                      "lastBackfillSeconds": feeder.last_backfill_seconds})

    app.state.health.add("flinkJob", job.health)
    app.state.health.add("consumers", consuming)
    app.state.health.add("db", db.health)
    app.state.health.add("kafka", BrokerHealth(settings.kafka_bootstrap, settings.dependency_timeout_s))
    app.state.job = job
    return app
