"""A parsed ADT message → `schemas.adt_event.AdtEventV1` (the ``adt.events`` contract).

Where each value comes from is written in the schema; the HL7 v2 rules applied here:

* Values are unescaped (chapter 2.7) and stripped of surrounding blanks; an empty
  value and the explicit null ``""`` (chapter 2.5.3: "delete the value") become None.
* Times are DTM/TS (chapter 2A): ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``;
  17 digits without a dot are read as milliseconds (a common non-standard form). An
  offset gives a tz-aware datetime; none gives a naive one (local to the sender).
  A value we cannot read becomes None and a warning (table 0357 code 102) at the field.
* PID-3 (CX, chapter 3.4.2): every repetition with an id; the first gives the
  internal patient key ``sha256("<CX-4 or MSH-4>|<CX-1>")[:32]``, safe to log. The
  Medi-Cal id is the repetition of identifier type MA (table 0203) or whose assigning
  authority is one the policy names.
* Primary care: PD1-4 repetitions and ROL segments with role PP (table 0443), whose
  person is ROL-4. Diagnoses: DG1-3 (CE/CWE code^text^system; DG1-4 when the code
  carries no text; DG1-2 coding method for v2.1-2.2 feeds). A DG1 without a code is
  not a diagnosis we can use and is left out. Insurance: IN1 segments that carry data.
  Prior identifiers (merges A34/A40/A47): MRG-1 repetitions of every MRG.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from typing import TYPE_CHECKING, Literal

from adt_listener.ack import Finding
from adt_listener.er7 import Message, Segment
from schemas.adt_event import (
    Address,
    AdtEventV1,
    Diagnosis,
    Identifier,
    Insurance,
    Location,
    Patient,
    PersonName,
    Provider,
    Visit,
    event_id_for,
)

if TYPE_CHECKING:
    from adt_listener.intake import IntakePolicy

__all__ = ["STANDARD_ADT_SEGMENTS", "normalize", "parse_dtm", "patient_key"]

# Segments of the ADT message structures (chapter 3, ADT_A01 ... ADT_A61, v2.8) plus
# SFT/UAC/NTE that chapter 2 allows; anything else is listed in extra_segments.
STANDARD_ADT_SEGMENTS = frozenset(
    "MSH SFT UAC EVN PID PD1 ARV ROL NK1 PV1 PV2 DB1 OBX AL1 IAM IAR DG1 DRG PR1 GT1 IN1 IN2 IN3 "
    "ACC UB1 UB2 PDA MRG NPU NTE CON OH1 OH2 OH3 OH4 GSP GSR GSC".split()
)

_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:([+-])(\d{2})(\d{2}))?")
_DTM17 = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{3})([+-]\d{4})?")


def parse_dtm(text: str) -> dt.datetime | None:
    """HL7 DTM → datetime; None when unreadable (callers decide about findings)."""
    text = text.strip()
    m17 = _DTM17.fullmatch(text)
    if m17 is not None:
        y, mo, d, h, mi, s, ms, off = m17.groups()
        text = f"{y}{mo}{d}{h}{mi}{s}.{ms}{off or ''}"
    m = _DTM.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    if frac is not None and second is None:
        return None  # a fraction needs seconds
    tz: dt.tzinfo | None = None
    if sign is not None:
        offset = dt.timedelta(hours=int(oh), minutes=int(om))
        if offset >= dt.timedelta(hours=24):
            return None
        tz = dt.timezone(-offset if sign == "-" else offset)
    try:
        return dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return None


def _v(seg: Segment | None, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
    """Stripped value, None for empty or the HL7 null ``""``."""
    if seg is None:
        return None
    value = seg.get(n, rep, comp, sub).strip()
    return None if not value or value == '""' else value


def _hd(seg: Segment, n: int, rep: int = 1, comp: int = 1) -> str | None:
    """An HD (namespace id, universal id) held in a component (so its parts are subcomponents)."""
    return _v(seg, n, rep, comp, 1) or _v(seg, n, rep, comp, 2)


def _reps(seg: Segment | None, n: int) -> range:
    return range(1, len(seg.repetitions(n)) + 1) if seg is not None else range(0)


def patient_key(authority: str, value: str) -> str:
    return hashlib.sha256(f"{authority}|{value}".encode()).hexdigest()[:32]


class _Builder:
    def __init__(self, msg: Message, policy: IntakePolicy) -> None:
        self.msg = msg
        self.policy = policy
        self.findings: list[Finding] = []

    def time(self, seg: Segment | None, n: int, comp: int = 1) -> dt.datetime | None:
        raw = _v(seg, n, 1, comp)
        if raw is None or seg is None:
            return None
        value = parse_dtm(raw)
        if value is None:
            location = f"{seg.name}-{n}"
            if not any(f.location == location for f in self.findings):
                self.findings.append(Finding("W", 102, location, f"{location} is not a valid HL7 timestamp"))
        return value

    def identifier(self, seg: Segment, n: int, rep: int) -> Identifier | None:
        value = _v(seg, n, rep, 1)
        if value is None:
            return None
        return Identifier(
            value=value,
            assigning_authority=_v(seg, n, rep, 4, 1) or _v(seg, n, rep, 4, 2),
            type_code=_v(seg, n, rep, 5),
            assigning_facility=_v(seg, n, rep, 6, 1) or _v(seg, n, rep, 6, 2),
        )

    def identifiers(self, seg: Segment | None, n: int) -> list[Identifier]:
        out = []
        for rep in _reps(seg, n):
            assert seg is not None
            ident = self.identifier(seg, n, rep)
            if ident is not None:
                out.append(ident)
        return out

    def name(self, pid: Segment) -> PersonName | None:
        for rep in _reps(pid, 5):
            name = PersonName(family=_v(pid, 5, rep, 1), given=_v(pid, 5, rep, 2), middle=_v(pid, 5, rep, 3))
            if name.family or name.given:
                return name
        return None

    def address(self, pid: Segment) -> Address | None:
        for rep in _reps(pid, 11):
            street = _v(pid, 11, rep, 1, 1)
            if street is None:  # SAD: street name and dwelling number, v2.5+
                parts = [p for p in (_v(pid, 11, rep, 1, 3), _v(pid, 11, rep, 1, 2)) if p]
                street = " ".join(parts) or None
            address = Address(
                street=street,
                city=_v(pid, 11, rep, 3),
                state=_v(pid, 11, rep, 4),
                zip=_v(pid, 11, rep, 5),
                country=_v(pid, 11, rep, 6),
                county_code=_v(pid, 11, rep, 9),
            )
            if any(v is not None for v in address.model_dump().values()):
                return address
        return None

    def birth_date(self, pid: Segment) -> dt.date | None:
        value = self.time(pid, 7)
        return value.date() if value is not None else None

    def location(self, seg: Segment, n: int) -> Location | None:
        loc = Location(
            point_of_care=_v(seg, n, 1, 1),
            room=_v(seg, n, 1, 2),
            bed=_v(seg, n, 1, 3),
            facility=_hd(seg, n, 1, 4),
        )
        return loc if any(v is not None for v in loc.model_dump().values()) else None

    def visit(self) -> Visit | None:
        pv1 = self.msg.segment("PV1")
        if pv1 is None:
            return None
        visit = Visit(
            patient_class=_v(pv1, 2),
            location=self.location(pv1, 3),
            prior_location=self.location(pv1, 6),
            admission_type=_v(pv1, 4),
            hospital_service=_v(pv1, 10),
            financial_class=_v(pv1, 20),
            visit_number=_v(pv1, 19),
            discharge_disposition=_v(pv1, 36),
            admit_time=self.time(pv1, 44),
            discharge_time=self.time(pv1, 45),
        )
        return visit if any(v is not None for v in visit.model_dump().values()) else None

    def diagnoses(self) -> list[Diagnosis]:
        out = []
        for dg1 in self.msg.all("DG1"):
            code = _v(dg1, 3, 1, 1)
            if code is None:
                continue
            out.append(
                Diagnosis(
                    code=code,
                    coding_system=_v(dg1, 3, 1, 3) or _v(dg1, 2),
                    description=_v(dg1, 3, 1, 2) or _v(dg1, 4),
                    diagnosis_type=_v(dg1, 6),
                )
            )
        return out

    def providers(self, seg: Segment, n: int, source: Literal["PD1-4", "ROL"]) -> list[Provider]:
        out = []
        for rep in _reps(seg, n):
            p = Provider(
                id=_v(seg, n, rep, 1), family=_v(seg, n, rep, 2), given=_v(seg, n, rep, 3), source=source
            )
            if p.id or p.family or p.given:
                out.append(p)
        return out

    def primary_care(self) -> list[Provider]:
        out: list[Provider] = []
        for pd1 in self.msg.all("PD1"):
            out += self.providers(pd1, 4, "PD1-4")
        for rol in self.msg.all("ROL"):
            if (_v(rol, 3) or "").upper() == "PP":
                out += self.providers(rol, 4, "ROL")
        return out

    def insurance(self) -> list[Insurance]:
        out = []
        for in1 in self.msg.all("IN1"):
            ins = Insurance(
                plan_id=_v(in1, 2),
                company_id=_v(in1, 3),
                company_name=_v(in1, 4),
                policy_number=_v(in1, 36),
                plan_type=_v(in1, 15),
            )
            if any(v is not None for v in ins.model_dump().values()):
                out.append(ins)
        return out

    def extra_segments(self) -> list[str]:
        seen: dict[str, None] = {}
        for seg in self.msg.segments:
            if seg.name.startswith("Z") or seg.name not in STANDARD_ADT_SEGMENTS:
                seen.setdefault(seg.name, None)
        return list(seen)

    def medi_cal_id(self, identifiers: list[Identifier]) -> str | None:
        authorities = self.policy.medi_cal_authorities
        pid = self.msg.segment("PID")
        for ident, rep in zip(identifiers, _pid3_reps_with_id(pid), strict=True):
            assert pid is not None
            universal = (_v(pid, 3, rep, 4, 2) or "").upper()
            if (
                ident.type_code == "MA"
                or (ident.assigning_authority or "").upper() in authorities
                or universal in authorities
            ):
                return ident.value
        return None


def _pid3_reps_with_id(pid: Segment | None) -> list[int]:
    return [rep for rep in _reps(pid, 3) if _v(pid, 3, rep, 1) is not None]


def sending_facility(msg: Message) -> str:
    """MSH-4.1, or MSH-4.2 (universal id) when only that is sent; '' when neither."""
    msh = msg.segments[0]
    return _v(msh, 4, 1, 1) or _v(msh, 4, 1, 2) or ""


def normalize(
    msg: Message, *, message_id: uuid.UUID, received_at: dt.datetime, policy: IntakePolicy
) -> tuple[AdtEventV1, list[Finding]]:
    """Build the event of an accepted message, plus warnings (code 102) on bad times.

    The caller (intake) has checked that MSH-9/10/11/12 and PID-3 are present.
    """
    b = _Builder(msg, policy)
    msh = msg.segments[0]
    evn = msg.segment("EVN")
    pid = msg.segment("PID")
    facility = sending_facility(msg)
    control_id = msh.get(10).strip()

    identifiers = b.identifiers(pid, 3)
    first = identifiers[0] if identifiers else None
    key = patient_key(first.assigning_authority or facility, first.value) if first else ""
    death = _v(pid, 30)
    patient = Patient(
        patient_key=key,
        identifiers=identifiers,
        medi_cal_id=b.medi_cal_id(identifiers),
        name=b.name(pid) if pid is not None else None,
        birth_date=b.birth_date(pid) if pid is not None else None,
        sex=_v(pid, 8),
        address=b.address(pid) if pid is not None else None,
        death_indicator=True if death == "Y" else False if death == "N" else None,
    )
    message_time = b.time(msh, 7)
    event_time = b.time(evn, 2)
    event = AdtEventV1(
        event_id=event_id_for(facility, control_id),
        message_id=message_id,
        message_type=_v(msh, 9, 1, 1) or "",
        trigger_event=_v(msh, 9, 1, 2) or "",
        message_structure=_v(msh, 9, 1, 3),
        hl7_version=_v(msh, 12) or "",
        processing_id=_v(msh, 11) or "",
        control_id=control_id,
        sending_application=_v(msh, 3, 1, 1) or _v(msh, 3, 1, 2),
        sending_facility=facility,
        message_time=message_time,
        event_time=event_time or message_time,
        event_occurred=b.time(evn, 6),
        received_at=received_at,
        patient=patient,
        visit=b.visit(),
        diagnoses=b.diagnoses(),
        primary_care=b.primary_care(),
        insurance=b.insurance(),
        prior_identifiers=[i for mrg in msg.all("MRG") for i in b.identifiers(mrg, 1)],
        extra_segments=b.extra_segments(),
    )
    return event, b.findings
