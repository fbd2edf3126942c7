"""Prometheus metrics of the notifier. Labels: topics, channels, recipient ids (configured
organisations, bounded by the configuration), outcomes, programs and months; never PHI."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "wpc_notifier_events_total",
    "Kafka records handled, by topic and outcome (applied, duplicate, undecodable, parked)",
    ["topic", "outcome"],
)
NOTICES = Counter(
    "wpc_notifier_notices_total",
    "Notices made, by kind and outcome (queued, bundled, suppressed, no_pcp)",
    ["kind", "outcome"],
)
DELIVERIES = Counter(
    "wpc_notifier_deliveries_total",
    "Delivery attempts by channel and outcome (delivered, sent, retry, failed)",
    ["channel", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "wpc_notifier_delivery_latency_seconds",
    "From the source event's arrival to the receiver's acknowledgement (includes bundling and digest waits)",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 150, 300, 900, 3600, 86400),
)
QUEUED = Gauge("wpc_notifier_deliveries_queued", "Deliveries waiting for an attempt (including retries)")
PCP_NOTIFIED_SHARE = Gauge(
    "wpc_notifier_pcp_notified_share",
    "Share of enrollees whose PCP was sent the enrollment notice, by program and month of enrollment",
    ["program", "month"],
)
