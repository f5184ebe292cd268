"""The Ingestion API's own metrics (on the app's registry, beside the HTTP ones)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram

from server.runtime.metrics import LATENCY_BUCKETS, register_metric_name

EVENTS_ACCEPTED = register_metric_name("am_events_accepted_total")
EVENTS_REJECTED = register_metric_name("am_events_rejected_total")
EVENTS_DUPLICATE = register_metric_name("am_events_duplicate_total")
RATE_LIMITED = register_metric_name("am_rate_limited_total")
PRODUCE_LATENCY = register_metric_name("am_event_produce_seconds")
IDENTITY_REFUSALS = register_metric_name("am_identity_refusals_total")


class IngestionMetrics:
    """The counters and the histogram, and the accepted counter's child per event type, looked up once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(EVENTS_ACCEPTED.removesuffix("_total"), "Events stored on the broker",
                                ["event_type"], registry=registry)
        self.rejected = Counter(EVENTS_REJECTED.removesuffix("_total"), "Events refused, by reason",
                                ["reason"], registry=registry)
        self.duplicates = Counter(EVENTS_DUPLICATE.removesuffix("_total"), "Repeated eventIds not stored again",
                                  registry=registry)
        self.rate_limited = Counter(RATE_LIMITED.removesuffix("_total"), "Events refused by the rate limit",
                                    registry=registry)
        self.identity_refusals = Counter(IDENTITY_REFUSALS.removesuffix("_total"), "Links of an anonymous id to a "
                                         "user not made, by reason (the store's refusal, or unavailable)",
                                         ["reason"], registry=registry)
        self.produce_latency = Histogram(PRODUCE_LATENCY, "Time from produce to broker ack",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self._accepted: dict[str, Counter] = {}

    def count_accepted(self, by_type: Mapping[str, int]) -> None:
        """Count stored events, `by_type` = {event type: how many}."""
        for event_type, count in by_type.items():
            child = self._accepted.get(event_type)
            if child is None:  # labels() takes a lock and builds a key: once per event type, not per event
                child = self._accepted[event_type] = self.accepted.labels(event_type)
            child.inc(count)
