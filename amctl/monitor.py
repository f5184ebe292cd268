"""What `amctl top` shows: two samples of every service's /metrics, turned into rates and percentiles.

The numbers are those of the Grafana dashboards, computed the way Prometheus would (`rate`,
`histogram_quantile` over the interval between two scrapes), so the terminal and the dashboards agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]

# Services with a /metrics endpoint: name shown -> the `Ports` field of its port.
SERVICES = {
    "segment-api": "segment_api",
    "ingestion-api": "ingestion_api",
    "communication-api": "communication_api",
    "rule-engine": "rule_engine",
    "email-worker": "email_worker",
    "delivery-worker": "delivery_worker",
}


@dataclass(frozen=True)
class Sample:
    """Every series of one scrape: (sample name, labels) -> value; empty if the service did not answer."""

    at: float
    series: dict[tuple[str, Labels], float] = field(default_factory=dict)
    up: bool = True

    def total(self, name: str, **match: str) -> float:
        wanted = set(match.items())
        return sum(v for (n, labels), v in self.series.items() if n == name and wanted <= labels)

    def buckets(self, name: str, where: Callable[[Labels], bool] | None = None, **match: str) -> dict[float, float]:
        """Cumulative counts of a histogram by upper bound, summed over the series matching `match`
        (and `where`, when given)."""
        wanted, result = set(match.items()), dict[float, float]()
        for (n, labels), value in self.series.items():
            if n == f"{name}_bucket" and wanted <= labels and (where is None or where(labels)):
                bound = float(dict(labels)["le"])
                result[bound] = result.get(bound, 0.0) + value
        return result


def parse(text: str, at: float) -> Sample:
    series: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            series[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return Sample(at, series)


def scrape(client: httpx.Client, url: str) -> Sample:
    try:
        response = client.get(url)
        response.raise_for_status()
    except httpx.HTTPError:
        return Sample(time.monotonic(), up=False)
    return parse(response.text, time.monotonic())


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """A quantile of what was observed between two cumulative histograms (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if not total:
        return None
    target, lower, previous = q * total, 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= target:
            if bound == float("inf"):
                return lower
            share = (target - previous) / (cumulative - previous) if cumulative > previous else 1.0
            return lower + (bound - lower) * share
        lower, previous = bound, cumulative
    return lower


def rate(before: Sample, after: Sample, name: str, **match: str) -> float:
    elapsed = after.at - before.at
    return max(0.0, after.total(name, **match) - before.total(name, **match)) / elapsed if elapsed > 0 else 0.0


HTTP_LATENCY = "am_http_request_duration_seconds"

# Requests of monitoring itself (scrapes, health checks), left out of a service's request figures.
INTERNAL_ROUTES = frozenset({"/metrics", "/actuator/health", "unmatched"})


def _is_api(labels: Labels) -> bool:
    return dict(labels).get("route") not in INTERNAL_ROUTES


def _api_rate(before: Sample, after: Sample, status_class: str = "") -> float:
    return sum(rate(before, after, "am_http_requests_total", **dict(labels))
               for (name, labels) in after.series
               if name == "am_http_requests_total" and _is_api(labels)
               and dict(labels).get("status", "").startswith(status_class))


def service_row(before: Sample, after: Sample) -> dict[str, Any]:
    """Request rate, share of 5xx and p99 of one service's API routes over the interval."""
    if not after.up:
        return {"up": False}
    requests, errors = _api_rate(before, after), _api_rate(before, after, "5")
    p99 = quantile(before.buckets(HTTP_LATENCY, _is_api), after.buckets(HTTP_LATENCY, _is_api), 0.99)
    return {"up": True, "requests_per_s": round(requests, 1),
            "errors_5xx": round(errors / requests, 4) if requests else 0.0,
            "p99_ms": round(p99 * 1000, 1) if p99 is not None else None}


def pipeline(before: dict[str, Sample], after: dict[str, Sample], first: dict[str, Sample]) -> dict[str, Any]:
    """The flow of events: accepted, applied by the job, memberships written, mails and webhooks sent."""
    ing, rule, mail, hooks = "ingestion-api", "rule-engine", "email-worker", "delivery-worker"
    accepted_since = after[ing].total("am_events_accepted_total") - first[ing].total("am_events_accepted_total")
    applied_since = (after[rule].total("am_rule_engine_events_processed_total")
                     - first[rule].total("am_rule_engine_events_processed_total"))
    p99 = quantile(before[rule].buckets("am_segment_assignment_seconds"),
                   after[rule].buckets("am_segment_assignment_seconds"), 0.99)
    checkpoint = after[rule].total("am_rule_engine_last_checkpoint_timestamp_seconds")
    return {
        "events_accepted_per_s": round(rate(before[ing], after[ing], "am_events_accepted_total"), 1),
        "events_rejected_per_s": round(rate(before[ing], after[ing], "am_events_rejected_total")
                                       + rate(before[ing], after[ing], "am_rate_limited_total"), 1),
        "events_applied_per_s": round(rate(before[rule], after[rule], "am_rule_engine_events_processed_total"), 1),
        "entered_per_s": round(rate(before[rule], after[rule], "am_membership_changes_total", change="entered"), 1),
        "exited_per_s": round(rate(before[rule], after[rule], "am_membership_changes_total", change="exited"), 1),
        "assignment_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
        # accepted but not yet applied, counted from when `amctl top` started (the broker's own
        # lag figures are not reliable on the local broker)
        "backlog_since_start": max(0, round(accepted_since - applied_since)),
        "job_running": bool(after[rule].total("am_rule_engine_job_running")),
        "job_busy": round(after[rule].total("am_rule_engine_busy_ratio"), 3),
        "checkpoint_age_s": round(time.time() - checkpoint) if checkpoint else None,
        "emails_sent_per_s": round(rate(before[mail], after[mail], "am_emails_total", outcome="sent"), 1),
        "emails_failed_per_s": round(rate(before[mail], after[mail], "am_emails_total", outcome="failed"), 1),
        "webhooks_delivered_per_s": round(rate(before[hooks], after[hooks], "am_destination_deliveries_total",
                                               outcome="delivered"), 1),
        "webhooks_failed_per_s": round(rate(before[hooks], after[hooks], "am_destination_deliveries_total",
                                            outcome="failed"), 1),
    }


def segment_sizes(client: httpx.Client, base_url: str, limit: int = 10) -> list[dict[str, Any]]:
    """The largest segments among the first 100, by member count (one stats call each)."""
    try:
        items = client.get(f"{base_url}/api/segments", params={"limit": 100}).json()["items"]
        sizes = [{"name": s["name"], "size": client.get(f"{base_url}/api/segments/{s['id']}/stats").json()["size"]}
                 for s in items]
    except (httpx.HTTPError, KeyError, ValueError):
        return []
    return sorted(sizes, key=lambda s: -int(s["size"]))[:limit]
