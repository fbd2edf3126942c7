"""`enrollment.candidates` v1 and `enrollment.events` v1: what the enrollment service publishes.

A candidate is a *proposal* to a program's care team (programs.md: participation is
opt-in), published once per patient and program episode, when it is proposed: at once
when the program has a free slot, or later when a queued candidate gets one. Its
``event_id`` is derived from the candidate id, so a replay, a redelivery or a second
service instance can only ever produce the same id; consumers dedupe on it.

`EnrollmentEventV1` is every status change of a candidate afterwards (accepted,
enrolled, declined, expired, disenrolled, ...), with who and why.

Kafka key of both topics: ``person_id`` (all of one person's events in order).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.adt_event import Identifier, Provider

# Namespace for uuid5 ids of enrollment events; fixed forever (changing it breaks dedupe).
ENROLLMENT_NAMESPACE = uuid.UUID("0b7d3c52-9a1e-5f4b-8c2d-6e1f0a9b7c43")

Program = Literal["TOC", "ISR", "SUD-ENS"]
PROGRAMS: tuple[str, ...] = ("TOC", "ISR", "SUD-ENS")
Status = Literal["queued", "pending", "accepted", "enrolled", "declined", "expired", "disenrolled", "withdrawn"]


def candidate_event_id(candidate_id: uuid.UUID) -> uuid.UUID:
    """The one `enrollment.candidates` event a candidate ever has."""
    return uuid.uuid5(ENROLLMENT_NAMESPACE, f"proposed\x1f{candidate_id}")


def transition_event_id(candidate_id: uuid.UUID, to_status: str, seq: int) -> uuid.UUID:
    """The `enrollment.events` id of the ``seq``-th transition of a candidate."""
    return uuid.uuid5(ENROLLMENT_NAMESPACE, f"{candidate_id}\x1f{seq}\x1f{to_status}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CriterionV1(_Model):
    name: str
    met: bool
    evidence: list[str] = Field(default=[], description="Encounter ids and flag ids that make the criterion true")
    detail: str = ""


class EncounterRef(_Model):
    encounter_id: uuid.UUID
    facility: str  # MSH-4 of the hospital
    visit_number: str  # PV1-19
    kind: str  # ed | inpatient | psych_inpatient | sobering | outpatient | other
    patient_class: str | None = None  # PV1-2
    admit_time: dt.datetime
    discharge_time: dt.datetime | None = None


class EnrollmentCandidateV1(_Model):
    schema_name: Literal["wpc.enrollment_candidate"] = "wpc.enrollment_candidate"
    schema_version: Literal[1] = 1
    event_id: uuid.UUID
    candidate_id: uuid.UUID
    program: Program
    person_id: uuid.UUID = Field(description="Internal id of the person across hospitals; safe to log")
    identifiers: list[Identifier] = Field(description="Every hospital MRN linked to the person, with authority")
    medi_cal_id: str | None = None
    primary_care: list[Provider] = Field(default=[], description="PCP from the latest ADT (PD1-4 / ROL PP)")
    trigger: EncounterRef | None = Field(default=None, description="None when a partner-system flag triggered")
    criteria: list[CriterionV1] = Field(description="The proposed program's criteria, met or not, with evidence")
    reason: str
    rule_version: str
    decided_at: dt.datetime
    expires_at: dt.datetime | None = None


class EnrollmentEventV1(_Model):
    schema_name: Literal["wpc.enrollment_event"] = "wpc.enrollment_event"
    schema_version: Literal[1] = 1
    event_id: uuid.UUID
    candidate_id: uuid.UUID
    person_id: uuid.UUID
    program: Program
    from_status: Status | None
    to_status: Status
    actor: str = Field(description="User name, or 'system' for expiry, queue promotion and merges")
    reason: str | None = None
    at: dt.datetime
