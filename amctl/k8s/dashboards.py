"""The four Grafana dashboards, built with grafana-foundation-sdk (never hand-edited JSON).

Every query names metrics the platform really exports (`server.runtime.metrics.METRIC_NAMES`) or
metrics of the third parties in THIRD_PARTY_METRICS, each from a scrape job the Prometheus config has;
tests/k8s checks both, for the dashboards and the alert rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
# metric → the Prometheus scrape job that brings it (see templates/k8s/50-monitoring.yaml.j2)
THIRD_PARTY_METRICS = {
    "up": "pods",
    "container_memory_working_set_bytes": "cadvisor",
    "container_spec_memory_limit_bytes": "cadvisor",
    "container_cpu_usage_seconds_total": "cadvisor",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_status_ready": "kube-state-metrics",
    "flink_jobmanager_numRunningJobs": "pods",
    "flink_taskmanager_job_task_numRecordsInPerSecond": "pods",
    "flink_taskmanager_Status_JVM_Memory_Heap_Used": "pods",
}
NOT_PROBES = 'route!~"/metrics|/actuator/health"'


@dataclass(frozen=True)
class PanelSpec:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12


def _quantile(q: float, metric: str, by: str = "", selector: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[5m])))"


def _p95(metric: str, by: str = "", selector: str = "") -> str:
    return _quantile(0.95, metric, by, selector)


DASHBOARDS: dict[str, tuple[str, list[PanelSpec]]] = {
    "system-overview": ("System Overview", [
        PanelSpec("Scrape targets up", (("sum by (component) (up{job=\"pods\"})", "{{component}}"),),
                  kind="stat", width=24),
        PanelSpec("Memory: working set / limit", ((
            "max by (pod, container) (container_memory_working_set_bytes{container!=\"\"})"
            " / on (pod, container) max by (pod, container) (container_spec_memory_limit_bytes{container!=\"\"} > 0)",
            "{{pod}}/{{container}}"),), unit="percentunit"),
        PanelSpec("Memory working set", (
            ("sum by (container) (container_memory_working_set_bytes{container!=\"\"})", "{{container}}"),),
            unit="bytes"),
        PanelSpec("CPU", (("sum by (container) (rate(container_cpu_usage_seconds_total{container!=\"\"}[5m]))",
                           "{{container}}"),), unit="cores"),
        PanelSpec("Container restarts (15 min)", (
            ("sum by (pod) (increase(kube_pod_container_status_restarts_total[15m]))", "{{pod}}"),)),
        PanelSpec("Pods not ready", (("sum(kube_pod_status_ready{condition=\"false\"})", "not ready"),), kind="stat"),
        PanelSpec("Flink jobs running", (("max(flink_jobmanager_numRunningJobs)", "running"),), kind="stat"),
    ]),
    "api-performance": ("API Performance", [
        PanelSpec("Requests per second", (
            (f"sum by (service) (rate(am_http_requests_total{{{NOT_PROBES}}}[1m]))", "{{service}}"),), unit="reqps"),
        PanelSpec("p95 latency", ((_p95("am_http_request_duration_seconds", "service", NOT_PROBES), "{{service}}"),),
                  unit="s"),
        PanelSpec("p95 latency by route", ((_p95("am_http_request_duration_seconds", "service, route", NOT_PROBES),
                                            "{{service}} {{route}}"),), unit="s"),
        PanelSpec("Server errors (5xx share)", ((
            "sum by (service) (rate(am_http_requests_total{status=~\"5..\"}[5m]))"
            " / sum by (service) (rate(am_http_requests_total[5m]))", "{{service}}"),), unit="percentunit"),
        PanelSpec("Rate-limited events per second", (("sum(rate(am_rate_limited_total[1m]))", "429"),)),
        PanelSpec("Broker acknowledgement p95", ((_p95("am_event_produce_seconds", "pod"), "{{pod}}"),),
                  unit="s"),
    ]),
    "data-flow": ("Data Flow", [
        PanelSpec("Events accepted per second", (
            ("sum by (event_type) (rate(am_events_accepted_total[1m]))", "{{event_type}}"),), unit="ops"),
        PanelSpec("Events rejected per second", (
            ("sum by (reason) (rate(am_events_rejected_total[1m]))", "{{reason}}"),
            ("sum(rate(am_events_duplicate_total[1m]))", "duplicate"),), unit="ops"),
        PanelSpec("Rule job records in per second", (
            ("sum by (task_name) (flink_taskmanager_job_task_numRecordsInPerSecond)", "{{task_name}}"),), unit="ops"),
        PanelSpec("Membership changes written per second", (
            ("sum by (change) (rate(am_membership_changes_total[1m]))", "{{change}}"),
            ("sum(rate(am_profiles_written_total[1m]))", "profiles"),), unit="ops"),
        PanelSpec("Event → membership latency p95", ((_p95("am_segment_assignment_seconds"), "p95"),),
                  unit="s"),
        PanelSpec("TaskManager heap used", (
            ("sum by (pod) (flink_taskmanager_Status_JVM_Memory_Heap_Used)", "{{pod}}"),), unit="bytes"),
        # destinations: what the delivery worker sends, how late, and what waits
        PanelSpec("Destination deliveries per second", (
            ("sum by (outcome) (rate(am_destination_deliveries_total[1m]))", "{{outcome}}"),), unit="ops", width=8),
        PanelSpec("Membership change → delivered p99", (
            (_quantile(0.99, "am_destination_delivery_seconds"), "p99"),), unit="s", width=8),
        PanelSpec("Destination queue depth", (
            ("sum by (destination) (am_destination_queue_depth)", "{{destination}}"),
            ("sum(am_destination_paused)", "paused destinations"),), width=8),
    ]),
    "business-metrics": ("Business Metrics", [
        PanelSpec("Events accepted (24 h)", (("sum(increase(am_events_accepted_total[24h]))", "events"),),
                  kind="stat", width=8),
        PanelSpec("Segment entries (24 h)", (
            ("sum(increase(am_membership_changes_total{change=\"entered\"}[24h]))", "entered"),), kind="stat", width=8),
        PanelSpec("Emails sent (24 h)", (("sum(increase(am_emails_total{outcome=\"sent\"}[24h]))", "sent"),),
                  kind="stat", width=8),
        PanelSpec("Segment entries and exits per minute", (
            ("sum by (change) (increase(am_membership_changes_total[1m]))", "{{change}}"),)),
        PanelSpec("Campaign jobs queued per minute", (
            ("sum by (trigger) (increase(am_campaign_jobs_queued_total[1m]))", "{{trigger}}"),
            ("sum by (reason) (increase(am_campaign_recipients_skipped_total[1m]))", "skipped: {{reason}}"),)),
        PanelSpec("Emails by outcome per minute", (
            ("sum by (outcome) (increase(am_emails_total[1m]))", "{{outcome}}"),)),
        PanelSpec("SMTP hand-off p95", ((_p95("am_smtp_send_seconds"), "p95"),), unit="s"),
    ]),
}


def _panel(spec: PanelSpec) -> timeseries.Panel | stat.Panel:
    panel = timeseries.Panel() if spec.kind == "timeseries" else stat.Panel()
    panel.title(spec.title).datasource(DATASOURCE).unit(spec.unit).span(spec.width).height(8)
    for ref, (expr, legend) in zip("ABCDEFGH", spec.queries, strict=False):
        panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
    return panel


def build(uid: str) -> dashboard.Dashboard:
    title, panels = DASHBOARDS[uid]
    board = (dashboard.Dashboard(title).uid(f"am-{uid}").tags(["audience-manager"]).refresh("30s")
             .time("now-1h", "now").timezone("browser").readonly())
    for spec in panels:
        board.with_panel(_panel(spec))
    return board


def _without_nulls(value: Any) -> Any:
    """The SDK writes unset fields as null; Grafana wants them absent."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def dashboard_files() -> dict[str, str]:
    """`<uid>.json` → the dashboard's JSON, as Grafana's file provisioning reads it."""
    files = {}
    for uid in DASHBOARDS:
        encoded = json.loads(json.dumps(build(uid).build(), cls=JSONEncoder))
        files[f"{uid}.json"] = json.dumps(_without_nulls(encoded), indent=2, sort_keys=True)
    return files
