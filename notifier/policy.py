"""Who is told what: pure functions from an event to notices (no I/O, style.md "domain rules").

Three sources, three rules:

- **A new candidate** (`enrollment.candidates`): the care team of its program whose region
  holds the triggering hospital, at once (``urgent``: the team should reach the patient
  before discharge). The team gets its own program's decision in full (reason, trigger).
- **An enrollment** (`enrollment.events`, to ``enrolled``): the patient's primary care
  provider is told (the pilot's "PCP notified" measure). The PCP is the one the hospital
  sent (PD1-4 / ROL PP, when its provider id belongs to a configured practice), else the
  health plan roster's practice for the Medi-Cal id on that date.
- **An encounter of a watched person** (`adt.events`): admissions (A01; A04 of an
  emergency or inpatient class, since most ED visits never get an A01; A06 to inpatient),
  transfers (A02) and discharges (A03) go to every recipient watching one of the
  patient's identities: the care team and PCP of an enrollee, and any panel holder.

**Minimum necessary, 42 CFR Part 2** (`minimum_necessary`): a recipient may see SUD
information when it is itself a Part 2 program (``part2_qualified``) or the patient has
consented to the disclosure to that kind of recipient (scope ``pcp`` or ``care_team``).
Otherwise:

- an encounter *at* a Part 2 facility is not notified at all: the facility's name alone
  discloses SUD treatment (§ 2.12(e)(3), § 2.13);
- elsewhere, SUD diagnoses and the SUD-ENS program name are SUD information. With
  ``without_consent: redact`` the notice goes without them (``withheld`` lists what was
  removed); with ``omit`` it does not go.

A candidate notice to its own program's team is exempt by design: the team is the
program the county's determination was made for (the minimum necessary for it to act).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace

from notifier.config import NotifyConfig, RecipientConfig
from notifier.model import Content, Diagnosis, Encounter, EventKind, Notice, Patient, PatientId, Practitioner
from schemas.adt_event import AdtEventV1, Identifier, Provider, patient_key
from schemas.enrollment import EnrollmentCandidateV1
from services import part2

NOTICE_NAMESPACE = uuid.UUID("3e0c6f8a-54d1-5b7e-9f0a-2c4d6b8e1a37")  # fixed forever: ids dedupe
MEDI_CAL_AUTHORITY = "MEDI-CAL"


def notice_id(source_event_id: uuid.UUID, recipient_id: str) -> uuid.UUID:
    return uuid.uuid5(NOTICE_NAMESPACE, f"{source_event_id}\x1f{recipient_id}")


def medi_cal_key(member_id: str) -> str:
    return patient_key(MEDI_CAL_AUTHORITY, member_id.strip().upper())


def keys_of(identifiers: Iterable[Identifier], medi_cal_id: str | None, facility: str) -> list[str]:
    keys = [patient_key(i.assigning_authority or facility, i.value) for i in identifiers]
    if medi_cal_id:
        keys.append(medi_cal_key(medi_cal_id))
    return list(dict.fromkeys(keys))


def utc(value: dt.datetime, cfg: NotifyConfig) -> dt.datetime:
    """HL7 times without an offset are local to the site (schemas.adt_event)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=cfg.zone)
    return value.astimezone(dt.UTC)


# --- what each source event says ------------------------------------------------------------


def encounter_event_kind(event: AdtEventV1) -> EventKind | None:
    """HL7 v2.5 chapter 3 trigger events that a care team or PCP acts on."""
    trigger = event.trigger_event.upper()
    patient_class = (event.visit.patient_class or "").upper() if event.visit else ""
    if trigger == "A01":
        return "admit"
    if trigger == "A04" and patient_class in ("E", "I"):
        return "admit"  # an ED (or direct inpatient) registration: most ED visits never get an A01
    if trigger == "A06" and patient_class in ("I", ""):
        return "admit"  # outpatient / ED -> inpatient
    if trigger == "A02":
        return "transfer"
    if trigger == "A03":
        return "discharge"
    return None


def encounter_key(facility: str, visit_number: str | None) -> str | None:
    return f"{facility}|{visit_number}" if visit_number else None


def _patient_from_adt(event: AdtEventV1) -> Patient:
    p = event.patient
    ids = tuple(
        PatientId(i.value, i.assigning_authority or event.sending_facility, i.type_code) for i in p.identifiers
    )
    name = p.name
    return Patient(
        ids=ids,
        medi_cal_id=p.medi_cal_id,
        family=name.family if name else None,
        given=name.given if name else None,
        birth_date=p.birth_date,
        sex=p.sex,
    )


def _practitioner(providers: Iterable[Provider]) -> Practitioner | None:
    for pr in providers:
        if pr.source in ("PD1-4", "ROL"):
            return Practitioner(pr.id, pr.family, pr.given)
    return None


def encounter_content(event: AdtEventV1, kind: EventKind, cfg: NotifyConfig) -> Content:
    v = event.visit
    encounter = Encounter(
        facility=event.sending_facility,
        visit_number=v.visit_number if v else None,
        patient_class=v.patient_class if v else None,
        location=v.location.point_of_care if v and v.location else None,
        hospital_service=v.hospital_service if v else None,
        admit_time=utc(v.admit_time, cfg) if v and v.admit_time else None,
        discharge_time=utc(v.discharge_time, cfg) if v and v.discharge_time else None,
        discharge_disposition=v.discharge_disposition if v else None,
        diagnoses=tuple(Diagnosis(d.code, d.coding_system, d.description) for d in event.diagnoses),
    )
    when = event.event_time or event.message_time or event.received_at
    return Content(
        event=kind,
        occurred_at=utc(when, cfg),
        patient=_patient_from_adt(event),
        encounter=encounter,
        pcp=_practitioner(event.primary_care),
    )


def candidate_content(candidate: EnrollmentCandidateV1) -> Content:
    trigger = candidate.trigger
    encounter = None
    if trigger is not None:
        encounter = Encounter(
            facility=trigger.facility,
            visit_number=trigger.visit_number,
            patient_class=trigger.patient_class,
            admit_time=trigger.admit_time,
            discharge_time=trigger.discharge_time,
        )
    return Content(
        event="candidate",
        occurred_at=candidate.decided_at.astimezone(dt.UTC),
        patient=_patient_from_candidate(candidate),
        person_id=candidate.person_id,
        program=candidate.program,
        candidate_id=candidate.candidate_id,
        encounter=encounter,
        pcp=_practitioner(candidate.primary_care),
        reason=candidate.reason,
    )


def _patient_from_candidate(candidate: EnrollmentCandidateV1) -> Patient:
    ids = tuple(PatientId(i.value, i.assigning_authority, i.type_code) for i in candidate.identifiers)
    return Patient(ids=ids, medi_cal_id=candidate.medi_cal_id)


# --- minimum necessary ----------------------------------------------------------------------


@dataclass(frozen=True)
class Screened:
    """The outcome of `minimum_necessary`: the content to send, or why nothing is sent."""

    content: Content | None
    suppressed_reason: str | None = None


def consent_scope(recipient: RecipientConfig, cfg: NotifyConfig) -> part2.Scope:
    return "pcp" if any(p.id == recipient.id for p in cfg.practices) else "care_team"


def minimum_necessary(
    content: Content, recipient: RecipientConfig, consented_scopes: frozenset[str], cfg: NotifyConfig
) -> Screened:
    # The one Part 2 decision (services.part2), which the web app's person page applies too.
    allowed = part2.disclosure(
        part2_qualified=recipient.part2_qualified, scope=consent_scope(recipient, cfg),
        consented_scopes=consented_scopes,
    )
    if allowed.sud_information:
        return Screened(content)
    encounter = content.encounter
    if encounter is not None and not allowed.facility(part2=encounter.facility in cfg.part2.facilities):
        return Screened(None, "part2_facility_without_consent")
    withheld: list[str] = []
    if encounter is not None and not all(allowed.diagnosis(sud=cfg.is_sud_code(d.code)) for d in encounter.diagnoses):
        withheld.append("sud_diagnoses")
        encounter = replace(encounter, diagnoses=tuple(
            d for d in encounter.diagnoses if allowed.diagnosis(sud=cfg.is_sud_code(d.code))
        ))
    program = content.program
    if not allowed.program(program):
        withheld.append("program")
        program = None
    if not withheld:
        return Screened(content)
    if cfg.part2.without_consent == "omit":
        return Screened(None, "sud_information_without_consent")
    reason = None if "program" in withheld else content.reason
    return Screened(
        replace(content, encounter=encounter, program=program, reason=reason, withheld=tuple(withheld))
    )


# --- notices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A notice to store: sent later (``notice``), or kept as a suppressed record."""

    notice: Notice
    suppressed_reason: str | None = None


def deliver_after(recipient: RecipientConfig, *, urgent: bool, bundle: bool, now: dt.datetime,
                  cfg: NotifyConfig) -> dt.datetime:
    at = now + dt.timedelta(seconds=cfg.bundle_window_s) if bundle else now
    if not urgent and recipient.digest_at is not None:
        at = max(at, next_digest(recipient.digest_at, now, cfg))
    return at


def next_digest(at: dt.time, now: dt.datetime, cfg: NotifyConfig) -> dt.datetime:
    local = now.astimezone(cfg.zone)
    # Compared in UTC: two datetimes of one zone compare by wall clock, fold ignored, so in the
    # hour repeated when clocks fall back a digest already past would look still ahead.
    candidate = dt.datetime.combine(local.date(), at, tzinfo=cfg.zone).astimezone(dt.UTC)
    if candidate <= now:
        candidate = dt.datetime.combine(local.date() + dt.timedelta(days=1), at, tzinfo=cfg.zone).astimezone(dt.UTC)
    return candidate


def _planned(
    source_event_id: uuid.UUID,
    recipient: RecipientConfig,
    content: Content,
    consented: frozenset[str],
    cfg: NotifyConfig,
    now: dt.datetime,
    *,
    urgent: bool,
    screen: bool = True,
) -> Planned:
    screened = minimum_necessary(content, recipient, consented, cfg) if screen else Screened(content)
    enc = content.encounter
    bundles = enc is not None and content.event in ("admit", "discharge", "transfer")
    key = encounter_key(enc.facility, enc.visit_number) if enc is not None and bundles else None
    notice = Notice(
        notice_id=notice_id(source_event_id, recipient.id),
        recipient_id=recipient.id,
        source_event_id=source_event_id,
        content=screened.content or content,
        deliver_after=deliver_after(recipient, urgent=urgent, bundle=key is not None, now=now, cfg=cfg),
        encounter_key=key,
        urgent=urgent,
    )
    return Planned(notice, screened.suppressed_reason)


def candidate_notices(candidate: EnrollmentCandidateV1, cfg: NotifyConfig, now: dt.datetime) -> list[Planned]:
    facility = candidate.trigger.facility if candidate.trigger else None
    team = cfg.care_team_for(candidate.program, facility)
    if team is None:
        return []
    content = candidate_content(candidate)
    return [_planned(candidate.event_id, team, content, frozenset(), cfg, now, urgent=True, screen=False)]


def pcp_practice(
    providers: Iterable[Provider], roster_practice_id: str | None, cfg: NotifyConfig
) -> RecipientConfig | None:
    """The message's PCP where its provider id is a configured practice's, else the roster's."""
    for pr in providers:
        if pr.source in ("PD1-4", "ROL") and pr.id:
            practice = cfg.practice_of_provider(pr.id)
            if practice is not None:
                return practice
    # Only a practice is a PCP: a roster row naming a care team (or a recipient since removed) is no one's PCP.
    return next((p for p in cfg.practices if p.id == roster_practice_id), None) if roster_practice_id else None


def enrolled_notice(
    candidate: EnrollmentCandidateV1,
    enrollment_event_id: uuid.UUID,
    enrolled_at: dt.datetime,
    practice: RecipientConfig,
    consented: frozenset[str],
    cfg: NotifyConfig,
    now: dt.datetime,
) -> Planned:
    content = replace(candidate_content(candidate), event="enrolled", occurred_at=enrolled_at, reason=None)
    return _planned(enrollment_event_id, practice, content, consented, cfg, now, urgent=False)


def encounter_notices(
    event: AdtEventV1,
    watchers: Iterable[tuple[RecipientConfig, str | None, uuid.UUID | None]],
    consented: dict[uuid.UUID | None, frozenset[str]],
    cfg: NotifyConfig,
    now: dt.datetime,
) -> list[Planned]:
    """``watchers``: (recipient, program it watches the person for or None, person id)."""
    kind = encounter_event_kind(event)
    if kind is None or kind not in cfg.encounter_events:
        return []
    base = encounter_content(event, kind, cfg)
    out: list[Planned] = []
    seen: set[str] = set()
    for recipient, program, person_id in watchers:
        if recipient.id in seen:
            continue
        seen.add(recipient.id)
        content = replace(base, program=program, person_id=person_id)
        scopes = consented.get(person_id, frozenset())
        out.append(_planned(event.event_id, recipient, content, scopes, cfg, now, urgent=False))
    return out


# --- bundling -------------------------------------------------------------------------------


def bundle(pending: Content, new: Content) -> Content | None:
    """One notice for an admit and what follows it within the bundle window, or None
    when the two stay separate. Same recipient and encounter are the caller's business."""
    if pending.encounter is None or new.encounter is None:
        return None
    if pending.event in ("admit", "admit_discharge") and new.event == "discharge":
        dx = tuple(dict.fromkeys((*pending.encounter.diagnoses, *new.encounter.diagnoses)))
        encounter = replace(
            new.encounter,
            admit_time=pending.encounter.admit_time or new.encounter.admit_time,
            diagnoses=dx,
        )
        withheld = tuple(dict.fromkeys((*pending.withheld, *new.withheld)))
        return replace(new, event="admit_discharge", encounter=encounter, withheld=withheld)
    if pending.event == "admit" and new.event == "transfer":
        # Still the admission, now in its new bed: the care team needs where, not two messages.
        encounter = replace(pending.encounter, location=new.encounter.location,
                            hospital_service=new.encounter.hospital_service or pending.encounter.hospital_service)
        return replace(pending, encounter=encounter)
    return None
