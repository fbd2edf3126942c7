"""Synthetic HL7 v2.5.1 ADT traffic, shaped like a Los Angeles County hospital feed.

`synthetic_feed(n, seed=...)` returns ``n`` ER7 messages (segments ended by ``\\r``,
no MLLP framing) for benchmarks and tests. It is a pure function: the same arguments
give the same bytes, there is no I/O and no clock, and every value is made up (names
from short fixed lists, ids built from counters): no PHI.

What makes it look like a real feed:

* Trigger mix of a hospital ADT interface (HL7 v2.5.1 chapter 3): A08 update ~35 %,
  A04 register ~25 %, A03 discharge ~15 %, A01 admit ~12 %, A02 transfer ~6 %,
  A31 person update ~5 %, A11 / A13 cancellations ~2 %.
* Each patient's events are in a plausible order: a visit is opened (A01 inpatient or
  A04 emergency / outpatient) before it is updated (A08), transferred (A02, inpatients
  only) or closed (A03); A11 cancels an open admission, A13 reopens a discharge. When
  the drawn trigger has no visit to act on (the start of the feed), a visit is opened
  instead, so the mix converges to the targets as ``n`` grows.
* PID-3 carries the MRN assigned by the facility (CX.4 = MSH-4, CX.5 = MR) and, for
  about 60 % of patients, a Medi-Cal client index number (CX.4 = MEDI-CAL, CX.5 = MA).
  PID-11 addresses are in LA County (XAD.9 county code 06037, FIPS).
* PD1-4 names a primary care provider for about half the patients; PV1-10 hospital
  service includes PSY; DG1-3 ICD-10-CM codes include the behavioural-health and social
  codes the care-coordination programs look for (F20.9, F10.20, T40.1X1A, Z59.00).
* IN1 is the Medi-Cal managed-care plan for most patients.

Message control ids (MSH-10) are ``S<seed>N<index>``: unique within a feed and across
feeds of different seeds, so a listener that deduplicates on MSH-4 + MSH-10 never takes
a message of one run for a retransmission of another.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

__all__ = ["DEFAULT_FACILITIES", "TRIGGER_WEIGHTS", "Patient", "Visit", "iter_feed", "render", "synthetic_feed"]

DEFAULT_FACILITIES: tuple[str, ...] = ("STMARY", "COUNTYGEN", "HARBOR", "OLIVEVIEW")

# Share of each trigger event in the feed (HL7 table 0003), summing to 1.
TRIGGER_WEIGHTS: dict[str, float] = {
    "A08": 0.35,
    "A04": 0.25,
    "A03": 0.15,
    "A01": 0.12,
    "A02": 0.06,
    "A31": 0.05,
    "A11": 0.01,
    "A13": 0.01,
}

# MSH-9.3 message structure per trigger (HL7 v2.5.1 chapter 3, table 0354).
_STRUCTURE = {
    "A01": "ADT_A01", "A04": "ADT_A01", "A08": "ADT_A01", "A13": "ADT_A01",
    "A02": "ADT_A02", "A03": "ADT_A03", "A11": "ADT_A09", "A31": "ADT_A05",
}

_EPOCH = dt.datetime(2025, 3, 3, 6, 0, 0)  # a Monday morning; fixed so output is deterministic
_TZ = "-0800"
_FEED_ZONE = dt.timezone(dt.timedelta(hours=-8))  # what _TZ says
_STEP_S = 4  # seconds between two messages of the feed's clock, plus up to _JITTER_S
_JITTER_S = 3

_LAST = ("GARCIA", "HERNANDEZ", "LOPEZ", "MARTINEZ", "NGUYEN", "KIM", "SMITH", "JOHNSON", "WILLIAMS",
         "BROWN", "LEE", "PARK", "RAMIREZ", "TORRES", "DAVIS", "JACKSON", "CHEN", "FLORES", "REYES", "WONG")
_FIRST_F = ("MARIA", "ROSA", "JENNIFER", "LINDA", "ANA", "GRACE", "MEI", "ALMA", "PATRICIA", "KEISHA")
_FIRST_M = ("JOSE", "JAMES", "MICHAEL", "DAVID", "LUIS", "JUAN", "ROBERT", "MINH", "ANDRE", "CARLOS")
_STREETS = ("MAIN ST", "FIGUEROA ST", "WILSHIRE BLVD", "VERMONT AVE", "PACIFIC AVE", "ATLANTIC BLVD",
            "SEPULVEDA BLVD", "CENTRAL AVE", "LONG BEACH BLVD", "SUNSET BLVD")
# (city, ZIP): all within Los Angeles County.
_CITIES = (("LOS ANGELES", "90012"), ("LOS ANGELES", "90033"), ("LOS ANGELES", "90011"),
           ("COMPTON", "90220"), ("LONG BEACH", "90813"), ("PASADENA", "91101"), ("TORRANCE", "90502"),
           ("SYLMAR", "91342"), ("POMONA", "91766"), ("LANCASTER", "93534"), ("EL MONTE", "91731"))
_COUNTY = "06037"  # FIPS county code of Los Angeles County (XAD.9)
_PCPS = (("1063456789", "PATEL", "ANJALI"), ("1174567890", "OKAFOR", "CHIDI"),
         ("1285678901", "ROSEN", "DANIEL"), ("1396789012", "VALDEZ", "LUCIA"))
_ATTENDING = (("2001", "HUANG", "LISA"), ("2002", "MORALES", "PEDRO"), ("2003", "BECKER", "ANNE"),
              ("2004", "SINGH", "RAVI"), ("2005", "ADAMS", "TERESA"))
# ICD-10-CM (DG1-3, coding system I10) with the weight of each in the feed.
_DIAGNOSES = (
    ("F20.9", "Schizophrenia, unspecified", 3),
    ("F10.20", "Alcohol dependence, uncomplicated", 3),
    ("T40.1X1A", "Poisoning by heroin, accidental, initial encounter", 2),
    ("Z59.00", "Homelessness, unspecified", 3),
    ("E11.9", "Type 2 diabetes mellitus without complications", 4),
    ("J44.1", "Chronic obstructive pulmonary disease with acute exacerbation", 3),
    ("I10", "Essential (primary) hypertension", 4),
    ("R07.9", "Chest pain, unspecified", 3),
    ("N39.0", "Urinary tract infection, site not specified", 2),
    ("F32.9", "Major depressive disorder, single episode, unspecified", 2),
)
_PSY_CODES = ("F20.9", "F32.9", "F10.20")
# IN1: (plan id, plan name, company id, company name); Medi-Cal managed-care plans first.
_MEDI_CAL_PLANS = (("MCLAC", "L.A. Care Health Plan Medi-Cal"), ("MCHN", "Health Net Medi-Cal"),
                   ("MCFFS", "Medi-Cal Fee-for-Service"))
_OTHER_PLANS = (("MCR", "Medicare Part A"), ("BSCPPO", "Blue Shield PPO"), ("SELF", "Self Pay"))
# Inpatient units and emergency / clinic locations (PL.1 point of care).
_INPATIENT_UNITS = {"MED": ("4W", "5E"), "SUR": ("6N",), "CAR": ("3E",), "PSY": ("7PSY",)}
_ER_UNIT = "ED"
_CLINIC_UNIT = "CLIN"
_MAX_OPEN = 400  # open visits tracked at once: bounds the state of an endless feed


@dataclass(slots=True, eq=False)  # identity: patients are compared by who, not by field
class Patient:
    mrn: str
    facility: str
    last: str
    first: str
    middle: str
    sex: str
    dob: str
    street: str
    city: str
    zip: str
    phone: str
    cin: str | None  # Medi-Cal client index number
    pcp: tuple[str, str, str] | None
    plan: tuple[str, str, str, str]
    visit: Visit | None = None
    last_visit: Visit | None = None  # the most recent discharged visit, for A13


@dataclass(slots=True, eq=False)
class Visit:
    number: str
    patient_class: str  # I / E / O (HL7 table 0004)
    service: str  # PV1-10 hospital service (table 0069)
    location: str  # PV1-3 as ER7
    attending: tuple[str, str, str]
    admitted: dt.datetime
    diagnoses: list[tuple[str, str]] = field(default_factory=list)
    prior_location: str = ""
    discharged: dt.datetime | None = None


def synthetic_feed(
    n: int, *, seed: int = 0, facilities: Sequence[str] = DEFAULT_FACILITIES, epoch: dt.datetime = _EPOCH
) -> list[bytes]:
    """``n`` ADT messages of HL7 v2.5.1 in ER7, deterministic for a given seed and ``epoch``."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    return list(islice(iter_feed(seed=seed, facilities=facilities, epoch=epoch), n))


def iter_feed(
    *, seed: int = 0, facilities: Sequence[str] = DEFAULT_FACILITIES, epoch: dt.datetime = _EPOCH
) -> Iterator[bytes]:
    """The endless feed `synthetic_feed` takes its first ``n`` messages from.

    ``epoch`` is the feed's clock at its start, a naive time in the feed's zone (UTC-8):
    by default a fixed morning of 2025 (history, to any rules file of today); `epoch_ending`
    gives one for a feed dated up to now.
    """
    if not facilities:
        raise ValueError("at least one facility is needed")
    if epoch.tzinfo is not None:
        raise ValueError("epoch is a naive time in the feed's zone (UTC-8)")
    return _Feed(seed, tuple(facilities), epoch).messages()


def epoch_ending(at: dt.datetime, messages: int) -> dt.datetime:
    """The epoch whose first ``messages`` messages are all dated before ``at`` (aware), the
    last of them within a few minutes of it: a feed of today, for a benchmark of live traffic."""
    span = dt.timedelta(seconds=messages * _STEP_S + _JITTER_S + 60)
    return (at - span).astimezone(_FEED_ZONE).replace(tzinfo=None)


class _Feed:
    def __init__(self, seed: int, facilities: tuple[str, ...], epoch: dt.datetime = _EPOCH) -> None:
        self._epoch = epoch
        self._rng = random.Random(seed)
        self._seed = seed
        self._facilities = facilities
        self._patients: list[Patient] = []
        self._open: list[Patient] = []  # patients with an open visit
        self._discharged: list[Patient] = []  # recently discharged, candidates for A13
        self._next_patient = 0
        self._next_visit = 0
        self._triggers = list(TRIGGER_WEIGHTS)
        self._weights = list(TRIGGER_WEIGHTS.values())
        self._dx_codes = [(code, text) for code, text, _w in _DIAGNOSES]
        self._dx_weights = [w for _c, _t, w in _DIAGNOSES]

    def messages(self) -> Iterator[bytes]:
        index = 0
        while True:
            index += 1
            # About one message every four seconds, with jitter: a busy county hospital.
            now = self._epoch + dt.timedelta(seconds=index * _STEP_S + self._rng.randint(0, _JITTER_S))
            trigger = self._rng.choices(self._triggers, self._weights)[0]
            patient, trigger = self._apply(trigger, now)
            yield self._render(trigger, patient, now, f"S{self._seed}N{index}")

    # --- patient state: which trigger can happen to whom ---------------------------------

    def _apply(self, trigger: str, now: dt.datetime) -> tuple[Patient, str]:
        """Pick a patient for ``trigger`` and update the state; fall back to an admit/register."""
        rng = self._rng
        if trigger in ("A08", "A03") and self._open:
            patient = rng.choice(self._open)
            if trigger == "A03":
                self._close(patient, now)
            elif patient.visit is not None and rng.random() < 0.4:
                patient.visit.diagnoses.append(self._diagnosis(patient.visit.service))
            return patient, trigger
        inpatients = [p for p in self._open[-50:] if p.visit is not None and p.visit.patient_class == "I"]
        if trigger == "A02" and inpatients:
            patient = rng.choice(inpatients)
            assert patient.visit is not None
            patient.visit.prior_location = patient.visit.location
            patient.visit.location = self._location(patient.facility, "I", patient.visit.service)
            return patient, trigger
        if trigger == "A11" and inpatients:
            patient = rng.choice(inpatients)
            self._open.remove(patient)
            patient.visit = None
            return patient, trigger
        if trigger == "A13" and self._discharged:
            patient = self._discharged.pop(rng.randrange(len(self._discharged)))
            if patient.visit is None and patient.last_visit is not None:
                patient.visit, patient.last_visit = patient.last_visit, None
                patient.visit.discharged = None
                self._open.append(patient)
                return patient, trigger
        if trigger == "A31" and self._patients:
            patient = rng.choice(self._patients)
            patient.street = f"{rng.randint(100, 19999)} {rng.choice(_STREETS)}"  # moved house
            return patient, trigger
        # A01 / A04, or a trigger with nothing to act on yet: open a visit.
        if trigger not in ("A01", "A04"):
            trigger = "A01" if rng.random() < 0.33 else "A04"
        patient = self._visit_patient()
        patient.visit = self._new_visit(patient, trigger, now)
        self._open.append(patient)
        if len(self._open) > _MAX_OPEN:
            # Opens outnumber discharges in the mix (A08s need open visits); the oldest visits
            # end without a message, as "left without being seen" encounters do in real feeds.
            self._open.pop(0).visit = None
        return patient, trigger

    def _visit_patient(self) -> Patient:
        """A returning patient without an open visit (frequent utilizers), or a new one."""
        rng = self._rng
        if self._patients and rng.random() < 0.3:
            candidate = rng.choice(self._patients)
            if candidate.visit is None:
                return candidate
        return self._new_patient()

    def _close(self, patient: Patient, now: dt.datetime) -> None:
        assert patient.visit is not None
        patient.visit.discharged = now
        patient.last_visit, patient.visit = patient.visit, None
        self._open.remove(patient)
        self._discharged.append(patient)
        if len(self._discharged) > 100:  # A13 concerns recent discharges only
            self._discharged.pop(0)

    def _new_patient(self) -> Patient:
        rng = self._rng
        self._next_patient += 1
        facility = rng.choice(self._facilities)
        sex = rng.choice("FM")
        city, zip_code = rng.choice(_CITIES)
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 80))
        medi_cal = rng.random() < 0.6
        if medi_cal or rng.random() < 0.7:  # most patients of a safety-net hospital are on Medi-Cal
            plan_id, plan_name = rng.choice(_MEDI_CAL_PLANS)
            plan = (plan_id, plan_name, "CADHCS", "California Department of Health Care Services")
        else:
            plan_id, plan_name = rng.choice(_OTHER_PLANS)
            plan = (plan_id, plan_name, plan_id, plan_name)
        patient = Patient(
            mrn=f"{self._seed % 1000:03d}{self._next_patient:07d}",
            facility=facility,
            last=rng.choice(_LAST),
            first=rng.choice(_FIRST_F if sex == "F" else _FIRST_M),
            middle=rng.choice("ABCDEJLMR"),
            sex=sex,
            dob=birth.strftime("%Y%m%d"),
            street=f"{rng.randint(100, 19999)} {rng.choice(_STREETS)}",
            city=city,
            zip=zip_code,
            phone=f"({rng.choice(('213', '323', '310', '562', '626', '818'))}){rng.randint(200, 999)}-"
            f"{rng.randint(0, 9999):04d}",
            # Medi-Cal CIN: 8 digits and a check letter; the 9 prefix keeps it clearly synthetic.
            cin=f"9{rng.randint(0, 9_999_999):07d}{rng.choice('ABCDEFGH')}" if medi_cal else None,
            pcp=rng.choice(_PCPS) if rng.random() < 0.5 else None,
            plan=plan,
        )
        self._patients.append(patient)
        if len(self._patients) > 5000:  # bound memory on endless feeds; old patients stop returning
            self._patients.pop(0)
        return patient

    def _new_visit(self, patient: Patient, trigger: str, now: dt.datetime) -> Visit:
        rng = self._rng
        self._next_visit += 1
        if trigger == "A01":
            patient_class = "I"
            service = rng.choices(("MED", "SUR", "CAR", "PSY"), (5, 2, 2, 2))[0]
        else:
            patient_class = rng.choices(("E", "O"), (3, 1))[0]
            service = "EMR" if patient_class == "E" else rng.choice(("MED", "PSY"))
        visit = Visit(
            number=f"V{self._seed % 1000:03d}{self._next_visit:08d}",
            patient_class=patient_class,
            service=service,
            location=self._location(patient.facility, patient_class, service),
            attending=rng.choice(_ATTENDING),
            admitted=now,
        )
        visit.diagnoses.append(self._diagnosis(service))
        return visit

    def _location(self, facility: str, patient_class: str, service: str) -> str:
        rng = self._rng
        if patient_class == "E":
            unit = _ER_UNIT
        elif patient_class == "O":
            unit = _CLINIC_UNIT
        else:
            unit = rng.choice(_INPATIENT_UNITS.get(service, ("4W",)))
        return f"{unit}^{rng.randint(1, 40):03d}^{rng.choice('AB')}^{facility}"

    def _diagnosis(self, service: str) -> tuple[str, str]:
        if service == "PSY":
            code = self._rng.choice(_PSY_CODES)
            return code, next(text for c, text, _w in _DIAGNOSES if c == code)
        return self._rng.choices(self._dx_codes, self._dx_weights)[0]

    # --- rendering: one ER7 message -------------------------------------------------------

    def _render(self, trigger: str, p: Patient, now: dt.datetime, control_id: str) -> bytes:
        return render(trigger, p, p.last_visit if trigger == "A03" else p.visit, now, control_id)


def _ts(t: dt.datetime) -> str:
    """An HL7 DTM with its offset: a zone-aware time carries its own, a naive one is the feed's -0800."""
    if t.tzinfo is not None:
        return t.strftime("%Y%m%d%H%M%S%z")
    return t.strftime("%Y%m%d%H%M%S") + _TZ


def render(trigger: str, p: Patient, visit: Visit | None, now: dt.datetime, control_id: str) -> bytes:
    """One ER7 message of ``trigger`` about ``p`` and ``visit`` (the discharged visit for A03),
    sent at ``now``. Shared by the synthetic feed and the demo county (`bench.demo_county`)."""
    ts = _ts(now)
    segments = [
        # MSH-3..6 sending app/facility, receiving app/facility; MSH-11 P; MSH-12 2.5.1.
        f"MSH|^~\\&|ADT|{p.facility}|WPC|LACDHS|{ts}||ADT^{trigger}^{_STRUCTURE[trigger]}|"
        f"{control_id}|P|2.5.1|||AL|NE|USA|UNICODE UTF-8",
        f"EVN|{trigger}|{ts}",
        _pid(p),
    ]
    if p.pcp is not None:
        npi, last, first = p.pcp
        segments.append(f"PD1||||{npi}^{last}^{first}^^^^MD^^NPI")
    if trigger == "A31":
        segments.append("PV1|1|N")  # ADT_A05 requires PV1; N = not applicable (table 0004)
    elif trigger == "A11":
        segments.append("PV1|1|I")  # the cancelled admission; its details are not resent
    else:
        assert visit is not None
        segments.append(_pv1(visit))
        if trigger != "A02":
            segments.extend(
                f"DG1|{i}||{code}^{text}^I10||{ts}|{'A' if i == 1 else 'W'}"
                for i, (code, text) in enumerate(visit.diagnoses, start=1)
            )
    if trigger in ("A01", "A04", "A08", "A13", "A31"):
        segments.append(_in1(p))
    return ("\r".join(segments) + "\r").encode()


def _pid(p: Patient) -> str:
    ids = f"{p.mrn}^^^{p.facility}^MR"
    if p.cin is not None:
        ids += f"~{p.cin}^^^MEDI-CAL^MA"
    address = f"{p.street}^^{p.city}^CA^{p.zip}^USA^H^^{_COUNTY}"
    return f"PID|1||{ids}||{p.last}^{p.first}^{p.middle}||{p.dob}|{p.sex}|||{address}||{p.phone}"


def _pv1(v: Visit) -> str:
    fields = [""] * 46  # PV1-0 is the segment name; PV1-45 the last field written
    fields[0] = "PV1"
    fields[1] = "1"
    fields[2] = v.patient_class
    fields[3] = v.location
    fields[4] = "E" if v.patient_class == "E" else "R"  # admission type (table 0007)
    fields[6] = v.prior_location
    npi, last, first = v.attending
    fields[7] = f"{npi}^{last}^{first}^^^^MD"
    fields[10] = v.service
    fields[14] = "7" if v.patient_class == "E" else "1"  # admit source: ER / physician referral
    fields[18] = v.patient_class
    fields[19] = f"{v.number}^^^{v.location.rsplit('^', 1)[-1]}^VN"
    fields[20] = "MC" if v.patient_class != "O" else ""
    fields[44] = _ts(v.admitted)
    if v.discharged is not None:
        fields[36] = "01"  # discharge disposition: home (table 0112)
        fields[45] = _ts(v.discharged)
    return "|".join(fields).rstrip("|")


def _in1(p: Patient) -> str:
    plan_id, plan_name, company_id, company_name = p.plan
    policy = p.cin or f"P{p.mrn}"
    fields = [""] * 37
    fields[0] = "IN1"
    fields[1] = "1"
    fields[2] = f"{plan_id}^{plan_name}^L"
    fields[3] = f"{company_id}^^^{company_id}"
    fields[4] = company_name
    fields[15] = "MC" if company_id == "CADHCS" else "CP"  # plan type
    fields[17] = "SEL"  # insured's relationship to patient: self (table 0063)
    fields[36] = policy
    return "|".join(fields)
