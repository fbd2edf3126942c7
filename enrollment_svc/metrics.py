"""Prometheus metrics of the enrollment service (labels: outcomes and programs, never PHI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:  # the store counts transitions here, so it imports this module
    from enrollment_svc.store import Applied

EVENTS = Counter(
    "wpc_enrollment_events_total",
    "adt.events records handled, by outcome (applied, duplicate, undecodable, parked)",
    ["outcome"],
)
DECISIONS = Counter(
    "wpc_enrollment_decisions_total",
    "Eligibility evaluations, by proposed program ('none' when no candidate)",
    ["program"],
)
CANDIDATES = Counter(
    "wpc_enrollment_candidates_total", "Candidates created, by program and initial status", ["program", "status"]
)
APPLY_SECONDS = Histogram(
    "wpc_enrollment_apply_seconds",
    "One adt.events record: from decode to committed history, decision and outbox",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TRANSITIONS = Counter(
    "wpc_enrollment_transitions_total",
    "Candidate status changes written (a transaction retried after a conflict may count one twice)",
    ["program", "to_status"],
)


# The children every event counts into, looked up once (`labels` takes a lock and builds a key).
_APPLIED = EVENTS.labels(outcome="applied")
_DUPLICATE = EVENTS.labels(outcome="duplicate")
_NO_PROPOSAL = DECISIONS.labels(program="none")


def record(applied: Applied, seconds: float) -> None:
    (_DUPLICATE if applied.duplicate else _APPLIED).inc()
    APPLY_SECONDS.observe(seconds)
    if applied.evaluation is not None:
        proposed = applied.evaluation.proposed
        (DECISIONS.labels(program=proposed) if proposed else _NO_PROPOSAL).inc()
    if applied.candidate_id is not None and applied.evaluation is not None and applied.evaluation.proposed:
        CANDIDATES.labels(program=applied.evaluation.proposed, status=applied.candidate_status or "").inc()
