"""Encounters from the ADT event stream: a pure fold over the events of one visit.

An encounter is keyed by the sending facility (MSH-4) and the visit number (PV1-19).
The store keeps *every* event of an encounter, deduplicated by ``event_id``;
`fold` sorts them by (event_time, received_at, event_id) and replays them. The state
is therefore a function of the *set* of events, never of their arrival order: an A08
that arrives before its A01, a retransmitted A03 or a replayed backlog all end in the
state the in-order stream gives. Applying each event to the last stored state instead
would need a rule for every pair of "late" events and would still get some wrong.

Trigger events (HL7 v2.5 chapter 3) and what they do here
(``status`` columns: the status before → after; a blank cell leaves it unchanged)::

    trigger  HL7 v2    meaning                          unopened  preadmit  active  discharged  cancelled
    A01      3.3.1     admit / visit notification       active    active    -       -           active
    A04      3.3.4     register (ED, outpatient)        active    active    -       -           active
    A05      3.3.5     pre-admit                        preadmit  -         -       -           preadmit
    A06      3.3.6     outpatient → inpatient           active    active    -       -           active
    A07      3.3.7     inpatient → outpatient           active    -         -       -           -
    A02      3.3.2     transfer (same encounter)        active    active    -       -           -
    A03      3.3.3     discharge / end visit            dischgd   dischgd   dischgd dischgd     -
    A08      3.3.8     update patient information       -         -         -       -           -
    A11      3.3.11    cancel admit / visit             cancel.   cancel.   cancel. cancel.     -
    A12      3.3.12    cancel transfer                  -         -         -       -           -
    A13      3.3.13    cancel discharge                 -         -         -       active      -
    A38      3.3.38    cancel pre-admit                 cancel.   cancel.   -       -           -

"unopened" is internal: events about a visit whose opening event we have not seen
(yet), e.g. only an A08. At the end of the fold it reads as ``active`` (the visit
exists), or ``preadmit`` when PV1-2 says P.

Besides the status, every event except a cancellation overwrites the fields it
carries (PV1-2, PV1-3.1, PV1-3.4, PV1-10): an empty field in HL7 becomes ``None`` in
``adt.events`` and leaves the value as it was. Specific effects:

- A06 without PV1-2 means class I, A07 without PV1-2 means class O (3.3.6, 3.3.7).
- A02 pushes the location it leaves; A12 pops it (3.3.12: "PV1-3 must show the
  location of the patient prior to the original transfer", so a PV1-3 on the A12 wins).
- A03 sets the end to PV1-45, else to its own event time; an update while discharged
  that carries PV1-45 corrects it; A13 clears it.
- A11 cancels every event before it: their diagnoses, admit times and inpatient class
  stop counting. A later opening event (A01, A04, A05, A06) re-opens the visit as a
  fresh start (diagnoses of updates sent while cancelled still count). A12 cancels
  the latest A02, A13 the latest A03: their diagnoses drop.
- ``ever_inpatient``: PV1-2 was I while the patient was there (active or discharged);
  a pre-admit of class I is not an admission until the A01 (or A06) arrives.
- Every trigger A01–A62 has an entry in `TRIGGERS` (the table is the data; each row
  gives the chapter 3 section and why): ``transition`` (the table above),
  ``update`` (fields only: A08, A12), ``identity`` (person-level; merges are the store's
  business, `MERGE_TRIGGERS`) or ``none``. An event of an ``identity`` or ``none``
  trigger, and of any trigger not in the table (A56–A59 are unassigned, O01 is not
  ADT), concerns no encounter: `encounter_event` returns None and nothing is stored for
  the visit. So a lone A14 or A18 can never leave an encounter without a state.

Times are aware UTC: a naive HL7 time is local to the sender, read in the site's zone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Literal
from zoneinfo import ZoneInfo

from enrollment_svc.model import EncounterEvent, EncounterFacts, EncounterKind, EncounterState, EncounterStatus
from enrollment_svc.rules import Facility, Rules, canonical_code
from schemas.adt_event import AdtEventV1

__all__ = [
    "IDENTITY_TRIGGERS",
    "MERGE_TRIGGERS",
    "TRANSITIONS",
    "TRIGGERS",
    "TriggerSpec",
    "classify",
    "dx_flags",
    "encounter_event",
    "facts",
    "fold",
    "to_utc",
    "trigger_spec",
]

_Status = Literal["unopened", "preadmit", "active", "discharged", "cancelled"]

# (status before, trigger) → status after; a missing pair leaves the status unchanged.
TRANSITIONS: Mapping[tuple[_Status, str], _Status] = {
    ("unopened", "A01"): "active",
    ("preadmit", "A01"): "active",
    ("cancelled", "A01"): "active",
    ("unopened", "A04"): "active",
    ("preadmit", "A04"): "active",
    ("cancelled", "A04"): "active",
    ("unopened", "A05"): "preadmit",
    ("cancelled", "A05"): "preadmit",
    ("unopened", "A06"): "active",
    ("preadmit", "A06"): "active",
    ("cancelled", "A06"): "active",
    ("unopened", "A07"): "active",
    ("unopened", "A02"): "active",
    ("preadmit", "A02"): "active",
    ("unopened", "A03"): "discharged",
    ("preadmit", "A03"): "discharged",
    ("active", "A03"): "discharged",
    ("discharged", "A03"): "discharged",
    ("unopened", "A11"): "cancelled",
    ("preadmit", "A11"): "cancelled",
    ("active", "A11"): "cancelled",
    ("discharged", "A11"): "cancelled",
    ("unopened", "A38"): "cancelled",
    ("preadmit", "A38"): "cancelled",
    ("discharged", "A13"): "active",
}

Effect = Literal["transition", "update", "identity", "none"]


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerSpec:
    """What one trigger event does to history, and why (HL7 v2.5 chapter 3 section)."""

    effect: Effect
    section: str  # "3.3.14"; "" for codes HL7 never assigned
    meaning: str
    why: str


def _t(effect: Effect, section: str, meaning: str, why: str) -> TriggerSpec:
    return TriggerSpec(effect, section, meaning, why)


_UNASSIGNED = "not assigned in HL7 table 0003 (v2.5 to v2.8 go from A55 to A60): nothing to apply"

# Every ADT trigger A01–A62 (HL7 v2.5 chapter 3; v2.8 assigns the same codes). Sections are
# v2.5's: 3.3.n for An up to A55, then 3.3.56–3.3.58 for A60–A62.
TRIGGERS: Mapping[str, TriggerSpec] = {
    "A01": _t("transition", "3.3.1", "admit / visit notification", "opens the visit (active)"),
    "A02": _t("transition", "3.3.2", "transfer a patient", "same visit, new location; the patient is present"),
    "A03": _t("transition", "3.3.3", "discharge / end visit", "ends the visit (PV1-45)"),
    "A04": _t("transition", "3.3.4", "register a patient", "opens an ED or outpatient visit"),
    "A05": _t("transition", "3.3.5", "pre-admit a patient", "a pre-admission: not an admission until A01/A06"),
    "A06": _t("transition", "3.3.6", "change an outpatient to an inpatient", "the visit becomes inpatient"),
    "A07": _t("transition", "3.3.7", "change an inpatient to an outpatient", "the visit becomes outpatient"),
    "A08": _t("update", "3.3.8", "update patient information", "overwrites the visit fields it carries"),
    "A09": _t("none", "3.3.9", "patient departing - tracking",
              "a temporary move (PV1-11); the assigned location and the visit's course stay"),
    "A10": _t("none", "3.3.10", "patient arriving - tracking",
              "a temporary arrival (PV1-11); the assigned location and the visit's course stay"),
    "A11": _t("transition", "3.3.11", "cancel admit / visit notification", "the visit was entered in error"),
    "A12": _t("update", "3.3.12", "cancel transfer", "restores the location before the cancelled A02"),
    "A13": _t("transition", "3.3.13", "cancel discharge / end visit", "the visit is open again"),
    "A14": _t("none", "3.3.14", "pending admit",
              "a planned admission, not one: the A01 or A05 that follows opens the visit"),
    "A15": _t("none", "3.3.15", "pending transfer", "planned: the A02 that follows moves the patient"),
    "A16": _t("none", "3.3.16", "pending discharge", "planned: the A03 that follows ends the visit"),
    "A17": _t("none", "3.3.17", "swap patients",
              "two patients exchange beds; the event holds one of the two PID/PV1 pairs, and a bed "
              "changes no status, class or service that the programs count"),
    "A18": _t("identity", "3.3.18", "merge patient information (kept for backward compatibility)",
              "a merge like A40 when it carries MRG (the store merges), else nothing"),
    "A19": _t("none", "3.3.19", "patient query", "a query (QRY/ADR), no change to anything"),
    "A20": _t("none", "3.3.20", "bed status update", "about a bed (NPU), not a patient"),
    "A21": _t("none", "3.3.21", "patient goes on a leave of absence",
              "the visit stays open; programs count admissions, not days present"),
    "A22": _t("none", "3.3.22", "patient returns from a leave of absence", "the visit was open throughout"),
    "A23": _t("none", "3.3.23", "delete a patient record",
              "purges old visit data from the sender's database; 3.3.23 sends errors as cancel "
              "events, so the visit did happen and keeps counting"),
    "A24": _t("identity", "3.3.24", "link patient information", "person-level (identity links are ops work)"),
    "A25": _t("none", "3.3.25", "cancel pending discharge", "cancels an A16, which changed nothing"),
    "A26": _t("none", "3.3.26", "cancel pending transfer", "cancels an A15, which changed nothing"),
    "A27": _t("none", "3.3.27", "cancel pending admit", "cancels an A14, which changed nothing"),
    "A28": _t("identity", "3.3.28", "add person information", "person-level: demographics, no visit"),
    "A29": _t("identity", "3.3.29", "delete person information", "person-level, no visit"),
    "A30": _t("identity", "3.3.30", "merge person information (backward compatibility)", "person-level"),
    "A31": _t("identity", "3.3.31", "update person information", "person-level: demographics, no visit"),
    "A32": _t("none", "3.3.32", "cancel patient arriving - tracking", "cancels an A10, which changed nothing"),
    "A33": _t("none", "3.3.33", "cancel patient departing - tracking", "cancels an A09, which changed nothing"),
    "A34": _t("identity", "3.3.34", "merge patient information - patient ID only",
              "MRG-1 into PID-3: the store moves the prior identity's history"),
    "A35": _t("identity", "3.3.35", "merge patient information - account number only",
              "accounts are not kept"),
    "A36": _t("identity", "3.3.36", "merge patient information - patient ID and account number",
              "person-level"),
    "A37": _t("identity", "3.3.37", "unlink patient information", "person-level (identity links are ops work)"),
    "A38": _t("transition", "3.3.38", "cancel pre-admit", "the pre-admission was entered in error"),
    "A39": _t("identity", "3.3.39", "merge person - patient ID", "person-level"),
    "A40": _t("identity", "3.3.40", "merge patient - patient identifier list",
              "MRG-1 into PID-3: the store moves the prior identity's history"),
    "A41": _t("identity", "3.3.41", "merge account - patient account number", "accounts are not kept"),
    "A42": _t("identity", "3.3.42", "merge visit - visit number",
              "re-keys a visit: needs the store, not this fold; not applied"),
    "A43": _t("identity", "3.3.43", "move patient information - patient identifier list", "person-level"),
    "A44": _t("identity", "3.3.44", "move account information - patient account number", "accounts are not kept"),
    "A45": _t("identity", "3.3.45", "move visit information - visit number",
              "re-keys a visit: needs the store, not this fold; not applied"),
    "A46": _t("identity", "3.3.46", "change patient ID (backward compatibility)", "person-level"),
    "A47": _t("identity", "3.3.47", "change patient identifier list",
              "MRG-1 renamed to PID-3: the store moves the prior identity's history"),
    "A48": _t("identity", "3.3.48", "change alternate patient ID (backward compatibility)", "person-level"),
    "A49": _t("identity", "3.3.49", "change patient account number", "accounts are not kept"),
    "A50": _t("identity", "3.3.50", "change visit number",
              "re-keys a visit: needs the store, not this fold; not applied"),
    "A51": _t("identity", "3.3.51", "change alternate visit ID", "PV1-50 is not a key here"),
    "A52": _t("none", "3.3.52", "cancel leave of absence", "cancels an A21, which changed nothing"),
    "A53": _t("none", "3.3.53", "cancel patient returns from a leave of absence",
              "cancels an A22, which changed nothing"),
    "A54": _t("none", "3.3.54", "change attending doctor", "PV1-7 is not part of history"),
    "A55": _t("none", "3.3.55", "cancel change attending doctor", "cancels an A54, which changed nothing"),
    "A56": _t("none", "", "not defined", _UNASSIGNED),
    "A57": _t("none", "", "not defined", _UNASSIGNED),
    "A58": _t("none", "", "not defined", _UNASSIGNED),
    "A59": _t("none", "", "not defined", _UNASSIGNED),
    "A60": _t("none", "3.3.56", "update allergy information", "allergies (IAM) are not part of history"),
    "A61": _t("none", "3.3.57", "change consulting doctor", "PV1-9 is not part of history"),
    "A62": _t("none", "3.3.58", "cancel change consulting doctor", "cancels an A61, which changed nothing"),
}  # fmt: skip

_NOT_IN_TABLE = TriggerSpec("none", "", "not an ADT trigger A01–A62", "nothing to apply")


def trigger_spec(trigger: str) -> TriggerSpec:
    """The entry of ``trigger`` (case and spaces ignored); ``none`` for anything unknown."""
    return TRIGGERS.get(trigger.strip().upper(), _NOT_IN_TABLE)


# Triggers fold understands: they change the status (TRANSITIONS) or the fields.
_HANDLED = frozenset(t for t, spec in TRIGGERS.items() if spec.effect in ("transition", "update"))
_CANCEL_VISIT = frozenset({"A11", "A38"})  # they undo; their own fields describe nothing new
_PRESENT: frozenset[_Status] = frozenset({"active", "discharged"})  # the patient is (was) there

# Person-level triggers (add/update/delete person, merges, moves, identifier changes, links).
IDENTITY_TRIGGERS = frozenset(t for t, spec in TRIGGERS.items() if spec.effect == "identity")
# The identity triggers whose MRG-1 identifiers the store merges into PID-3 (3.3.18, 3.3.34,
# 3.3.40, 3.3.47). An A18 without MRG has no prior identifier, so it merges nothing.
MERGE_TRIGGERS = frozenset({"A18", "A34", "A40", "A47"})

# PV1-2 patient class, HL7 table 0004.
INPATIENT = "I"
EMERGENCY = "E"
PREADMIT_CLASS = "P"
OUTPATIENT_CLASSES = frozenset({"O", "R"})  # outpatient, recurring patient

# DG1-3.3 coding systems read as ICD-10-CM (HL7 table 0396 and what senders write instead),
# compared upper case without "-", "_", "." and spaces. I10P / ICD10PCS are procedure codes
# and I9, I9C ... are ICD-9: their codes look like ICD-10 codes sometimes (V60, E850) and
# must not be read as such.
_ICD10_SYSTEMS = frozenset({"I10", "I10C", "I10CM", "ICD10", "ICD10CM", "2168401113883690"})
_SYSTEM_NOISE = re.compile(r"[-_.\s]")
# An ICD-10-CM code without its dot: a letter, a digit, then 1 to 5 letters or digits.
_ICD10_SHAPE = re.compile(r"[A-Z][0-9][0-9A-Z]{1,5}")


def to_utc(value: dt.datetime | None, zone: ZoneInfo) -> dt.datetime | None:
    """An HL7 time as aware UTC: a naive one is local to the sender, read in ``zone``.

    An ambiguous local time (the repeated hour when DST ends) reads as the first one
    (``fold=0``); HL7 v2 senders that care send an offset (TS/DTM with ``+/-ZZZZ``).
    """
    if value is None:
        return None
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(dt.UTC)


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _icd10(system: str | None) -> bool:
    return system is None or not system.strip() or _SYSTEM_NOISE.sub("", system.upper()) in _ICD10_SYSTEMS


def encounter_event(event: AdtEventV1, zone: ZoneInfo) -> EncounterEvent | None:
    """The event as it concerns its encounter, or None when it concerns none: no PV1-19,
    or a trigger whose effect (`TRIGGERS`) is ``identity`` or ``none``."""
    trigger = event.trigger_event.strip().upper()
    visit = event.visit
    if trigger not in _HANDLED or visit is None or _text(visit.visit_number) is None:
        return None
    received_at = to_utc(event.received_at, zone)
    assert received_at is not None  # a required field of adt.events
    event_time = to_utc(event.event_time or event.message_time, zone) or received_at
    codes: set[str] = set()
    for dx in event.diagnoses:
        code = canonical_code(dx.code)
        if _icd10(dx.coding_system) and _ICD10_SHAPE.fullmatch(code):
            codes.add(code)
    location = visit.location
    patient_class = _text(visit.patient_class)
    return EncounterEvent(
        event_id=str(event.event_id),
        trigger=trigger,
        event_time=event_time,
        received_at=received_at,
        patient_class=patient_class.upper() if patient_class else None,
        hospital_service=_text(visit.hospital_service),
        point_of_care=_text(location.point_of_care) if location else None,
        location_facility=_text(location.facility) if location else None,
        admit_time=to_utc(visit.admit_time, zone),
        discharge_time=to_utc(visit.discharge_time, zone),
        diagnoses=tuple(sorted(codes)),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Place:
    point_of_care: str | None
    location_facility: str | None
    hospital_service: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Replay:
    """The fold's accumulator. "Segment" fields restart when an A11 cancels the visit."""

    status: _Status = "unopened"
    patient_class: str | None = None
    place: _Place = _Place(None, None, None)
    end: dt.datetime | None = None
    ever_inpatient: bool = False
    # segment: what counts for the start and the diagnoses
    min_admit: dt.datetime | None = None  # earliest PV1-44 seen while not pre-admitted / cancelled
    arrived_at: dt.datetime | None = None  # time of the first event that made the patient present
    first_seen: dt.datetime | None = None  # time of the first event (fallback)
    dx: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (event_id, codes) of events not cancelled
    transfers: tuple[tuple[str, _Place], ...] = ()  # (A02 event_id, the place it left)
    discharge_id: str | None = None  # the A03 an A13 would cancel
    cancelled_start: dt.datetime | None = None  # the start of the visit an A11 cancelled

    def start(self) -> dt.datetime | None:
        return self.min_admit or self.arrived_at or self.first_seen


def _earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _overlay(place: _Place, event: EncounterEvent) -> _Place:
    return _Place(
        event.point_of_care or place.point_of_care,
        event.location_facility or place.location_facility,
        event.hospital_service or place.hospital_service,
    )


def _step(r: _Replay, e: EncounterEvent) -> _Replay:
    """Apply one event (already in replay order) to the accumulator."""
    before = r.status
    after = TRANSITIONS.get((before, e.trigger), before)

    if e.trigger in _CANCEL_VISIT and after == "cancelled" and before != "cancelled":
        # Everything so far was entered in error: keep only what the state shows.
        return _Replay(
            status="cancelled",
            patient_class=r.patient_class,
            place=r.place,
            cancelled_start=r.start() or e.event_time,
        )
    if e.trigger in _CANCEL_VISIT:
        return r

    # A re-opening event (cancelled → active) needs no reset: while cancelled, nothing counted
    # toward the start or ever_inpatient, so the re-opening event is the fresh start.
    patient_class = e.patient_class or {"A06": INPATIENT, "A07": "O"}.get(e.trigger) or r.patient_class
    place = _overlay(r.place, e)
    dx = r.dx
    transfers = r.transfers
    discharge_id = r.discharge_id
    end = r.end
    if e.trigger == "A02":
        transfers = (*transfers, (e.event_id, r.place))
    elif e.trigger == "A12" and transfers:
        (cancelled, prior), transfers = transfers[-1], transfers[:-1]
        dx = tuple(item for item in dx if item[0] != cancelled)
        place = _overlay(prior, e)
    if e.trigger == "A03" and after == "discharged":
        discharge_id = e.event_id
        end = e.discharge_time or e.event_time
    elif e.trigger == "A13" and before == "discharged":
        dx = tuple(item for item in dx if item[0] != discharge_id)
        discharge_id, end = None, None
    elif after == "discharged" and e.discharge_time is not None and e.trigger != "A13":
        end = e.discharge_time  # an update correcting the discharge time
    if e.diagnoses:
        dx = (*dx, (e.event_id, e.diagnoses))

    counts = after not in ("preadmit", "cancelled")
    return dataclasses.replace(
        r,
        status=after,
        patient_class=patient_class,
        place=place,
        end=end,
        ever_inpatient=r.ever_inpatient or (after in _PRESENT and patient_class == INPATIENT),
        min_admit=_earliest(r.min_admit, e.admit_time) if counts else r.min_admit,
        arrived_at=r.arrived_at or (e.event_time if after in _PRESENT else None),
        first_seen=r.first_seen or (None if after == "cancelled" else e.event_time),
        dx=dx,
        transfers=transfers,
        discharge_id=discharge_id,
    )


def _order(event: EncounterEvent) -> tuple[dt.datetime, dt.datetime, str]:
    return (event.event_time, event.received_at, event.event_id)


def _aware(event: EncounterEvent) -> EncounterEvent:
    times = (event.event_time, event.received_at, event.admit_time, event.discharge_time)
    if any(t is not None and t.utcoffset() is None for t in times):
        raise ValueError("EncounterEvent times must be timezone-aware (see history.to_utc)")
    return event


def fold(facility: str, visit_number: str, events: Iterable[EncounterEvent]) -> EncounterState | None:
    """The encounter the events describe, or None when none of them is about its course.

    Copies of one event_id (a retransmission can differ in received_at) count once: the
    one first in replay order, ties broken by the full value, so the pick is independent
    of the input order too.
    """
    chosen: dict[str, EncounterEvent] = {}
    for event in events:
        kept = chosen.get(event.event_id)
        if kept is None or (_order(event), repr(event)) < (_order(kept), repr(kept)):
            chosen[event.event_id] = _aware(event)
    replay = sorted((e for e in chosen.values() if e.trigger in _HANDLED), key=_order)
    if not replay:
        return None
    r = _Replay()
    for event in replay:
        r = _step(r, event)

    status: EncounterStatus
    if r.status == "unopened":  # only updates seen: the visit exists
        status = "preadmit" if r.patient_class == PREADMIT_CLASS else "active"
    else:
        status = r.status
    start = r.cancelled_start if status == "cancelled" else r.start()
    assert start is not None  # every non-cancelled replay sets first_seen
    ever_inpatient = r.ever_inpatient or (status == "active" and r.patient_class == INPATIENT)
    return EncounterState(
        facility=facility,
        visit_number=visit_number,
        status=status,
        patient_class=r.patient_class,
        hospital_service=r.place.hospital_service,
        point_of_care=r.place.point_of_care,
        location_facility=r.place.location_facility,
        start=start,
        end=r.end if status == "discharged" else None,
        ever_inpatient=ever_inpatient and status != "cancelled",
        diagnoses=frozenset(code for _, codes in r.dx for code in codes),
        last_event_time=replay[-1].event_time,
    )


def _registry_entry(state: EncounterState, rules: Rules) -> Facility | None:
    # PV1-3.4 names the building when one MSH-4 sends for several; else MSH-4 itself.
    registry = rules.site.facilities
    if state.location_facility and state.location_facility in registry:
        return registry[state.location_facility]
    return registry.get(state.facility)


def _among(value: str | None, values: Iterable[str]) -> bool:
    return value is not None and value.strip().casefold() in {v.strip().casefold() for v in values}


def classify(state: EncounterState, rules: Rules) -> EncounterKind:
    """What kind of encounter this is, for counting (programs.md).

    An ED visit later admitted (A04 then A06, or class changed to I) is one inpatient
    admission, not an ED visit and an admission. The kind says nothing of the status:
    a cancelled or pre-admitted encounter still has a kind, and counting looks at both.
    """
    entry = _registry_entry(state, rules)
    if entry is not None and entry.kind == "sobering_center":
        return "sobering"
    inpatient = state.ever_inpatient or state.patient_class == INPATIENT
    if inpatient and (
        (entry is not None and entry.kind == "psychiatric")
        or _among(state.hospital_service, rules.site.psychiatric_services)
        or _among(state.point_of_care, rules.site.psychiatric_units)
    ):
        return "psych_inpatient"
    if inpatient:
        return "inpatient"
    if state.patient_class == EMERGENCY:
        return "ed"
    if state.patient_class in OUTPATIENT_CLASSES:
        return "outpatient"
    return "other"


def dx_flags(codes: Iterable[str], rules: Rules) -> frozenset[str]:
    """Names of the rules' value sets that any of the codes belongs to."""
    codes = tuple(codes)
    return frozenset(name for name, value_set in rules.value_sets.items() if any(map(value_set.matches, codes)))


def facts(encounter_id: str, state: EncounterState, rules: Rules) -> EncounterFacts:
    return EncounterFacts(
        id=encounter_id,
        facility=state.facility,
        visit_number=state.visit_number,
        kind=classify(state, rules),
        status=state.status,
        start=state.start,
        end=state.end,
        dx_flags=dx_flags(state.diagnoses, rules),
    )
