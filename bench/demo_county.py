"""The demo county: a few made-up people whose stories, dated relative to *now*, make every
program and every kind of notice show up within a minute of `wpc up` in demo mode.

Why not the synthetic feed (`bench.synthetic`): its dates are fixed in March 2025, older
than the rules' ``candidate_max_age_hours``, and its people qualify by chance. Here each
story is written to meet (or, for the routine visitors, not to meet) one program of
``deploy/rules/wpc-rules.yaml``, at the facilities that file and
``deploy/notify/demo-notify.yaml`` name:

==========  ==========================================================  ========================
story       history (months back) → today                               what it makes
==========  ==========================================================  ========================
TOC         2 stays at STMARY / HARBOR (COPD, homeless) → admitted       TOC candidate (toc-team);
            at STMARY 2 h ago                                            on the FHIR clinic's
                                                                         panel: admission notice
ISR         6 stays at BAYVIEWPSY (schizophrenia, alcohol dependence)    ISR candidate (isr-team)
            in 12 months → admitted there 3 h ago
SUD-ENS     2 visits to DTSOBERING (a Part 2 program) → an ED visit at   SUD-ENS candidate
            COUNTYGEN this morning with alcohol dependence, then a      (sud-ens-team); the FHIR
            3rd sobering visit an hour ago                               clinic's ED notice has
                                                                         F10.20 redacted, the
                                                                         sobering visit is withheld
routine     ED visits today at HARBOR / OLIVEVIEW, nothing a program     on the e-mail clinic's
            looks for                                                    panel: one digest e-mail
==========  ==========================================================  ========================

`demo_scenario(now, seed)` is pure: the same arguments give the same messages and panels,
no clock, no I/O. Every event is at or before ``now`` (the listener's clock-ahead check
stays quiet), and each person's messages are in the order a hospital would send them.
`traffic(seed, clock)` is the endless version for ``wpc demo-traffic``: the stories again,
with new people, each dated by ``clock()`` when it starts.

Names, ids and addresses are made up (names from short fixed lists, MRNs from the seed and
a counter, Medi-Cal ids starting with 9): no PHI.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from bench.synthetic import Patient, Visit, render

__all__ = ["FHIR_CLINIC", "MAIL_CLINIC", "PROGRAM_STORIES", "Scenario", "Story", "demo_scenario", "traffic"]

FHIR_CLINIC = "demo-clinic"  # deploy/notify/demo-notify.yaml: FHIR, its PCPs' NPI 1234567893
MAIL_CLINIC = "eastside-clinic"  # deploy/notify/demo-notify.yaml: e-mail with a daily digest
CLINIC_NPI = ("1234567893", "OKONKWO", "ADA")  # a PCP of the FHIR clinic (PD1-4)

Kind = Literal["TOC", "ISR", "SUD-ENS", "routine"]
PROGRAM_STORIES: tuple[Kind, ...] = ("TOC", "ISR", "SUD-ENS")

_ZONE_OFFSET = dt.timezone(dt.timedelta(hours=-8), "PST")  # rendered offsets; the listener reads any
_NAMES = (("RIVERA", "ELENA", "F"), ("OKAFOR", "SAMUEL", "M"), ("TRAN", "LINH", "F"), ("BAKER", "DWAYNE", "M"),
          ("SOTO", "MARISOL", "F"), ("YAMADA", "KENJI", "M"), ("ORTEGA", "LUZ", "F"), ("FOSTER", "CALVIN", "M"),
          ("MENDOZA", "IRMA", "F"), ("HOLLOWAY", "REGGIE", "M"))
_STREETS = ("E 5TH ST", "S CENTRAL AVE", "W TEMPLE ST", "N BROADWAY", "E CESAR CHAVEZ AVE")
_CITIES = (("LOS ANGELES", "90013"), ("LOS ANGELES", "90021"), ("COMPTON", "90221"), ("LONG BEACH", "90802"))
_MEDI_CAL = ("MCLAC", "L.A. Care Health Plan Medi-Cal", "CADHCS", "California Department of Health Care Services")
_ATTENDING = ("2101", "NAKAMURA", "JOAN")

_DX = {
    "J44.1": "Chronic obstructive pulmonary disease with acute exacerbation",
    "Z59.00": "Homelessness, unspecified",
    "I50.9": "Heart failure, unspecified",
    "F20.9": "Schizophrenia, unspecified",
    "F10.20": "Alcohol dependence, uncomplicated",
    "R07.9": "Chest pain, unspecified",
    "N39.0": "Urinary tract infection, site not specified",
    "R51.9": "Headache, unspecified",
    "S93.401A": "Sprain of unspecified ligament of right ankle, initial encounter",
}


@dataclass(frozen=True)
class _Stay:
    facility: str
    patient_class: str  # I inpatient, E emergency, O outpatient (sobering center)
    service: str  # PV1-10
    unit: str  # PV1-3.1
    start: dt.timedelta  # before now
    length: dt.timedelta | None  # None: still there
    dx: tuple[str, ...]


@dataclass(frozen=True)
class Story:
    """One person's part of the demo: what is sent, and what it should make."""

    kind: Kind
    medi_cal_id: str
    messages: tuple[bytes, ...]
    panel: str | None  # the practice whose panel holds the person (encounter notices), if any


@dataclass(frozen=True)
class Scenario:
    stories: tuple[Story, ...]

    @property
    def messages(self) -> list[bytes]:
        return [m for s in self.stories for m in s.messages]

    @property
    def panels(self) -> dict[str, list[str]]:
        """Practice id → the Medi-Cal ids on its panel."""
        out: dict[str, list[str]] = {}
        for s in self.stories:
            if s.panel is not None:
                out.setdefault(s.panel, []).append(s.medi_cal_id)
        return out


_DAY = dt.timedelta(days=1)
_HOUR = dt.timedelta(hours=1)


def _stays(kind: Kind, variant: int) -> list[_Stay]:
    if kind == "TOC":
        return [
            _Stay("STMARY", "I", "MED", "4W", 130 * _DAY, 4 * _DAY, ("J44.1", "Z59.00")),
            _Stay("HARBOR", "I", "CAR", "3E", 40 * _DAY, 3 * _DAY, ("I50.9", "Z59.00")),
            _Stay("STMARY", "I", "MED", "5E", 2 * _HOUR, None, ("J44.1", "Z59.00")),
        ]
    if kind == "ISR":
        history = [_Stay("BAYVIEWPSY", "I", "PSY", "7PSY", (330 - 52 * n) * _DAY, 7 * _DAY, ("F20.9", "F10.20"))
                   for n in range(6)]
        return [*history, _Stay("BAYVIEWPSY", "I", "PSY", "7PSY", 3 * _HOUR, None, ("F20.9", "F10.20"))]
    if kind == "SUD-ENS":
        return [
            _Stay("DTSOBERING", "O", "SOB", "SOBER", 200 * _DAY, 14 * _HOUR, ("F10.20",)),
            _Stay("DTSOBERING", "O", "SOB", "SOBER", 60 * _DAY, 12 * _HOUR, ("F10.20",)),
            _Stay("COUNTYGEN", "E", "EMR", "ED", 6 * _HOUR, 3 * _HOUR, ("F10.20", "R07.9")),
            _Stay("DTSOBERING", "O", "SOB", "SOBER", 1 * _HOUR, None, ("F10.20",)),
        ]
    facility = ("HARBOR", "OLIVEVIEW", "COUNTYGEN")[variant % 3]
    dx = (("R07.9",), ("N39.0",), ("R51.9",), ("S93.401A",))[variant % 4]
    return [_Stay(facility, "E", "EMR", "ED", (4 + variant % 3) * _HOUR, 2 * _HOUR, dx)]


class _County:
    """Makes people and renders their stays; counters keep ids unique within a seed."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._people = 0
        self._visits = 0
        self._messages = 0

    def story(self, kind: Kind, now: dt.datetime, panel: str | None, variant: int = 0) -> Story:
        rng = self._rng
        self._people += 1
        last, first, sex = _NAMES[rng.randrange(len(_NAMES))]
        city, zip_code = _CITIES[rng.randrange(len(_CITIES))]
        cin = f"9{rng.randint(0, 9_999_999):07d}{rng.choice('ABCDEFGH')}"
        birth = dt.date(1962, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 35))  # adults
        patient = Patient(
            mrn=f"D{self._seed}P{self._people:04d}", facility="", last=last, first=first, middle="",
            sex=sex, dob=birth.strftime("%Y%m%d"), street=f"{rng.randint(100, 4999)} {rng.choice(_STREETS)}",
            city=city, zip=zip_code, phone=f"(213)555-{rng.randint(0, 9999):04d}", cin=cin,
            pcp=CLINIC_NPI if panel == FHIR_CLINIC else None, plan=_MEDI_CAL,
        )
        local_now = now.astimezone(_ZONE_OFFSET)
        messages: list[tuple[dt.datetime, bytes]] = []
        for stay in _stays(kind, variant):
            messages.extend(self._stay(patient, stay, local_now))
        messages.sort(key=lambda m: m[0])  # in the order the hospitals would send them
        return Story(kind, cin, tuple(m for _, m in messages), panel)

    def _stay(self, patient: Patient, stay: _Stay, now: dt.datetime) -> list[tuple[dt.datetime, bytes]]:
        self._visits += 1
        # The MRN is the facility's own; one person, one MRN per facility (here the same digits).
        patient.facility = stay.facility
        start = now - stay.start
        visit = Visit(
            number=f"DV{self._seed}N{self._visits:05d}", patient_class=stay.patient_class, service=stay.service,
            location=f"{stay.unit}^{self._visits % 40 + 1:03d}^A^{stay.facility}", attending=_ATTENDING,
            admitted=start, diagnoses=[(code, _DX[code]) for code in stay.dx],
        )
        admit = "A01" if stay.patient_class == "I" else "A04"
        out = [(start, render(admit, patient, visit, start, self._control_id()))]
        if stay.length is not None:
            end = start + stay.length
            visit.discharged = end
            out.append((end, render("A03", patient, visit, end, self._control_id())))
        return out

    def _control_id(self) -> str:
        self._messages += 1
        return f"D{self._seed}N{self._messages}"


def demo_scenario(now: dt.datetime, seed: int) -> Scenario:
    """What `wpc up` sends at start in demo mode: one story per program and three routine
    visitors (module docstring), every time relative to ``now`` (zone-aware)."""
    if now.tzinfo is None:
        raise ValueError("now must be zone-aware")
    county = _County(seed)
    stories = [
        county.story("TOC", now, FHIR_CLINIC),
        county.story("ISR", now, None),
        county.story("SUD-ENS", now, FHIR_CLINIC),
        *(county.story("routine", now, MAIL_CLINIC, variant=n) for n in range(3)),
    ]
    return Scenario(tuple(stories))


def traffic(seed: int, clock: Callable[[], dt.datetime]) -> Iterator[bytes]:
    """Endless demo traffic: three routine visitors, then a program's story, in turn (TOC,
    ISR, SUD-ENS), each person new and dated by ``clock()`` when their story starts. Nobody
    is on a panel: the panels are what `demo_scenario` set up."""
    county = _County(seed)
    n = 0
    while True:
        kind: Kind = PROGRAM_STORIES[(n // 4) % 3] if n % 4 == 3 else "routine"
        yield from county.story(kind, clock(), None, variant=n).messages
        n += 1
