"""The candidate page's view model (webapp/views/candidate.py): the decision in plain words,
the card, the timeline and 42 CFR Part 2 applied with services.part2. Pure: JSON in, data out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from webapp.views import candidate as view

NOW = dt.datetime(2026, 12, 2, 18, 0, tzinfo=dt.UTC)  # 10:00 in Los Angeles
HARBOR = {"id": "HARBOR", "name": "Harbor Medical Center (example)", "part2": False}
OLIVE = {"id": "OLIVEVIEW", "name": "Olive View Medical Center (example)", "part2": False}
SOBER = {"id": "DTSOBERING", "name": "Downtown Sobering Center (example)", "part2": True}


def encounter(eid: str, facility: dict[str, Any], start: str, kind: str = "inpatient", end: str | None = None,
              dx: tuple[str, ...] = (), sets: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"id": eid, "facility": facility, "kind": kind, "status": "admitted" if end is None else "discharged",
            "start_at": start, "end_at": end, "diagnoses": list(dx), "dx_sets": sets or {}, "dx_flags": []}


ENCOUNTERS = [
    encounter("e3", HARBOR, "2026-12-02T08:00:00-08:00", dx=("F1020", "Z5900"),
              sets={"homelessness": ["Z5900"], "sud": ["F1020"]}),
    encounter("e2", OLIVE, "2026-10-03T09:00:00-07:00", end="2026-10-06T09:00:00-07:00"),
    encounter("e1", HARBOR, "2026-07-05T09:00:00-07:00", end="2026-07-08T09:00:00-07:00"),
    encounter("e0", SOBER, "2026-09-01T23:00:00-07:00", kind="sobering", end="2026-09-02T06:00:00-07:00",
              dx=("F1092",), sets={"sud": ["F1092"]}),
]
TOC_DECISION = {
    "reason": "TOC: every criterion met",
    "criteria": [
        {"name": "medi_cal", "met": True, "evidence": [], "detail": ""},
        {"name": "county_residence_unknown", "met": False, "evidence": [], "detail": "advisory"},
        {"name": "age>=18", "met": True, "evidence": [], "detail": ""},
        {"name": "participating_facility", "met": True, "evidence": ["e3"], "detail": "participating"},
        {"name": "inpatient_admissions_6m>=3", "met": True, "evidence": ["e1", "e2", "e3"], "detail": "3 found"},
        {"name": "any_of", "met": True, "evidence": ["e3"], "detail": "met: homelessness_12m, sud_12m"},
        {"name": "any_of/acsc_admission_12m", "met": False, "evidence": [], "detail": "0 found"},
        {"name": "any_of/homelessness_12m", "met": True, "evidence": ["e3"], "detail": "1 found"},
        {"name": "any_of/sud_12m", "met": True, "evidence": ["e3", "e0"], "detail": "2 found"},
    ],
}
NOTICES = {"notices": [], "consents": [], "part2": {"facilities": ["DTSOBERING"], "sud_code_prefixes": ["F10"]}}


def person(qualified: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "person_id": "p1", "timezone": "America/Los_Angeles", "viewer": {"part2_qualified": qualified},
        "name": {"family": "DOE", "given": "ALEX"}, "birth_date": "1980-01-01", "phone": "(213)555-0101",
        "address": {"street": "HOMELESS", "city": "LOS ANGELES"},
        "housing": {"no_fixed_address": True, "homelessness_diagnoses": [
            {"encounter_id": "e3", "facility": HARBOR, "start_at": "2026-12-02T08:00:00-08:00", "codes": ["Z5900"]}],
            "homelessness_flags": []},
        "where": {"facility": HARBOR, "unit": "5E", "room": "512", "bed": "A", "trigger": "A02", "discharged": False,
                  "at": "2026-12-02T09:30:00-08:00"},
        "encounters": ENCOUNTERS, "flags": [], "identities": [], "links": [], "candidates": [],
        "primary_care": {"providers": [{"id": "1234567893", "family": "WELBY", "given": "MARCUS"}],
                         "sources": ["PD1-4"], "stated_at": "2026-12-02T16:00:00Z"},
        **extra,
    }


def candidate(program: str = "TOC", decision: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "c1", "person_id": "p1", "program": program, "status": "pending", "encounter_id": "e3",
            "decision": decision or TOC_DECISION, "transitions": [], "outreach": [], "services": []}


def texts(page: view.CandidatePage) -> list[str]:
    return [line.text for line in page.criteria]


def test_the_decision_in_plain_words_for_a_part2_qualified_viewer() -> None:
    page = view.build(candidate(), person(qualified=True), NOTICES, NOW)
    assert texts(page) == [
        "Medi-Cal member",
        "residence unknown: the address gives no county or ZIP; confirm at outreach",
        "aged 18 or older",
        "at a participating hospital: Harbor",
        "3 inpatient admissions in 6 months: Harbor 5 Jul, Olive View 3 Oct, Harbor today",
        "at least one risk factor",
        "not found: an avoidable admission for a chronic condition in 12 months",
        "risk factor: homelessness, Z59.00 at today's admission",
        "risk factor: substance use disorder, F10.92 at the Downtown Sobering sobering center visit 1 Sep, "
        "F10.20 at today's admission",
    ]
    assert page.criteria[1].met is None  # advisory
    assert page.program == "TOC" and not page.part2_applied and page.withheld == []


def test_not_yet_counts_say_how_many_of_how_many() -> None:
    decision = {"reason": "no", "criteria": [
        {"name": "any_of/sud_ed_visits_12m>=3", "met": False, "evidence": ["e1", "e2"], "detail": "2 found, 3 needed"},
    ]}
    page = view.build(candidate("SUD-ENS", decision), person(qualified=True), NOTICES, NOW)
    assert texts(page) == ["not yet: 2 of 3 SUD-related ED visits in 12 months: Harbor 5 Jul, Olive View 3 Oct"]


def test_without_consent_part2_hides_sud_criteria_codes_and_part2_facilities() -> None:
    page = view.build(candidate(), person(qualified=False), NOTICES, NOW)
    assert page.part2_applied
    assert not any("substance" in t or "F10" in t for t in texts(page))
    assert "risk factor: homelessness, Z59.00 at today's admission" in texts(page)
    assert [r["facility"] for r in page.encounters] == [HARBOR["name"], OLIVE["name"], HARBOR["name"]]
    assert page.encounters[0]["diagnoses"] == ["Z59.00"] and page.encounters[0]["diagnoses_withheld"] == 1
    assert page.withheld_encounters == 1
    assert all(m.label != "sobering center visit" for m in page.timeline)
    assert "some diagnoses" in page.withheld and any("protected facility" in w for w in page.withheld)


def test_a_recorded_care_team_consent_lifts_it_and_a_pcp_consent_does_not() -> None:
    consent = {"scope": "care_team", "active": True, "granted_at": "2026-11-30T10:00:00Z"}
    with_consent = {**NOTICES, "consents": [consent]}
    page = view.build(candidate(), person(qualified=False), with_consent, NOW)
    assert not page.part2_applied and any("F10.20" in t for t in texts(page)) and page.withheld_encounters == 0
    pcp_only = {**NOTICES, "consents": [{**consent, "scope": "pcp"}]}
    assert view.build(candidate(), person(qualified=False), pcp_only, NOW).part2_applied
    revoked = {**NOTICES, "consents": [{**consent, "active": False}]}
    assert view.build(candidate(), person(qualified=False), revoked, NOW).part2_applied


def test_the_sud_ens_program_name_is_withheld_from_an_unqualified_viewer() -> None:
    decision = {"reason": "SUD-ENS: every criterion met", "criteria": []}
    page = view.build(candidate("SUD-ENS", decision), person(qualified=False), NOTICES, NOW)
    assert "SUD" not in page.program and page.reason == "" and "the program's name" in page.withheld
    # Without the notifier's answer there is no known consent, and F10-F19 count as SUD.
    page = view.build(candidate(), person(qualified=False), None, NOW)
    assert page.part2_applied and page.notices is None and page.encounters[0]["diagnoses"] == ["Z59.00"]


def test_the_card_says_who_and_where() -> None:
    card = view.build(candidate(), person(qualified=True), NOTICES, NOW).card
    assert card["name"] == "ALEX DOE" and card["age"] == 46 and card["phone"] == "(213)555-0101"
    assert card["no_fixed_address"] and card["address_lines"] == []
    assert card["homelessness"] == ["Z59.00 at Harbor today"]
    assert card["where"] == "at Harbor Medical Center (example), unit 5E, room 512, bed A (A02, 2 Dec 2026 09:30 PST)"


def test_where_now_at_a_part2_facility_is_withheld() -> None:
    where = {"facility": SOBER, "unit": "1", "trigger": "A04", "discharged": False, "at": "2026-12-02T09:30:00Z"}
    card = view.build(candidate(), person(qualified=False, where=where), NOTICES, NOW).card
    assert "Sobering" not in card["where"] and "withheld" in card["where"]


def test_timeline_marks_lie_in_the_last_year_in_order() -> None:
    page = view.build(candidate(), person(qualified=True), NOTICES, NOW)
    assert page.lanes == ["Harbor", "Downtown Sobering", "Olive View"]
    xs = [m.x for m in page.timeline]
    assert xs == sorted(xs) and all(0 <= m.x <= 100 and m.x + m.width <= 100.01 for m in page.timeline)
    assert page.timeline[-1].x + page.timeline[-1].width > 99.9  # today's admission, at the right end
    assert [label for _, label in page.ticks][-1] == "Dec"


@pytest.mark.parametrize(("code", "dotted"), [("Z5900", "Z59.00"), ("F10.20", "F10.20"), ("I10", "I10")])
def test_icd10_dotted(code: str, dotted: str) -> None:
    assert view.icd10_dotted(code) == dotted


def test_a_one_month_window_is_said_in_the_singular() -> None:
    decision = {"reason": "x", "criteria": [{"name": "any_of/incarceration_1m", "met": False, "evidence": []}]}
    page = view.build(candidate("TOC", decision), person(qualified=True), NOTICES, NOW)
    assert texts(page) == ["not found: incarceration in 1 month"]


def test_an_open_ed_visit_is_a_point_and_an_open_stay_runs_to_now() -> None:
    open_ed = encounter("x1", HARBOR, "2026-08-01T09:00:00-07:00", kind="ed")
    open_stay = encounter("x2", OLIVE, "2026-11-30T09:00:00-08:00")
    page = view.build(candidate(), person(qualified=True, encounters=[open_ed, open_stay]), NOTICES, NOW)
    ed, stay = page.timeline
    assert ed.width < 1 and stay.x + stay.width > 99.9
