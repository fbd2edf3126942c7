"""The enrollment domain's plain values: what the history, the rules and the decisions
are made of. Frozen dataclasses, no I/O (style.md, "domain rules").

How the pieces fit:

    adt.events record ──`history.encounter_event`──▶ EncounterEvent
    all EncounterEvents of one (facility, visit number) ──`history.fold`──▶ EncounterState
    EncounterState + Rules ──`history.facts`──▶ EncounterFacts (kind, diagnosis flags)
    PersonHistory (EncounterFacts, Flags, demographics) + Trigger + Rules + now
        ──`eligibility.evaluate`──▶ Evaluation (per-program Decisions, the proposed program)

Times are timezone-aware UTC everywhere in this package: a naive HL7 time is local to
the sending facility, and `history` reads it in the site's timezone from the rules.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

# Encounter kinds, from the rules' facility registry and codes (see `history.classify`).
EncounterKind = Literal["ed", "inpatient", "psych_inpatient", "sobering", "outpatient", "other"]
EncounterStatus = Literal["preadmit", "active", "discharged", "cancelled"]

# Diagnosis flags: names of value sets in the rules (programs.md, "Codes that usually carry
# these facts"): smi, sud, overdose, acsc (avoidable / chronic ambulatory-care-sensitive),
# mental_health, homelessness, incarceration.
DxFlag = str

# Facts that ADT does not carry, arriving through the API with a source and a date.
FlagKind = Literal[
    "homelessness",  # e.g. from the county's homeless management information system (HUD definition)
    "foster_care",  # foster or other at-risk youth known to children and family services
    "drug_court_referral",
    "residential_sud_admission",  # one admission to residential SUD treatment
    "incarceration",  # one incarceration (detail "drug_use" when drug use was involved)
    "overdose",
    "sud",  # an active substance use disorder known from a partner system
    "smi",  # a serious mental illness known from a partner system
    "other_program_enrollment",  # enrolled in another county program (detail: its name, e.g. Re-entry, RBC)
]


@dataclass(frozen=True, slots=True)
class EncounterEvent:
    """One ADT event as it concerns one encounter (facility + visit number)."""

    event_id: str  # adt.events event_id: the dedupe key
    trigger: str  # MSH-9.2: A01 ... A13
    event_time: dt.datetime  # EVN-2, else MSH-7 (UTC); orders the events of an encounter
    received_at: dt.datetime  # tie-breaker after event_time
    patient_class: str | None = None  # PV1-2
    hospital_service: str | None = None  # PV1-10
    point_of_care: str | None = None  # PV1-3.1
    location_facility: str | None = None  # PV1-3.4
    admit_time: dt.datetime | None = None  # PV1-44
    discharge_time: dt.datetime | None = None  # PV1-45
    diagnoses: tuple[str, ...] = ()  # ICD-10-CM codes, upper case, without the dot


@dataclass(frozen=True, slots=True)
class EncounterState:
    """An encounter as the events received so far describe it (the result of `history.fold`)."""

    facility: str  # MSH-4 of the sending hospital
    visit_number: str  # PV1-19
    status: EncounterStatus
    patient_class: str | None
    hospital_service: str | None
    point_of_care: str | None
    location_facility: str | None
    start: dt.datetime  # admit time (PV1-44) or the time of the first event that opened it
    end: dt.datetime | None  # discharge time when discharged
    ever_inpatient: bool  # was of class I at some point (an ED visit later admitted counts as admission)
    diagnoses: frozenset[str]
    last_event_time: dt.datetime


@dataclass(frozen=True, slots=True)
class EncounterFacts:
    """What eligibility needs of an encounter."""

    id: str  # the encounter's database id (evidence)
    facility: str
    visit_number: str
    kind: EncounterKind
    status: EncounterStatus
    start: dt.datetime
    end: dt.datetime | None
    dx_flags: frozenset[DxFlag]


@dataclass(frozen=True, slots=True)
class Flag:
    id: str  # the flag's database id (evidence)
    kind: FlagKind
    source: str  # who said so: a partner system or a user
    effective: dt.datetime  # when the fact happened or began
    until: dt.datetime | None = None  # when it stopped being true (None: still true / a point event)
    detail: str | None = None  # e.g. "drug_use" for an incarceration, a program name for an enrollment


@dataclass(frozen=True, slots=True)
class PersonHistory:
    """Everything known of one person (all linked identities), within the rules' longest window."""

    person_id: str
    birth_date: dt.date | None
    medi_cal: bool  # a Medi-Cal member by the rules' coverage criteria (latest event)
    county_resident: bool | None  # None: the address does not say
    encounters: tuple[EncounterFacts, ...]
    flags: tuple[Flag, ...]
    active_program: str | None = None  # a pending / accepted / enrolled candidate's program, if any


@dataclass(frozen=True, slots=True)
class Trigger:
    """What made us evaluate: an encounter event (admission, discharge, ED visit ...) or a new flag."""

    kind: Literal["admission", "discharge", "visit", "flag"]
    at: dt.datetime  # the time the window counts back from (admit time, discharge time, flag date)
    encounter: EncounterFacts | None = None
    flag: Flag | None = None


@dataclass(frozen=True, slots=True)
class Criterion:
    """One criterion of a program: whether it is met, and the evidence (encounter / flag ids)."""

    name: str  # e.g. "inpatient_admissions_6m>=3"
    met: bool
    evidence: tuple[str, ...] = ()
    detail: str = ""  # e.g. "4 of 3 needed"; never PHI


@dataclass(frozen=True, slots=True)
class Decision:
    program: str  # TOC | ISR | SUD-ENS
    eligible: bool
    criteria: tuple[Criterion, ...]


@dataclass(frozen=True, slots=True)
class Evaluation:
    rule_version: str
    decisions: tuple[Decision, ...]
    proposed: str | None  # the program to propose (priority order), None when none
    reason: str  # why this proposal, or why none ("already enrolled in ISR", "encounter too old", ...)
    evidence: tuple[str, ...] = field(default=())  # evidence of the proposed program's met criteria
