"""The candidate / person page as data: what it shows, computed from the APIs' JSON (no I/O).

Inputs are the answers of three reads, as the page fetches them as the signed-in user:
the enrollment service's ``GET /v1/candidates/{id}`` (the recorded decision, transitions,
outreach log, services) and ``GET /v1/persons/{id}`` (card, whereabouts, identities,
encounters, flags, the viewer's Part 2 qualification, the site's time zone), and the
notifier's ``GET /v1/persons/{id}/notices`` (who was told what, consents, and its Part 2
lists), which may be missing when the notifier does not answer.

42 CFR Part 2 is applied here with `services.part2`, the decision the notifier's
``minimum_necessary`` makes for notices: without the patient's recorded care-team consent a
viewer whose team is no Part 2 program sees no SUD diagnosis, no SUD-ENS program name,
nothing at a Part 2 facility, and no criterion about SUD; the page says what was withheld.
Without the notifier's answer there is no known consent, so the redaction holds.

The decision in plain words (`criteria`): each criterion the enrollment service recorded
(`enrollment_svc.eligibility`: names like ``inpatient_admissions_6m>=3`` or
``any_of/homelessness_12m``, evidence as encounter and flag ids) becomes one sentence with
its evidence named by hospital and date: "3 inpatient admissions in 6 months: Harbor
5 Jul, Olive View 3 Oct, Harbor today", "risk factor: homelessness, Z59.00 at today's
admission", "not yet: 2 of 3 SUD-related ED visits in 12 months".
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from services import part2

__all__ = ["CandidatePage", "Line", "Mark", "build", "criteria", "icd10_dotted"]

Json = Mapping[str, Any]

WITHHELD = "withheld (42 CFR Part 2: needs the patient's consent)"
OPTION = "any_of/"
# What a criterion counts or looks for, in words (singular, plural); eligibility's names.
_WHAT: dict[str, tuple[str, str]] = {
    "inpatient_admissions": ("inpatient admission", "inpatient admissions"),
    "psych_admissions": ("psychiatric admission", "psychiatric admissions"),
    "sud_ed_visits": ("SUD-related ED visit", "SUD-related ED visits"),
    "sud_inpatient_admissions": ("inpatient admission with SUD", "inpatient admissions with SUD"),
    "sobering_visits": ("sobering center visit", "sobering center visits"),
    "residential_sud_admissions": ("residential SUD treatment admission", "residential SUD treatment admissions"),
    "drug_incarcerations": ("incarceration with drug use", "incarcerations with drug use"),
    "homelessness": ("homelessness", ""),
    "acsc_admission": ("an avoidable admission for a chronic condition", ""),
    "acsc": ("a chronic condition care could have managed", ""),
    "sud": ("substance use disorder", ""),
    "active_sud": ("active substance use disorder", ""),
    "smi": ("serious mental illness", ""),
    "mental_health": ("mental health disorder", ""),
    "incarceration": ("incarceration", ""),
    "drug_court_referral": ("drug court referral", ""),
    "foster_care": ("foster care or at-risk youth", ""),
    "overdose": ("overdose", ""),
}
# Value sets whose evidence codes are named ("Z59.00 at ..."), by the criterion's subject.
_DX_SET = {"homelessness": "homelessness", "acsc_admission": "acsc", "acsc": "acsc", "sud": "sud",
           "active_sud": "sud", "smi": "smi", "mental_health": "mental_health", "incarceration": "incarceration",
           "overdose": "overdose"}
_SUD_WORDS = ("sud", "overdose", "sobering", "drug_")  # criteria about SUD: Part 2 information
_SUD_SETS = ("sud", "overdose")
_FIXED = {
    "medi_cal": ("Medi-Cal member", "no Medi-Cal coverage seen"),
    "county_resident": ("lives in the county", "address outside the county"),
    "county_residence_unknown": ("", "residence unknown: the address gives no county or ZIP; confirm at outreach"),
    "birth_date_unknown": ("", "birth date unknown: confirm the age at outreach"),
    "psychiatric_inpatient_trigger": ("admitted to a psychiatric inpatient unit", "not a psychiatric inpatient stay"),
}
_KIND_WORD = {"inpatient": "admission", "psych_inpatient": "psychiatric admission", "ed": "ED visit",
              "sobering": "sobering center visit", "outpatient": "clinic visit"}
_STAYS = frozenset({"inpatient", "psych_inpatient"})
_COUNTED = re.compile(r"^(?P<what>[a-z_]+?)_(?P<months>\d+)m>=(?P<min>\d+)$")
_PRESENT = re.compile(r"^(?P<what>[a-z_]+?)_(?P<months>\d+)m$")


@dataclass(frozen=True)
class Line:
    """One criterion in words. ``met`` None: advisory (recorded, does not block)."""

    met: bool | None
    text: str
    option: bool = False  # one of an "at least one of" list


@dataclass(frozen=True)
class Mark:
    """One encounter on the timeline picture (coordinates in per cent of the width)."""

    x: float
    width: float
    lane: int
    kind: str
    label: str
    title: str


@dataclass(frozen=True)
class Shield:
    """The Part 2 decision for this viewer and person, with the facts to apply it."""

    disclosure: part2.Disclosure
    part2_facilities: frozenset[str]
    sud_prefixes: tuple[str, ...]

    def facility_hidden(self, encounter: Json) -> bool:
        fac = encounter.get("facility") or {}
        is_part2 = bool(fac.get("part2")) or fac.get("id") in self.part2_facilities
        return not self.disclosure.facility(part2=is_part2)

    def code_hidden(self, code: str, encounter: Json | None = None) -> bool:
        sets = (encounter or {}).get("dx_sets") or {}
        sud = part2.is_sud_code(code, self.sud_prefixes) or any(code in sets.get(s, ()) for s in _SUD_SETS)
        return not self.disclosure.diagnosis(sud=sud)


@dataclass(frozen=True)
class CandidatePage:
    candidate_id: str
    person_id: str
    program: str
    status: str
    reason: str
    card: dict[str, Any]
    criteria: list[Line]
    timeline: list[Mark]
    lanes: list[str]
    ticks: list[tuple[float, str]]
    encounters: list[dict[str, Any]]
    withheld_encounters: int
    identities: list[dict[str, Any]]
    links: list[dict[str, Any]]
    pcp: dict[str, Any]
    consents: list[dict[str, Any]]
    notices: list[dict[str, Any]] | None
    outreach: list[dict[str, Any]]
    services: list[dict[str, Any]]
    transitions: list[dict[str, Any]]
    other_candidacies: list[dict[str, Any]]
    part2_applied: bool
    withheld: list[str] = field(default_factory=list)


# --- small formatting helpers ----------------------------------------------------------------


def icd10_dotted(code: str) -> str:
    """ICD-10-CM as people write it: the dot after the category (Z5900 → Z59.00)."""
    c = code.replace(".", "").upper()
    return f"{c[:3]}.{c[3:]}" if len(c) > 3 else c


def _time(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def when(value: Any, zone: ZoneInfo) -> str:
    """A moment in the site's time zone, e.g. ``2 Dec 2026 09:14 PST``; '' when unknown."""
    t = _time(value)
    return "" if t is None else t.astimezone(zone).strftime("%-d %b %Y %H:%M %Z")


def day(value: Any, zone: ZoneInfo, today: dt.date) -> str:
    """A day as the evidence names it: ``today``, ``5 Jul`` this year, ``5 Jul 2025`` before."""
    t = _time(value)
    if t is None:
        return "?"
    d = t.astimezone(zone).date()
    if d == today:
        return "today"
    if d == today - dt.timedelta(days=1):
        return "yesterday"
    return f"{d.day} {d:%b}" if d.year == today.year else f"{d.day} {d:%b %Y}"


# --- the decision in plain words -----------------------------------------------------------


def _short_name(encounter: Json) -> str:
    fac = encounter.get("facility") or {}
    name = str(fac.get("name") or fac.get("id") or "?")
    for tail in (" (example)", " Medical Center", " Hospital", " Center"):
        name = name.replace(tail, "")
    return name


def _evidence(
    ids: Sequence[str], what: str, encounters: Mapping[str, Json], flags: Mapping[str, Json], shield: Shield,
    zone: ZoneInfo, today: dt.date, trigger_id: str | None,
) -> tuple[list[str], int]:
    """Each piece of evidence in words, oldest first, and how many were withheld (Part 2)."""
    dx_set = _DX_SET.get(what)
    found: list[tuple[dt.datetime, str]] = []
    hidden = 0
    for i in ids:
        if i in encounters:
            e = encounters[i]
            if shield.facility_hidden(e):
                hidden += 1
                continue
            start = _time(e.get("start_at")) or dt.datetime.min.replace(tzinfo=dt.UTC)
            on = day(e.get("start_at"), zone, today)
            kind = _KIND_WORD.get(str(e.get("kind")), "visit")
            codes = [c for c in (e.get("dx_sets") or {}).get(dx_set, ()) if not shield.code_hidden(c, e)]
            if codes:
                dotted = ", ".join(icd10_dotted(c) for c in codes)
                place = (f"today's {kind}" if on == "today" and i == trigger_id
                         else f"the {_short_name(e)} {kind} {on}" if on not in ("today", "yesterday")
                         else f"{on}'s {kind} at {_short_name(e)}")
                found.append((start, f"{dotted} at {place}"))
            else:
                found.append((start, f"{_short_name(e)} {on}"))
        elif i in flags:
            f = flags[i]
            start = _time(f.get("effective")) or dt.datetime.min.replace(tzinfo=dt.UTC)
            found.append((start, f"{str(f.get('kind', 'flag')).replace('_', ' ')} reported by {f.get('source')} "
                                 f"{day(f.get('effective'), zone, today)}"))
    found.sort(key=lambda p: p[0])
    return [text for _, text in found], hidden


def criteria(
    decision: Json, encounters: Mapping[str, Json], flags: Mapping[str, Json], shield: Shield, zone: ZoneInfo,
    today: dt.date, trigger_id: str | None = None,
) -> tuple[list[Line], bool]:
    """The recorded decision's criteria in words; and whether Part 2 withheld any of them."""
    lines: list[Line] = []
    withheld = False
    for c in decision.get("criteria", ()):
        name, met = str(c.get("name", "")), bool(c.get("met"))
        option = name.startswith(OPTION)
        bare = name.removeprefix(OPTION)
        if not shield.disclosure.sud_information and any(w in bare for w in _SUD_WORDS):
            withheld = True
            continue
        ids = [str(i) for i in c.get("evidence", ())]
        if bare in _FIXED:
            yes, no = _FIXED[bare]
            advisory = bare.endswith("_unknown")
            lines.append(Line(None if advisory else met, yes if met and yes else no))
            continue
        if bare.startswith("age>="):
            years = bare.removeprefix("age>=")
            lines.append(Line(met, f"aged {years} or older" if met else f"under {years}"))
            continue
        if bare == "participating_facility":
            where = ", ".join(_short_name(encounters[i]) for i in ids if i in encounters) or str(c.get("detail", ""))
            lines.append(Line(met, f"at a participating hospital: {where}" if met
                              else f"not a participating hospital ({c.get('detail', '')})"))
            continue
        if bare == "any_of":
            lines.append(Line(met, "at least one risk factor" if met else "not yet: none of the risk factors"))
            continue
        named, hidden = _evidence(ids, _subject(bare), encounters, flags, shield, zone, today, trigger_id)
        if hidden:
            withheld = True
            named.append(f"{hidden} more {WITHHELD}")
        lines.append(Line(met, _sentence(bare, met, named, len(ids), option), option))
    return lines, withheld


def _subject(name: str) -> str:
    m = _COUNTED.match(name) or _PRESENT.match(name)
    return m.group("what") if m else name


def _months(n: int) -> str:
    return "1 month" if n == 1 else f"{n} months"


def _sentence(name: str, met: bool, named: list[str], found: int, option: bool) -> str:
    counted = _COUNTED.match(name)
    if counted is not None:
        one, many = _WHAT.get(counted["what"], (counted["what"].replace("_", " "),) * 2)
        months, needed = int(counted["months"]), int(counted["min"])
        label = one if found == 1 else many
        if met:
            return f"{found} {label} in {_months(months)}: {', '.join(named)}" if named else f"{found} {label}"
        head = f"not yet: {found} of {needed} {many} in {_months(months)}"
        return f"{head}: {', '.join(named)}" if named else head
    present = _PRESENT.match(name)
    what = present["what"] if present else name
    label = _WHAT.get(what, (what.replace("_", " "), ""))[0]
    prefix = "risk factor: " if option else ""
    if met:
        return f"{prefix}{label}, {', '.join(named)}" if named else f"{prefix}{label}"
    window = f" in {_months(int(present['months']))}" if present else ""
    return f"not found: {label}{window}"


# --- the page ------------------------------------------------------------------------------


def shield_for(person: Json, notices: Json | None) -> Shield:
    consents = (notices or {}).get("consents", ())
    scopes = frozenset(str(c["scope"]) for c in consents if c.get("active"))
    facts = (notices or {}).get("part2") or {}
    return Shield(
        disclosure=part2.disclosure(
            part2_qualified=bool((person.get("viewer") or {}).get("part2_qualified")), scope="care_team",
            consented_scopes=scopes,
        ),
        part2_facilities=frozenset(facts.get("facilities", ())),
        # Without the notifier's list, every F10-F19 code is SUD information (the safe side).
        sud_prefixes=tuple(facts.get("sud_code_prefixes") or [f"F1{n}" for n in range(10)]),
    )


def _card(person: Json, zone: ZoneInfo, today: dt.date, shield: Shield) -> dict[str, Any]:
    name = person.get("name") or {}
    born = person.get("birth_date")
    age = None
    if born:
        b = dt.date.fromisoformat(str(born))
        age = today.year - b.year - ((today.month, today.day) < (b.month, b.day))
    housing = person.get("housing") or {}
    address = person.get("address") or {}
    lines = [] if housing.get("no_fixed_address") else [
        str(address.get("street") or ""),
        " ".join(str(p) for p in (address.get("city"), address.get("state"), address.get("zip")) if p),
    ]
    evidence = [
        f"{', '.join(icd10_dotted(c) for c in h.get('codes', ()))} at {_short_name(h)} "
        f"{day(h.get('start_at'), zone, today)}"
        for h in housing.get("homelessness_diagnoses", ()) if not shield.facility_hidden(h)
    ] + [f"reported by {f.get('source')} {day(f.get('effective'), zone, today)}"
         for f in housing.get("homelessness_flags", ())]
    where = person.get("where")
    where_text = "no visit on file"
    if where:
        if shield.facility_hidden(where):
            where_text = f"at a facility {WITHHELD}"
        else:
            fac = where.get("facility") or {}
            place = ", ".join(p for p in (
                str(fac.get("name") or fac.get("id")),
                f"unit {where['unit']}" if where.get("unit") else "",
                f"room {where['room']}" if where.get("room") else "",
                f"bed {where['bed']}" if where.get("bed") else "",
            ) if p)
            verb = "discharged from" if where.get("discharged") else "at"
            where_text = f"{verb} {place} ({where.get('trigger')}, {when(where.get('at'), zone)})"
    return {
        "name": " ".join(str(p) for p in (name.get("given"), name.get("middle"), name.get("family")) if p) or "unknown",
        "birth_date": born or "unknown",
        "age": age,
        "phone": person.get("phone") or "no phone on file",
        "no_fixed_address": bool(housing.get("no_fixed_address")),
        "address_lines": [ln for ln in lines if ln],
        "homelessness": evidence,
        "where": where_text,
        "medi_cal_id": person.get("medi_cal_id"),
    }


def _timeline(
    encounters: Sequence[Json], shield: Shield, zone: ZoneInfo, now: dt.datetime, months: int = 12
) -> tuple[list[Mark], list[str], list[tuple[float, str]]]:
    """Encounters of the last ``months`` as marks on a line per hospital, and month ticks."""
    start = now - dt.timedelta(days=months * 31)
    span = (now - start).total_seconds()
    lanes: list[str] = []
    marks: list[Mark] = []
    for e in sorted(encounters, key=lambda e: str(e.get("start_at"))):
        begin = _time(e.get("start_at"))
        if begin is None or begin < start or shield.facility_hidden(e):
            continue
        # A stay still open runs to now; an ED or clinic visit without a discharge is a point
        # (hospitals often send no A03 for them), not months of "still there".
        still_in = e.get("status") not in ("discharged", "cancelled") and e.get("kind") in _STAYS
        end = _time(e.get("end_at")) or (now if still_in else begin)
        lane_name = _short_name(e)
        if lane_name not in lanes:
            lanes.append(lane_name)
        x = max(0.0, (begin - start).total_seconds() / span * 100)
        width = max(0.8, (end - begin).total_seconds() / span * 100)
        x = max(0.0, min(x, 100 - width))  # a visit today still shows, ending at the right edge
        width = min(width, 100 - x)
        kind = str(e.get("kind"))
        word = _KIND_WORD.get(kind, "visit")
        title = f"{lane_name}: {word} {when(begin, zone)}" + (f" to {when(end, zone)}" if e.get("end_at") else "")
        marks.append(Mark(round(x, 2), round(width, 2), lanes.index(lane_name), kind, word, title))
    ticks: list[tuple[float, str]] = []
    local = start.astimezone(zone)
    month = dt.datetime(local.year, local.month, 1, tzinfo=zone)
    while month <= now:
        if month >= start:
            ticks.append((round((month - start).total_seconds() / span * 100, 2), month.strftime("%b")))
        month = (month + dt.timedelta(days=32)).replace(day=1)
    return marks, lanes, ticks


def build(candidate: Json, person: Json, notices: Json | None, now: dt.datetime) -> CandidatePage:
    """The page for one candidate of one person, as the viewer may see it (Part 2 applied)."""
    zone = ZoneInfo(str(person.get("timezone") or "America/Los_Angeles"))
    today = now.astimezone(zone).date()
    shield = shield_for(person, notices)
    withheld: list[str] = []
    encounters = {str(e["id"]): e for e in person.get("encounters", ())}
    flags = {str(f["id"]): f for f in person.get("flags", ())}
    decision = candidate.get("decision") or {}
    lines, criteria_withheld = criteria(decision, encounters, flags, shield, zone, today,
                                        str(candidate.get("encounter_id") or ""))
    if criteria_withheld:
        withheld.append("some criteria or their evidence")
    program = str(candidate.get("program"))
    shown_program = program if shield.disclosure.program(program) else "a program " + WITHHELD
    reason = str(decision.get("reason", ""))
    if not shield.disclosure.program(program) or (not shield.disclosure.sud_information and "SUD" in reason):
        reason = ""
        withheld.append("the program's name")
    rows = []
    hidden_encounters = 0
    for e in person.get("encounters", ()):
        if shield.facility_hidden(e):
            hidden_encounters += 1
            continue
        codes = [c for c in e.get("diagnoses", ()) if not shield.code_hidden(c, e)]
        rows.append({
            "facility": (e.get("facility") or {}).get("name"), "kind": _KIND_WORD.get(str(e.get("kind")), "visit"),
            "status": e.get("status"), "start": when(e.get("start_at"), zone), "end": when(e.get("end_at"), zone),
            "diagnoses": [icd10_dotted(c) for c in codes],
            "diagnoses_withheld": len(e.get("diagnoses", ())) - len(codes),
        })
    if hidden_encounters:
        withheld.append(f"{hidden_encounters} encounter(s) at a protected facility")
    if any(r["diagnoses_withheld"] for r in rows):
        withheld.append("some diagnoses")
    marks, lanes, ticks = _timeline(list(person.get("encounters", ())), shield, zone, now)
    notice_rows: list[dict[str, Any]] | None = None
    if notices is not None:
        notice_rows = []
        for n in notices.get("notices", ()):
            if not shield.disclosure.program(n.get("program")) or (
                n.get("facility") and shield.facility_hidden({"facility": {"id": n.get("facility")}})
            ):
                continue
            notice_rows.append({
                "to": n.get("recipient_name"), "what": str(n.get("event_kind", "")).replace("_", " "),
                "when": when(n.get("occurred_at"), zone), "status": n.get("status"),
                "suppressed": n.get("suppressed_reason"), "withheld": n.get("withheld") or [],
                "deliveries": [{"channel": d.get("channel"), "endpoint": d.get("endpoint"), "status": d.get("status"),
                                "attempts": d.get("attempts"), "at": when(d.get("finished_at") or d.get("created_at"),
                                                                          zone)}
                               for d in n.get("deliveries", ())],
            })
    others = [
        {"program": c["program"], "status": c["status"], "id": c["id"], "since": when(c.get("created_at"), zone)}
        for c in person.get("candidates", ())
        if c.get("id") != candidate.get("id") and shield.disclosure.program(c.get("program"))
    ]
    pcp = person.get("primary_care") or {}
    return CandidatePage(
        candidate_id=str(candidate["id"]),
        person_id=str(candidate["person_id"]),
        program=shown_program,
        status=str(candidate.get("status")),
        reason=reason,
        card=_card(person, zone, today, shield),
        criteria=lines,
        timeline=marks,
        lanes=lanes,
        ticks=ticks,
        encounters=rows,
        withheld_encounters=hidden_encounters,
        identities=list(person.get("identities", ())),
        links=[{**ln, "at": when(ln.get("at"), zone)} for ln in person.get("links", ())],
        pcp={
            "providers": [" ".join(str(p[k]) for k in ("given", "family") if p.get(k)) + (
                f" (id {p['id']})" if p.get("id") else "") for p in pcp.get("providers", ())],
            "source": ", ".join(pcp.get("sources", ())) or "no PCP stated by a hospital",
            "stated_at": when(pcp.get("stated_at"), zone),
        },
        consents=[{**c, "granted_at": when(c.get("granted_at"), zone)} for c in (notices or {}).get("consents", ())],
        notices=notice_rows,
        outreach=[{**a, "at": when(a.get("at"), zone)} for a in candidate.get("outreach", ())],
        services=[{**s, "kind": str(s.get("kind", "")).replace("_", " "), "at": when(s.get("at"), zone)}
                  for s in candidate.get("services", ())],
        transitions=[{**t, "at": when(t.get("at"), zone)} for t in candidate.get("transitions", ())],
        other_candidacies=others,
        part2_applied=not shield.disclosure.sud_information,
        withheld=withheld,
    )
