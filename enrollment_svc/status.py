"""A candidate's lifecycle as a transition table (style.md: lifecycle states in data).

    queued ──promote──▶ pending ──accept──▶ accepted ──consent──▶ enrolled ──disenroll──▶ disenrolled
                          │  └───────────consent──────────────────▲
                          ├─decline─▶ declined ◀─decline── accepted
                          └─expire──▶ expired
    queued / pending / accepted ──withdraw──▶ withdrawn   (identity merge: one candidate per person)

A candidate *holds a slot* of its program while pending, accepted or enrolled; queued
candidates wait in creation order for a slot (programs.md capacities). Only these
statuses block a new candidate for the person (one at a time, "No duplication").
"""

from __future__ import annotations

from typing import Literal

Action = Literal["promote", "accept", "consent", "decline", "expire", "disenroll", "withdraw"]

TRANSITIONS: dict[tuple[str, str], str] = {
    ("queued", "promote"): "pending",
    ("pending", "accept"): "accepted",
    ("pending", "consent"): "enrolled",
    ("accepted", "consent"): "enrolled",
    ("pending", "decline"): "declined",
    ("accepted", "decline"): "declined",
    ("pending", "expire"): "expired",
    ("enrolled", "disenroll"): "disenrolled",
    ("queued", "withdraw"): "withdrawn",
    ("pending", "withdraw"): "withdrawn",
    ("accepted", "withdraw"): "withdrawn",
}

ACTIVE = frozenset({"queued", "pending", "accepted", "enrolled"})
HOLDS_SLOT = frozenset({"pending", "accepted", "enrolled"})

# Reasons the care team records (programs.md, "Disenrollment when ..." and opt-in).
DECLINE_REASONS = frozenset({"refused", "not_reached", "not_eligible", "already_served", "other"})
DISENROLL_REASONS = frozenset(
    {"handoff_complete", "risk_reduced", "refused", "not_engaged", "duration_complete", "moved_away", "deceased"}
)
REASONS: dict[str, frozenset[str]] = {"decline": DECLINE_REASONS, "disenroll": DISENROLL_REASONS}


class TransitionError(Exception):
    """The action is not allowed from the candidate's status (or lacks a valid reason)."""


def next_status(status: str, action: str, reason: str | None = None) -> str:
    target = TRANSITIONS.get((status, action))
    if target is None:
        raise TransitionError(f"cannot {action} a candidate that is {status}")
    allowed = REASONS.get(action)
    if allowed is not None and reason not in allowed:
        raise TransitionError(f"{action} needs a reason among: {', '.join(sorted(allowed))}")
    return target
