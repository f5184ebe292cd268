"""What the delivery worker exports, labelled by destination id."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.runtime.metrics import LATENCY_BUCKETS, register_metric_name
from server.stores.destination_deliveries import LoadedDestinations

DELIVERIES = register_metric_name("am_destination_deliveries_total")
DELIVERY_SECONDS = register_metric_name("am_destination_delivery_seconds")
QUEUE_DEPTH = register_metric_name("am_destination_queue_depth")
PAUSED = register_metric_name("am_destination_paused")
RECORDS_REJECTED = register_metric_name("am_delivery_worker_records_rejected_total")
ERASED_USERS = register_metric_name("am_delivery_worker_erased_users_total")
# Changes recorded by this process whose latency reference (eventReceivedAt) is kept until delivered;
# beyond this many (a destination paused for long) the oldest are forgotten and fall back to `at`.
KEPT_REFERENCES = 100_000


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(DELIVERIES.removesuffix("_total"), "Webhook calls by destination and outcome "
                                  "(delivered, retried, failed)", ["destination", "outcome"], registry=registry)
        self.latency = Histogram(DELIVERY_SECONDS, "From the change (the event's receipt when known) to its "
                                 "delivery at the destination", buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge(QUEUE_DEPTH, "Deliveries pending or retrying", ["destination"], registry=registry)
        self.paused = Gauge(PAUSED, "1 while the destination is paused", ["destination"], registry=registry)
        self.erased = Counter(ERASED_USERS.removesuffix("_total"), "Deleted users taken out of their finished "
                              "deliveries", registry=registry)
        self._shown: set[str] = set()
        self._references: OrderedDict[tuple[str, str], datetime] = OrderedDict()

    def outcome(self, destination_id: str, outcome: str) -> None:
        self.deliveries.labels(destination_id, outcome).inc()

    def remember(self, destination_id: str, message_id: str, reference: datetime) -> None:
        """Keep when the change began (for the latency of its delivery)."""
        self._references[(destination_id, message_id)] = reference
        while len(self._references) > KEPT_REFERENCES:
            self._references.popitem(last=False)

    def settled(self, destination_id: str, message_id: str, changed_at: datetime, delivered: bool) -> None:
        """The delivery is done (delivered or failed): observe its latency if it was delivered."""
        reference = self._references.pop((destination_id, message_id), changed_at)
        if delivered:
            self.latency.observe(max(0.0, (datetime.now(UTC) - reference).total_seconds()))

    def destinations(self, loaded: LoadedDestinations) -> None:
        """Set the gauges from a fresh snapshot; destinations that are gone lose their series."""
        for destination_id in self._shown - loaded.destinations.keys():
            self.queue_depth.remove(destination_id)
            self.paused.remove(destination_id)
        for destination_id, destination in loaded.destinations.items():
            self.queue_depth.labels(destination_id).set(loaded.queued.get(destination_id, 0))
            self.paused.labels(destination_id).set(0 if destination.status == "ACTIVE" else 1)
        self._shown = set(loaded.destinations)
