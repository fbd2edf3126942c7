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
* Phone: PID-13 (XTN, chapter 2A.89), the first repetition with a number: XTN-1 when
  sent (the formatted number, deprecated since v2.3 but what most feeds fill), else the
  unformatted parts XTN-5/6/7/8. A repetition of equipment type (XTN-3) Internet or X.400
  is an e-mail address, not a phone, and is skipped.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import TYPE_CHECKING, Literal

from adt_listener.ack import Finding
from adt_listener.er7 import Message, Segment
from schemas.adt_event import AdtEventV1, event_id_for, patient_key

if TYPE_CHECKING:
    from adt_listener.intake import IntakePolicy

__all__ = ["STANDARD_ADT_SEGMENTS", "normalize", "parse_dtm", "patient_key", "timestamp_findings"]

# Segments of the ADT message structures (chapter 3, ADT_A01 ... ADT_A61, v2.8) plus
# SFT/UAC/NTE that chapter 2 allows; anything else is listed in extra_segments.
STANDARD_ADT_SEGMENTS = frozenset(
    "MSH SFT UAC EVN PID PD1 ARV ROL NK1 PV1 PV2 DB1 OBX AL1 IAM IAR DG1 DRG PR1 GT1 IN1 IN2 IN3 "
    "ACC UB1 UB2 PDA MRG NPU NTE CON OH1 OH2 OH3 OH4 GSP GSR GSC".split()
)

_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:([+-])(\d{2})(\d{2}))?")
_DTM17 = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{3})([+-]\d{4})?")
_TZ_CACHE: dict[str, dt.tzinfo | None] = {}
_NOT_PHONES = frozenset({"INTERNET", "X.400"})  # XTN-3 equipment types (table 0202) of e-mail addresses


def _offset(sign: str, oh: str, om: str) -> dt.tzinfo | None:
    """The fixed offset ``±HHMM`` (None when it is 24 hours or more: not an offset)."""
    key = sign + oh + om
    if key in _TZ_CACHE:  # a feed uses one or two offsets: build each tzinfo once
        return _TZ_CACHE[key]
    offset = dt.timedelta(hours=int(oh), minutes=int(om))
    tz = None if offset >= dt.timedelta(hours=24) else dt.timezone(-offset if sign == "-" else offset)
    if len(_TZ_CACHE) < 256:
        _TZ_CACHE[key] = tz
    return tz


def _fast_dtm(text: str, body: str) -> dt.datetime | None:
    """``body`` is ``text`` without its ``±ZZZZ`` offset: 8, 12 or 14 ASCII digits."""
    tz: dt.tzinfo | None = None
    if len(body) != len(text):
        tz = _offset(text[-5], text[-4:-2], text[-2:])
        if tz is None:
            return None
    try:
        return dt.datetime(
            int(body[:4]), int(body[4:6]), int(body[6:8]),
            int(body[8:10] or 0), int(body[10:12] or 0), int(body[12:14] or 0), tzinfo=tz,
        )
    except ValueError:
        return None


# Times read, by their text: a message says one time in several fields (MSH-7, EVN-2,
# DG1-5 ...), a patient's next message repeats the admission and the birth date, and a
# busy feed stamps many messages within one second. Values are immutable (datetimes with
# shared tzinfos), so a hit is the very value a parse gives. Bounded; emptied when full.
# A text alone, tied to no one: nothing here is logged or leaves the process.
_DTM_CACHE: dict[str, dt.datetime | None] = {}
_DTM_CACHE_MAX = 4096
_UNSEEN = object()


def parse_dtm(text: str) -> dt.datetime | None:
    """HL7 DTM → datetime; None when unreadable (callers decide about findings)."""
    found = _DTM_CACHE.get(text, _UNSEEN)
    if found is not _UNSEEN:
        return found  # type: ignore[return-value]
    value = _parse_dtm(text)
    if len(_DTM_CACHE) >= _DTM_CACHE_MAX:
        _DTM_CACHE.clear()
    _DTM_CACHE[text] = value
    return value


def _parse_dtm(text: str) -> dt.datetime | None:
    text = text.strip()
    # Most feeds send YYYYMMDD or YYYYMMDDHHMM[SS] with or without an offset: those are
    # read by slicing, the regular expressions below handle every other shape.
    body = text[:-5] if len(text) in (13, 17, 19) and text[-5] in "+-" and text[-4:].isdigit() else text
    if len(body) in (8, 12, 14) and body.isdigit() and body.isascii():
        return _fast_dtm(text, body)
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
        tz = _offset(sign, oh, om)
        if tz is None:
            return None
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
    return None if seg is None else seg.value(n, rep, comp, sub)



# The event is assembled as plain dicts and validated against `AdtEventV1` in ONE call
# at the end: pydantic validates a whole tree in Rust faster than it builds eleven
# nested models one by one, and "does this part carry any value" is a cheap test on a
# dict (no model_dump). Validation stays: the event is checked against its contract.
_Obj = dict[str, object]


def _any(obj: _Obj) -> bool:
    for v in obj.values():
        if v is not None:
            return True
    return False


class _Builder:
    def __init__(self, msg: Message, policy: IntakePolicy) -> None:
        self.msg = msg
        self.policy = policy
        self.findings: list[Finding] = []

    def time(self, seg: Segment | None, n: int, comp: int = 1) -> dt.datetime | None:
        if seg is None:
            return None
        raw = seg.value(n, 1, comp)
        if raw is None:
            return None
        value = parse_dtm(raw)
        if value is None:
            location = f"{seg.name}-{n}"
            if not any(f.location == location for f in self.findings):
                self.findings.append(Finding("W", 102, location, f"{location} is not a valid HL7 timestamp"))
        return value

    @staticmethod
    def identifiers(seg: Segment | None, n: int) -> list[_Obj]:
        """CX repetitions with an id (CX-1); HD parts of CX-4/CX-6: namespace, else universal id."""
        out: list[_Obj] = []
        if seg is None:
            return out
        v = seg.value
        for rep in range(1, seg.repetition_count(n) + 1):
            value = v(n, rep, 1)
            if value is not None:
                out.append({
                    "value": value,
                    "assigning_authority": v(n, rep, 4, 1) or v(n, rep, 4, 2),
                    "type_code": v(n, rep, 5),
                    "assigning_facility": v(n, rep, 6, 1) or v(n, rep, 6, 2),
                })
        return out

    @staticmethod
    def name(pid: Segment) -> _Obj | None:
        v = pid.value
        for rep in range(1, pid.repetition_count(5) + 1):
            family, given = v(5, rep, 1), v(5, rep, 2)
            if family or given:
                return {"family": family, "given": given, "middle": v(5, rep, 3)}
        return None

    @staticmethod
    def address(pid: Segment) -> _Obj | None:
        v = pid.value
        for rep in range(1, pid.repetition_count(11) + 1):
            street = v(11, rep, 1, 1)
            if street is None:  # SAD: street name and dwelling number, v2.5+
                parts = [p for p in (v(11, rep, 1, 3), v(11, rep, 1, 2)) if p]
                street = " ".join(parts) or None
            address: _Obj = {
                "street": street,
                "city": v(11, rep, 3),
                "state": v(11, rep, 4),
                "zip": v(11, rep, 5),
                "country": v(11, rep, 6),
                "county_code": v(11, rep, 9),
            }
            if _any(address):
                return address
        return None

    @staticmethod
    def phone(pid: Segment) -> str | None:
        v = pid.value
        for rep in range(1, pid.repetition_count(13) + 1):
            if (v(13, rep, 3) or "").upper() in _NOT_PHONES:
                continue
            formatted = v(13, rep, 1)
            if formatted is not None and "@" not in formatted:
                return formatted
            country, area, local, ext = v(13, rep, 5), v(13, rep, 6), v(13, rep, 7), v(13, rep, 8)
            if local is None:
                continue
            if len(local) == 7 and local.isdigit():
                local = f"{local[:3]}-{local[3:]}"
            number = f"({area}) {local}" if area else local
            if country:
                number = f"+{country.lstrip('+')} {number}"
            return f"{number} ext. {ext}" if ext else number
        return None

    def birth_date(self, pid: Segment) -> dt.date | None:
        value = self.time(pid, 7)
        return value.date() if value is not None else None

    @staticmethod
    def location(seg: Segment, n: int) -> _Obj | None:
        v = seg.value
        loc: _Obj = {
            "point_of_care": v(n, 1, 1),
            "room": v(n, 1, 2),
            "bed": v(n, 1, 3),
            "facility": v(n, 1, 4, 1) or v(n, 1, 4, 2),  # PL-4 is an HD: namespace, else universal id
        }
        return loc if _any(loc) else None

    def visit(self) -> _Obj | None:
        pv1 = self.msg.segment("PV1")
        if pv1 is None:
            return None
        v = pv1.value
        visit: _Obj = {
            "patient_class": v(2),
            "location": self.location(pv1, 3),
            "prior_location": self.location(pv1, 6),
            "admission_type": v(4),
            "hospital_service": v(10),
            "financial_class": v(20),
            "visit_number": v(19),
            "discharge_disposition": v(36),
            "admit_time": self.time(pv1, 44),
            "discharge_time": self.time(pv1, 45),
        }
        return visit if _any(visit) else None

    def diagnoses(self) -> list[_Obj]:
        out: list[_Obj] = []
        for dg1 in self.msg.all("DG1"):
            v = dg1.value
            code = v(3, 1, 1)
            if code is None:
                continue
            out.append({
                "code": code,
                "coding_system": v(3, 1, 3) or v(2),
                "description": v(3, 1, 2) or v(4),
                "diagnosis_type": v(6),
            })
        return out

    @staticmethod
    def providers(seg: Segment, n: int, source: Literal["PD1-4", "ROL"]) -> list[_Obj]:
        out: list[_Obj] = []
        v = seg.value
        for rep in range(1, seg.repetition_count(n) + 1):
            pid_, family, given = v(n, rep, 1), v(n, rep, 2), v(n, rep, 3)
            if pid_ or family or given:
                out.append({"id": pid_, "family": family, "given": given, "source": source})
        return out

    def primary_care(self) -> list[_Obj]:
        out: list[_Obj] = []
        for pd1 in self.msg.all("PD1"):
            out += self.providers(pd1, 4, "PD1-4")
        for rol in self.msg.all("ROL"):
            if (rol.value(3) or "").upper() == "PP":
                out += self.providers(rol, 4, "ROL")
        return out

    def insurance(self) -> list[_Obj]:
        out: list[_Obj] = []
        for in1 in self.msg.all("IN1"):
            v = in1.value
            ins: _Obj = {
                "plan_id": v(2),
                "company_id": v(3),
                "company_name": v(4),
                "policy_number": v(36),
                "plan_type": v(15),
            }
            if _any(ins):
                out.append(ins)
        return out

    def extra_segments(self) -> list[str]:
        seen: dict[str, None] = {}
        for seg in self.msg.segments:
            if seg.name.startswith("Z") or seg.name not in STANDARD_ADT_SEGMENTS:
                seen.setdefault(seg.name, None)
        return list(seen)

    def medi_cal_id(self, pid: Segment | None, identifiers: list[_Obj]) -> str | None:
        """The first PID-3 id typed MA (table 0203) or assigned by a Medi-Cal authority."""
        if pid is None:
            return None
        authorities = self.policy.medi_cal_authorities
        with_id = [rep for rep in range(1, pid.repetition_count(3) + 1) if pid.value(3, rep, 1) is not None]
        for ident, rep in zip(identifiers, with_id, strict=True):
            universal = (pid.value(3, rep, 4, 2) or "").upper()
            authority = ident["assigning_authority"]
            if (
                ident["type_code"] == "MA"
                or (authority.upper() if isinstance(authority, str) else "") in authorities
                or universal in authorities
            ):
                value = ident["value"]
                assert isinstance(value, str)
                return value
        return None


def sending_facility(msg: Message) -> str:
    """MSH-4.1, or MSH-4.2 (universal id) when only that is sent; '' when neither."""
    msh = msg.segments[0]
    return msh.value(4, 1, 1) or msh.value(4, 1, 2) or ""


def normalize(
    msg: Message, *, message_id: uuid.UUID, received_at: dt.datetime, policy: IntakePolicy, content_digest: bytes
) -> tuple[AdtEventV1, list[Finding]]:
    """Build the event of an accepted message, plus warnings (code 102) on bad times.

    The caller (intake) has checked that MSH-9/10/11/12 and PID-3 are present.
    ``content_digest`` is `adt_listener.digest.content_digest` of the raw message (the
    parsed message no longer has its bytes); it goes into the event id.
    """
    b = _Builder(msg, policy)
    msh = msg.segments[0]
    m = msh.value
    evn = msg.segment("EVN")
    pid = msg.segment("PID")
    facility = sending_facility(msg)
    control_id = msh.get(10).strip()

    identifiers = b.identifiers(pid, 3)
    key = ""
    if identifiers:
        first = identifiers[0]
        authority, value = first["assigning_authority"], first["value"]
        assert isinstance(value, str) and (authority is None or isinstance(authority, str))
        key = patient_key(authority or facility, value)
    death = _v(pid, 30)
    patient: _Obj = {
        "patient_key": key,
        "identifiers": identifiers,
        "medi_cal_id": b.medi_cal_id(pid, identifiers),
        "name": b.name(pid) if pid is not None else None,
        "birth_date": b.birth_date(pid) if pid is not None else None,
        "sex": _v(pid, 8),
        "address": b.address(pid) if pid is not None else None,
        "phone": b.phone(pid) if pid is not None else None,
        "death_indicator": True if death == "Y" else False if death == "N" else None,
    }
    message_time = b.time(msh, 7)
    event_time = b.time(evn, 2)
    event: _Obj = {
        "event_id": event_id_for(facility, control_id, content_digest),
        "message_id": message_id,
        "message_type": m(9, 1, 1) or "",
        "trigger_event": m(9, 1, 2) or "",
        "message_structure": m(9, 1, 3),
        "hl7_version": m(12) or "",
        "processing_id": m(11) or "",
        "control_id": control_id,
        "sending_application": m(3, 1, 1) or m(3, 1, 2),
        "sending_facility": facility,
        "message_time": message_time,
        "event_time": event_time or message_time,
        "event_occurred": b.time(evn, 6),
        "received_at": received_at,
        "patient": patient,
        "visit": b.visit(),
        "diagnoses": b.diagnoses(),
        "primary_care": b.primary_care(),
        "insurance": b.insurance(),
        "prior_identifiers": [i for mrg in msg.all("MRG") for i in b.identifiers(mrg, 1)],
        "extra_segments": b.extra_segments(),
    }
    return AdtEventV1.model_validate(event), b.findings


def timestamp_findings(msg: Message, policy: IntakePolicy) -> list[Finding]:
    """The warnings `normalize` would return, without building the event.

    The same fields in the same order as `normalize` reads them (PID-7 within the
    patient, then MSH-7, EVN-2, EVN-6, then PV1-44/45 within the visit), so the ACK of
    a message decided without its event lists the same ERR segments.
    """
    b = _Builder(msg, policy)
    pid = msg.segment("PID")
    if pid is not None:
        b.time(pid, 7)
    evn = msg.segment("EVN")
    b.time(msg.segments[0], 7)
    b.time(evn, 2)
    b.time(evn, 6)
    pv1 = msg.segment("PV1")
    if pv1 is not None:
        b.time(pv1, 44)
        b.time(pv1, 45)
    return b.findings
