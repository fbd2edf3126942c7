"""Prometheus metrics of every service (one registry per process, exposed at /metrics).

Labels carry ids that are not PHI (facility codes, trigger events, ACK codes,
channels); a facility label is sanitized and capped so a misbehaving sender cannot
explode the number of series.
"""

from __future__ import annotations

import re
import threading
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_MAX_FACILITIES = 500
_FACILITY_RE = re.compile(r"[^A-Za-z0-9_.\-]")
_seen_facilities: set[str] = set()
_lock = threading.Lock()
# The listener labels every message; both caches below make that a dict lookup. Their
# size is capped: past it, values are computed as before, just not remembered.
_CACHE_MAX = 10_000
_facility_labels: dict[str, str] = {}
_children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}

M = TypeVar("M", bound=MetricWrapperBase)


def facility_label(facility: str) -> str:
    """Sending facility as a metric label: ASCII-safe, at most 64 chars, 500 distinct values."""
    cached = _facility_labels.get(facility)
    if cached is not None:
        return cached
    value = _FACILITY_RE.sub("_", facility)[:64] or "unknown"
    with _lock:
        if value not in _seen_facilities:
            if len(_seen_facilities) >= _MAX_FACILITIES:
                value = "other"  # stays "other": the set of seen facilities never shrinks
            else:
                _seen_facilities.add(value)
        if len(_facility_labels) < _CACHE_MAX:
            _facility_labels[facility] = value
    return value


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, remembered (prometheus_client takes a lock and builds
    a key on every call)."""
    key = (id(metric), values)
    found = _children.get(key)
    if found is None:
        found = metric.labels(*values)
        if len(_children) < _CACHE_MAX:
            _children[key] = found
    return found  # type: ignore[return-value]


MESSAGES_RECEIVED = Counter(
    "wpc_adt_messages_received_total", "ADT messages received", ["channel", "facility", "trigger"]
)
MESSAGES_ACKED = Counter(
    "wpc_adt_messages_acked_total",
    "ADT messages answered, by ACK code (AA accepted, AE/AR rejected)",
    ["channel", "facility", "trigger", "ack_code"],
)
DUPLICATES = Counter(
    "wpc_adt_duplicates_total", "Retransmissions answered with the stored ACK", ["facility", "same_bytes"]
)
ACK_LATENCY = Histogram(
    "wpc_adt_ack_latency_seconds",
    "From a complete frame/request to its ACK being written",
    ["channel"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FRAMING_ERRORS = Counter(
    "wpc_mllp_framing_errors_total", "MLLP input that was not a well-formed frame", ["kind"]
)
OPEN_CONNECTIONS = Gauge("wpc_mllp_open_connections", "Open MLLP connections")
REFUSED_CONNECTIONS = Counter(
    "wpc_mllp_refused_connections_total",
    "MLLP connections refused on accept (closing, max_connections, per_address)", ["reason"]
)
EVICTED_CONNECTIONS = Counter(
    "wpc_mllp_evicted_connections_total",
    "Idle MLLP connections closed to make room for a new one (never_sent, idle_unknown, idle_known)", ["reason"]
)
TLS_REFUSED = Counter(
    "wpc_mllp_tls_refused_total",
    "MLLP TLS connections refused (no_client_cert, unknown_ca, expired, protocol_version, not_tls, "
    "handshake_timeout, unknown_cn, other)", ["reason"]
)
STORE_BATCH_SIZE = Histogram(
    "wpc_store_batch_messages", "Messages per group commit", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
STORE_COMMIT_SECONDS = Histogram(
    "wpc_store_commit_seconds", "Duration of one group commit",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
)
STORE_FAILURES = Counter("wpc_store_failures_total", "Group commits that failed (messages answered AR 207)")
OUTBOX_BACKLOG = Gauge("wpc_outbox_backlog", "Outbox rows not yet published to Kafka")
OUTBOX_PUBLISHED = Counter("wpc_outbox_published_total", "Outbox rows published", ["topic"])
RELAY_ERRORS = Counter("wpc_outbox_relay_errors_total", "Failed publish attempts of the outbox relay")
RELAY_LEADER = Gauge("wpc_outbox_relay_leader", "1 while this process holds the relay leadership")
