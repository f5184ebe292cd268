"""The rule job's own metrics, read from the Flink REST API and served on the rule engine's /metrics.

The operator counts in Flink's metric system (it runs inside the JVM's Python interpreter, not in
this process). A background refresh reads them every few seconds, summed over the operator's
subtasks; Prometheus scrapes see the last values read, so a scrape never waits on Flink.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from server.runtime.metrics import register_metric_name

log = logging.getLogger("rule-engine")

OPERATOR = "evaluate-rules"  # the operator's name in `job.build`
EVENTS_PROCESSED = register_metric_name("am_rule_engine_events_processed_total")
RULE_EVALUATIONS = register_metric_name("am_rule_engine_rule_evaluations_total")
CHANGES_EMITTED = register_metric_name("am_rule_engine_membership_changes_emitted_total")
RECORDS_REJECTED = register_metric_name("am_rule_engine_records_rejected_total")
EVALUATION_SECONDS = register_metric_name("am_rule_engine_evaluation_seconds")
BUSY_RATIO = register_metric_name("am_rule_engine_busy_ratio")
JOB_RUNNING = register_metric_name("am_rule_engine_job_running")
LAST_CHECKPOINT = register_metric_name("am_rule_engine_last_checkpoint_timestamp_seconds")

_COUNTERS = {  # Flink metric of the operator -> (exported counter, help)
    "eventsProcessed": (EVENTS_PROCESSED, "User events the job applied to profiles"),
    "ruleEvaluations": (RULE_EVALUATIONS, "Segment rules evaluated against a profile"),
    "membershipChanges": (CHANGES_EMITTED, "Membership changes the job emitted (entered and exited)"),
    "recordsRejected": (RECORDS_REJECTED, "Input records the job could not read and skipped"),
}
_WANTED = [*_COUNTERS, "recordsEvaluated", "evaluationMicros"]


def operator_vertex(job: dict[str, Any]) -> str | None:
    """The id of the rule operator's vertex in a `/jobs/<id>` answer (its chain's name starts with OPERATOR)."""
    return next((v["id"] for v in job.get("vertices", ()) if v["name"].startswith(OPERATOR)), None)


class FlinkJobMetrics(Collector):
    def __init__(self, rest: str, job_id: Callable[[], str | None], every_s: float = 2.0) -> None:
        self.rest, self.job_id, self.every_s = rest, job_id, every_s
        self.values: dict[str, float] = {}
        self.busy_ratio: float | None = None
        self.running = False
        self.last_checkpoint_s: float | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.rest, timeout=2.0) as client:
            while True:
                try:
                    await self.refresh(client)
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    self.running = False
                    log.debug("job metrics not readable: %s", exc)
                await asyncio.sleep(self.every_s)

    async def refresh(self, client: httpx.AsyncClient) -> None:
        job_id = self.job_id()
        if job_id is None:
            self.running = False
            return
        job = (await client.get(f"/jobs/{job_id}")).json()
        self.running = job["state"] == "RUNNING"
        vertex = operator_vertex(job)
        if vertex is None:
            return
        names = ",".join([*(f"{OPERATOR}.{m}" for m in _WANTED), "busyTimeMsPerSecond"])
        rows = (await client.get(f"/jobs/{job_id}/vertices/{vertex}/subtasks/metrics",
                                 params={"get": names, "agg": "sum,max"})).json()
        by_name: dict[str, dict[str, Any]] = {row["id"]: row for row in rows}
        self.values = {m: float(by_name[f"{OPERATOR}.{m}"]["sum"]) for m in _WANTED if f"{OPERATOR}.{m}" in by_name}
        busy = by_name.get("busyTimeMsPerSecond")
        self.busy_ratio = float(busy["max"]) / 1000 if busy and busy.get("max") is not None else None
        latest = ((await client.get(f"/jobs/{job_id}/checkpoints")).json().get("latest") or {}).get("completed")
        if latest:
            self.last_checkpoint_s = latest["latest_ack_timestamp"] / 1000

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(JOB_RUNNING, "1 while the rule job is RUNNING", value=1.0 if self.running else 0.0)
        for flink_name, (name, help_text) in _COUNTERS.items():
            if flink_name in self.values:
                yield CounterMetricFamily(name.removesuffix("_total"), help_text, value=self.values[flink_name])
        if "recordsEvaluated" in self.values and "evaluationMicros" in self.values:
            yield SummaryMetricFamily(EVALUATION_SECONDS, "Time to apply one record and evaluate every rule",
                                      count_value=int(self.values["recordsEvaluated"]),
                                      sum_value=self.values["evaluationMicros"] / 1e6)
        if self.busy_ratio is not None:
            yield GaugeMetricFamily(BUSY_RATIO, "Share of time the busiest subtask of the operator is busy",
                                    value=self.busy_ratio)
        if self.last_checkpoint_s is not None:
            yield GaugeMetricFamily(LAST_CHECKPOINT, "When the newest checkpoint completed (Unix time)",
                                    value=self.last_checkpoint_s)
