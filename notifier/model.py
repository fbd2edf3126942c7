"""The notifier's plain values: what a notice says and to whom. Frozen dataclasses, no I/O.

How the pieces fit:

    enrollment.candidates / enrollment.events / adt.events record
        ──`policy`──▶ Notice (recipient, kind, Content)        one per (event, recipient)
    due Notices of one recipient ──`planning.plan`──▶ batches  (bundling, rate limit, digest)
    a batch + the recipient's endpoint ──`render`──▶ Outbound (bytes for one channel)
    Outbound ──`channels.<kind>.send`──▶ delivered / sent, or a retryable / permanent error

`Content` is already the *minimum necessary* for its recipient: `policy.minimum_necessary`
has removed what the recipient may not see (42 CFR Part 2 SUD detail without consent)
before anything is stored for delivery, and lists what it removed in ``withheld``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Literal

# What happened, in the words of the Da Vinci Unsolicited Notifications guide where it has
# one (notification-admit / -discharge / -transfer), and ours for the enrollment side.
EventKind = Literal[
    "admit",  # A01, or A04 of an emergency / inpatient class
    "discharge",  # A03
    "transfer",  # A02
    "admit_discharge",  # an admit and its discharge bundled into one notice (short stays, ED visits)
    "candidate",  # a new enrollment candidate, for the program's care team
    "enrolled",  # the patient consented and is enrolled: the PCP's notice
]
RecipientKind = Literal["care_team", "practice"]
ChannelKind = Literal["webhook", "email", "fhir"]


@dataclass(frozen=True)
class PatientId:
    value: str
    authority: str | None = None  # PID-3.4, or the sending facility when absent
    type_code: str | None = None  # PID-3.5 (MR, MA, ...)


@dataclass(frozen=True)
class Patient:
    """Who the notice is about: identifiers always, demographics only where the source carried them."""

    ids: tuple[PatientId, ...]
    medi_cal_id: str | None = None
    family: str | None = None
    given: str | None = None
    birth_date: dt.date | None = None
    sex: str | None = None


@dataclass(frozen=True)
class Practitioner:
    id: str | None = None  # PD1-4 / ROL-4 XCN-1, usually an NPI
    family: str | None = None
    given: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    code: str
    system: str | None = None  # DG1-3.3 (I10, ICD10CM, ...)
    description: str | None = None


@dataclass(frozen=True)
class Encounter:
    facility: str  # MSH-4 of the sending hospital
    visit_number: str | None  # PV1-19
    patient_class: str | None = None  # PV1-2 (E, I, O, ...)
    location: str | None = None  # PV1-3.1 point of care
    hospital_service: str | None = None  # PV1-10
    admit_time: dt.datetime | None = None
    discharge_time: dt.datetime | None = None
    discharge_disposition: str | None = None  # PV1-36
    diagnoses: tuple[Diagnosis, ...] = ()


@dataclass(frozen=True)
class Content:
    """What one notice discloses. Built by `policy`; rendered by `render` for each channel."""

    event: EventKind
    occurred_at: dt.datetime  # event time (EVN-2 / decision time / status change time), UTC
    patient: Patient
    person_id: uuid.UUID | None = None  # the enrollment service's person id; internal, not PHI
    program: str | None = None  # TOC | ISR | SUD-ENS; None when withheld or not program related
    candidate_id: uuid.UUID | None = None
    encounter: Encounter | None = None
    pcp: Practitioner | None = None
    reason: str | None = None  # the decision's reason, for the care team
    withheld: tuple[str, ...] = ()  # what minimum-necessary removed: "sud_diagnoses", "program", ...


@dataclass(frozen=True)
class Notice:
    """One thing to tell one recipient, derived from one Kafka event (idempotent on both)."""

    notice_id: uuid.UUID
    recipient_id: str
    source_event_id: uuid.UUID
    content: Content
    deliver_after: dt.datetime
    encounter_key: str | None = None  # facility + visit number: admit and discharge bundle on it
    urgent: bool = False  # care team candidate notices: never held for a digest


@dataclass(frozen=True)
class Endpoint:
    """One delivery address of a recipient, from the notification configuration."""

    name: str  # unique within its recipient, e.g. "webhook", "email", "fhir"
    kind: ChannelKind
    url: str | None = None  # webhook: the URL; fhir: the FHIR base (we post to {url}/$process-message)
    to: tuple[str, ...] = ()  # email: addresses
    secret: str | None = field(default=None, repr=False)  # webhook: HMAC key; fhir: bearer token (optional)
    events: tuple[EventKind, ...] | None = None  # notice kinds it takes; None: all its channel can carry

    def takes(self, event: EventKind) -> bool:
        if self.kind == "fhir" and event not in ("admit", "discharge", "transfer", "admit_discharge"):
            return False  # Da Vinci notifications are about encounters (notifier.fhir_bundle)
        return self.events is None or event in self.events


@dataclass(frozen=True)
class Outbound:
    """The bytes of one delivery attempt, ready for a channel. Built once and stored, so a
    retry or a re-send after a crash transmits the same document under the same key."""

    delivery_id: uuid.UUID
    idempotency_key: str  # receivers dedupe on it: webhook header, e-mail Message-ID, FHIR MessageHeader.id
    endpoint: Endpoint
    subject: str  # e-mail subject / short title; never carries PHI
    content_type: str  # application/json, application/fhir+json, text/plain
    body: bytes


DeliveryOutcome = Literal["delivered", "sent"]  # delivered: the receiver said 2xx; sent: an MTA took it
