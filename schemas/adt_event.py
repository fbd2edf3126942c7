"""`adt.events` v1: one normalized HL7 v2 ADT message, as the listener publishes it.

Consumers dedupe on ``event_id``: it is derived from the sending facility, the
message control id and the message's content digest (MSH-4 + MSH-10 + digest, see
`event_id_for`), so a retransmission, a relay retry or a replay of the stored raw
message always carries the same id, and two different messages under a reused control
id carry two.

Field names say where each value comes from in HL7 v2 (chapter 2 for MSH/EVN,
chapter 3 for PID/PD1/PV1/DG1/MRG/ROL, chapter 6 for IN1). Times keep the sender's
UTC offset when it sent one; a time without an offset is naive, local to the
sending facility, and flagged by ``*_has_offset = False`` semantics of ISO 8601
(no offset in the string). Empty HL7 fields become ``None``; the HL7 explicit
null ``""`` also becomes ``None`` (the sender said "delete", we hold no value).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_NAME: Literal["wpc.adt_event"] = "wpc.adt_event"
SCHEMA_VERSION: Literal[1] = 1

# Namespace for uuid5 event ids; fixed forever, changing it would break dedupe.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2d0e-3b7a-5c1e-9a44-0c7e2b8f5d31")


def patient_key(authority: str, value: str) -> str:
    """`Patient.patient_key` of an identifier (authority: CX-4, or the sending facility when
    absent). Every service computes identity keys with this one function, so they match."""
    return hashlib.sha256(f"{authority}|{value}".encode()).hexdigest()[:32]


def event_id_for(sending_facility: str, control_id: str, content_digest: bytes | None = None) -> uuid.UUID:
    """The stable id of the event carried by message (MSH-4, MSH-10, content digest).

    The listener passes the message's content digest (`adt_listener.digest`: equal for a
    message and its resends), because control ids get reused for different messages.
    Without one, the id is that of (MSH-4, MSH-10) alone: what events published before
    migration 0006 carry, and what synthetic events (benchmarks) use.
    """
    name = f"{sending_facility}\x1f{control_id}"
    if content_digest is not None:
        name += f"\x1f{content_digest.hex()}"
    return uuid.uuid5(EVENT_ID_NAMESPACE, name)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Identifier(_Model):
    """One PID-3 (CX) repetition, or an MRG-1 prior identifier."""

    value: str
    assigning_authority: str | None = None  # CX-4 namespace id (or universal id when only that is sent)
    type_code: str | None = None  # CX-5, HL7 table 0203 (MR, MA, SS, ...)
    assigning_facility: str | None = None  # CX-6


class PersonName(_Model):
    family: str | None = None
    given: str | None = None
    middle: str | None = None


class Address(_Model):
    street: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    county_code: str | None = None  # XAD-9 (for LA County: 06037 or 037)


class Patient(_Model):
    patient_key: str = Field(
        description="Internal key of the patient at the sender: a hash of the first PID-3 identifier and "
        "its assigning authority. Kafka message key of adt.events; safe to log.",
    )
    identifiers: list[Identifier]
    medi_cal_id: str | None = Field(
        default=None, description="PID-3 repetition whose type is MA or whose authority is a Medi-Cal one"
    )
    name: PersonName | None = None
    birth_date: dt.date | None = None  # PID-7 (date part; partial dates keep year and month, day 1)
    sex: str | None = None  # PID-8 as sent
    address: Address | None = None  # first PID-11 repetition
    phone: str | None = Field(
        default=None,
        description="PID-13, home phone: the first repetition that carries a number, as XTN-1 when sent, "
        "else built from its unformatted parts (XTN-5 country, XTN-6 area, XTN-7 local, XTN-8 extension)",
    )
    death_indicator: bool | None = None  # PID-30


class Location(_Model):
    point_of_care: str | None = None  # PL-1
    room: str | None = None  # PL-2
    bed: str | None = None  # PL-3
    facility: str | None = None  # PL-4


class Provider(_Model):
    id: str | None = None
    family: str | None = None
    given: str | None = None
    source: Literal["PD1-4", "ROL", "PV1-7", "PV1-17"]


class Diagnosis(_Model):
    code: str
    coding_system: str | None = None  # DG1-3.3 (I10, ICD10CM, I9C, ...)
    description: str | None = None
    diagnosis_type: str | None = None  # DG1-6 (A admitting, W working, F final)


class Insurance(_Model):
    plan_id: str | None = None  # IN1-2
    company_id: str | None = None  # IN1-3
    company_name: str | None = None  # IN1-4
    policy_number: str | None = None  # IN1-36
    plan_type: str | None = None  # IN1-15


class Visit(_Model):
    patient_class: str | None = None  # PV1-2 (E, I, O, ...)
    location: Location | None = None  # PV1-3
    prior_location: Location | None = None  # PV1-6
    admission_type: str | None = None  # PV1-4
    hospital_service: str | None = None  # PV1-10
    financial_class: str | None = None  # PV1-20
    visit_number: str | None = None  # PV1-19 (CX-1)
    discharge_disposition: str | None = None  # PV1-36
    admit_time: dt.datetime | None = None  # PV1-44
    discharge_time: dt.datetime | None = None  # PV1-45


class AdtEventV1(_Model):
    schema_name: Literal["wpc.adt_event"] = SCHEMA_NAME
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID
    message_id: uuid.UUID = Field(description="Id of the stored raw message (table adt_message)")
    message_type: str  # MSH-9.1, always ADT here
    trigger_event: str  # MSH-9.2 (A01, A03, ...)
    message_structure: str | None = None  # MSH-9.3
    hl7_version: str  # MSH-12.1
    processing_id: str  # MSH-11.1 (P, T, D)
    control_id: str  # MSH-10
    sending_application: str | None = None  # MSH-3.1
    sending_facility: str  # MSH-4.1 (or 4.2 when only the universal id is sent)
    message_time: dt.datetime | None = None  # MSH-7
    event_time: dt.datetime | None = None  # EVN-2 (recorded), else MSH-7
    event_occurred: dt.datetime | None = None  # EVN-6
    received_at: dt.datetime
    patient: Patient
    visit: Visit | None = None
    diagnoses: list[Diagnosis] = []
    primary_care: list[Provider] = []
    insurance: list[Insurance] = []
    prior_identifiers: list[Identifier] = Field(default=[], description="MRG-1, for merges (A34, A40, A47)")
    extra_segments: list[str] = Field(default=[], description="Z- and other segment ids kept in the raw message")
