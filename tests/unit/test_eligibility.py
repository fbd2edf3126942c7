"""eligibility: every criterion at, below and above its threshold, at its window edges; currency,
non-duplication, priority, evidence. Pure: no database, no broker, no clock.

The rules are the county pilot's example file (`deploy/rules/wpc-rules.yaml`), so these tests
also say what that file means. Unless a test says otherwise the site zone is UTC, so window
edges read plainly; `test_windows_are_local_calendar_months` covers Los Angeles time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from adt_listener.digest import content_digest
from adt_listener.er7 import Message
from adt_listener.intake import IntakePolicy
from adt_listener.normalize import normalize
from bench.synthetic import synthetic_feed
from enrollment_svc.eligibility import (
    ADVISORY,
    county_resident,
    evaluate,
    flag_trigger,
    is_blocking,
    is_medi_cal,
    months_before,
    trigger_for,
)
from enrollment_svc.model import (
    Criterion,
    Decision,
    EncounterFacts,
    EncounterKind,
    EncounterStatus,
    Evaluation,
    Flag,
    FlagKind,
    PersonHistory,
    Trigger,
)
from enrollment_svc.rules import Rules
from schemas.adt_event import Address, AdtEventV1, Identifier, Insurance, Patient, Visit

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "rules" / "wpc-rules.yaml"
UTC = dt.UTC
SEC = dt.timedelta(seconds=1)
# The trigger time of most tests: 31 August, so that 6 months back is 28 February (clamped).
AT = dt.datetime(2025, 8, 31, 18, 0, tzinfo=UTC)
NOW = AT + dt.timedelta(hours=1)


def make_rules(**changes: Any) -> Rules:
    """The example rules with the site zone UTC and ``changes`` merged in (dotted keys)."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["site"]["timezone"] = "UTC"
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return Rules.model_validate(data)


RULES = make_rules()


# --- builders -------------------------------------------------------------------------------


def enc(
    id: str,
    kind: EncounterKind,
    start: dt.datetime,
    *dx: str,
    status: EncounterStatus = "discharged",
    end: dt.datetime | None = None,
    facility: str = "STMARY",
) -> EncounterFacts:
    if end is None and status == "discharged":
        end = start + dt.timedelta(hours=4)
    return EncounterFacts(
        id=id,
        facility=facility,
        visit_number="V" + id,
        kind=kind,
        status=status,
        start=start,
        end=end,
        dx_flags=frozenset(dx),
    )


def flag(
    id: str, kind: FlagKind, effective: dt.datetime, until: dt.datetime | None = None, detail: str | None = None
) -> Flag:
    return Flag(id=id, kind=kind, source="partner", effective=effective, until=until, detail=detail)


def person(
    encounters: tuple[EncounterFacts, ...] | list[EncounterFacts] = (),
    flags: tuple[Flag, ...] | list[Flag] = (),
    **kw: Any,
) -> PersonHistory:
    base: dict[str, Any] = {
        "person_id": "p-1",
        "birth_date": dt.date(1980, 5, 17),
        "medi_cal": True,
        "county_resident": True,
    }
    base.update(kw)
    return PersonHistory(encounters=tuple(encounters), flags=tuple(flags), **base)


def admitted(kind: EncounterKind = "inpatient", *dx: str, facility: str = "STMARY", id: str = "cur") -> EncounterFacts:
    """The current admission, open, starting at AT."""
    return enc(id, kind, AT, *dx, status="active", facility=facility)


def admission(e: EncounterFacts) -> Trigger:
    return Trigger(kind="admission", at=e.start, encounter=e)


def days_ago(n: float) -> dt.datetime:
    return AT - dt.timedelta(days=n)


def decision(ev: Evaluation, program: str) -> Decision:
    found = [d for d in ev.decisions if d.program == program]
    assert found, f"no {program} decision in {[d.program for d in ev.decisions]}"
    return found[0]


def criterion(d: Decision, name: str) -> Criterion:
    found = [c for c in d.criteria if c.name == name]
    assert found, f"no criterion {name} in {[c.name for c in d.criteria]}"
    return found[0]


def run(history: PersonHistory, trigger: Trigger, rules: Rules = RULES, now: dt.datetime = NOW) -> Evaluation:
    return evaluate(history, trigger, rules, now)


# --- months_before --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "n", "expected"),
    [
        (dt.datetime(2025, 8, 31, 18, tzinfo=UTC), 6, dt.datetime(2025, 2, 28, 18, tzinfo=UTC)),
        (dt.datetime(2024, 8, 31, 18, tzinfo=UTC), 6, dt.datetime(2024, 2, 29, 18, tzinfo=UTC)),
        (dt.datetime(2025, 3, 31, 0, 0, 1, tzinfo=UTC), 1, dt.datetime(2025, 2, 28, 0, 0, 1, tzinfo=UTC)),
        (dt.datetime(2025, 1, 15, 9, 30, tzinfo=UTC), 1, dt.datetime(2024, 12, 15, 9, 30, tzinfo=UTC)),
        (dt.datetime(2025, 1, 15, 9, 30, tzinfo=UTC), 12, dt.datetime(2024, 1, 15, 9, 30, tzinfo=UTC)),
        (dt.datetime(2025, 1, 15, 9, 30, tzinfo=UTC), 0, dt.datetime(2025, 1, 15, 9, 30, tzinfo=UTC)),
        (dt.datetime(2024, 2, 29, tzinfo=UTC), 24, dt.datetime(2022, 2, 28, tzinfo=UTC)),
        (dt.datetime(2025, 5, 31, tzinfo=UTC), 120, dt.datetime(2015, 5, 31, tzinfo=UTC)),
    ],
)
def test_months_before(t: dt.datetime, n: int, expected: dt.datetime) -> None:
    assert months_before(t, n) == expected


@given(
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(min_value=0, max_value=240),
)
def test_months_before_bounds(t: dt.datetime, n: int) -> None:
    back = months_before(t, n)
    assert t - dt.timedelta(days=31 * n) <= back <= t
    assert back.time() == t.time() and back.tzinfo is t.tzinfo
    assert (t.year * 12 + t.month) - (back.year * 12 + back.month) == n
    assert back.day == t.day or back.day < t.day  # clamped only down


# --- TOC ------------------------------------------------------------------------------------


def toc_history(n_admissions: int, *extra: EncounterFacts, **kw: Any) -> tuple[PersonHistory, Trigger]:
    """``n_admissions`` inpatient admissions in the last 6 months, the current (with an ACSC) included."""
    current = admitted("inpatient", "acsc")
    prior = [enc(f"a{i}", "inpatient", days_ago(10 * (i + 1))) for i in range(n_admissions - 1)]
    return person([*prior, *extra, current], **kw), admission(current)


@pytest.mark.parametrize(("n", "met"), [(2, False), (3, True), (4, True)])
def test_toc_inpatient_admissions_threshold(n: int, met: bool) -> None:
    history, trigger = toc_history(n)
    ev = run(history, trigger)
    c = criterion(decision(ev, "TOC"), "inpatient_admissions_6m>=3")
    assert c.met is met
    assert set(c.evidence) == {e.id for e in history.encounters}
    assert c.detail == f"{n} found, 3 needed"
    assert decision(ev, "TOC").eligible is met
    assert (ev.proposed == "TOC") is met


def test_toc_psychiatric_admissions_count_as_inpatient() -> None:
    current = admitted("inpatient", "acsc")
    history = person([enc("p1", "psych_inpatient", days_ago(30)), enc("p2", "psych_inpatient", days_ago(60)), current])
    c = criterion(decision(run(history, admission(current)), "TOC"), "inpatient_admissions_6m>=3")
    assert c.met and set(c.evidence) == {"p1", "p2", "cur"}


def test_toc_window_edge_exactly_six_months_included_one_second_earlier_excluded() -> None:
    edge = months_before(AT, 6)
    assert edge == dt.datetime(2025, 2, 28, 18, 0, tzinfo=UTC)
    current = admitted("inpatient", "acsc")
    base = [enc("a1", "inpatient", days_ago(30)), current]
    on_edge = run(person([*base, enc("edge", "inpatient", edge)]), admission(current))
    assert criterion(decision(on_edge, "TOC"), "inpatient_admissions_6m>=3").met
    before = run(person([*base, enc("edge", "inpatient", edge - SEC)]), admission(current))
    c = criterion(decision(before, "TOC"), "inpatient_admissions_6m>=3")
    assert not c.met and set(c.evidence) == {"a1", "cur"}


def test_windows_are_local_calendar_months() -> None:
    # 1 March 2025 05:00 UTC is 28 February 21:00 in Los Angeles: six local months back is
    # 28 August 2024 21:00 PDT (04:00 UTC on the 29th), not 1 September as UTC would say.
    rules = make_rules(**{"site.timezone": "America/Los_Angeles"})
    at = dt.datetime(2025, 3, 1, 5, 0, tzinfo=UTC)
    edge = dt.datetime(2024, 8, 29, 4, 0, tzinfo=UTC)
    current = enc("cur", "inpatient", at, "acsc", status="active")
    base = [enc("a1", "inpatient", at - dt.timedelta(days=20)), current]
    ev = run(person([*base, enc("old", "inpatient", edge)]), admission(current), rules, at)
    assert criterion(decision(ev, "TOC"), "inpatient_admissions_6m>=3").met
    ev = run(person([*base, enc("old", "inpatient", edge - SEC)]), admission(current), rules, at)
    assert not criterion(decision(ev, "TOC"), "inpatient_admissions_6m>=3").met


def test_encounters_after_the_trigger_do_not_count() -> None:
    history, trigger = toc_history(2, enc("late", "inpatient", AT + SEC))
    c = criterion(decision(run(history, trigger), "TOC"), "inpatient_admissions_6m>=3")
    assert not c.met and "late" not in c.evidence


@pytest.mark.parametrize("status", ["cancelled", "preadmit"])
def test_cancelled_and_preadmitted_encounters_never_count(status: EncounterStatus) -> None:
    ghost = enc("ghost", "inpatient", days_ago(5), "homelessness", "sud", status=status)
    current = admitted("inpatient")
    history = person([enc("a1", "inpatient", days_ago(30)), ghost, current])
    toc = decision(run(history, admission(current)), "TOC")
    assert not criterion(toc, "inpatient_admissions_6m>=3").met
    assert not criterion(toc, "any_of").met
    assert all("ghost" not in c.evidence for c in toc.criteria)


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (enc("x", "ed", days_ago(100), "homelessness"), "any_of/homelessness_12m"),
        (enc("x", "outpatient", days_ago(300), "sud"), "any_of/sud_12m"),
        (enc("x", "ed", days_ago(2), "mental_health"), "any_of/mental_health_12m"),
        (enc("x", "inpatient", days_ago(200), "acsc"), "any_of/acsc_admission_12m"),
        (enc("x", "ed", days_ago(2), "incarceration"), "any_of/incarceration_1m"),
    ],
)
def test_toc_each_option_alone_makes_eligible(extra: EncounterFacts, option: str) -> None:
    current = admitted("inpatient")
    history = person([enc("a1", "inpatient", days_ago(20)), enc("a2", "inpatient", days_ago(40)), extra, current])
    ev = run(history, admission(current))
    toc = decision(ev, "TOC")
    met = [c.name for c in toc.criteria if c.name.startswith("any_of/") and c.met]
    assert met == [option]
    assert criterion(toc, option).evidence == ("x",)
    assert criterion(toc, "any_of").evidence == ("x",)
    assert ev.proposed == "TOC"


def test_toc_no_option_means_not_eligible() -> None:
    history, _ = toc_history(3)
    current = dataclasses.replace(history.encounters[-1], dx_flags=frozenset())
    history = dataclasses.replace(history, encounters=(*history.encounters[:-1], current))
    ev = run(history, admission(current))
    toc = decision(ev, "TOC")
    assert not toc.eligible and not criterion(toc, "any_of").met
    assert criterion(toc, "any_of").detail == "none of 5 met"
    assert ev.proposed is None
    assert ev.reason.startswith("no program qualifies: TOC lacks any_of")


def test_toc_acsc_counts_only_on_an_admission() -> None:
    current = admitted("inpatient")
    history = person(
        [
            enc("a1", "inpatient", days_ago(20)),
            enc("a2", "inpatient", days_ago(40)),
            enc("ed", "ed", days_ago(3), "acsc"),
            current,
        ]
    )
    toc = decision(run(history, admission(current)), "TOC")
    assert not criterion(toc, "any_of/acsc_admission_12m").met


def test_toc_dx_lookback_edge() -> None:
    current = admitted("inpatient")
    base = [enc("a1", "inpatient", days_ago(20)), enc("a2", "inpatient", days_ago(40)), current]
    edge = months_before(AT, 12)
    on = decision(run(person([*base, enc("h", "ed", edge, "homelessness")]), admission(current)), "TOC")
    off = decision(run(person([*base, enc("h", "ed", edge - SEC, "homelessness")]), admission(current)), "TOC")
    assert on.eligible and not off.eligible


@pytest.mark.parametrize(
    ("kind", "option"),
    [("homelessness", "any_of/homelessness_12m"), ("sud", "any_of/sud_12m"), ("smi", "any_of/mental_health_12m")],
)
def test_toc_partner_flags_count(kind: FlagKind, option: str) -> None:
    history, _ = toc_history(3)
    current = dataclasses.replace(history.encounters[-1], dx_flags=frozenset())
    history = dataclasses.replace(
        history, encounters=(*history.encounters[:-1], current), flags=(flag("f", kind, days_ago(700)),)
    )
    toc = decision(run(history, admission(current)), "TOC")
    assert criterion(toc, option).met and criterion(toc, option).evidence == ("f",)
    assert toc.eligible


@pytest.mark.parametrize(
    ("effective", "until", "met"),
    [
        (months_before(AT, 1), None, True),  # exactly a month back: included
        (months_before(AT, 1) - SEC, None, False),  # one second earlier, no release date: a point event
        (days_ago(400), months_before(AT, 1), True),  # released exactly a month back
        (days_ago(400), months_before(AT, 1) - SEC, False),
        (days_ago(3), AT + dt.timedelta(days=30), True),  # in custody at the trigger
        (AT + SEC, None, False),  # after the trigger
    ],
)
def test_toc_incarceration_within_the_last_month(effective: dt.datetime, until: dt.datetime | None, met: bool) -> None:
    history, _ = toc_history(3)
    current = dataclasses.replace(history.encounters[-1], dx_flags=frozenset())
    history = dataclasses.replace(
        history, encounters=(*history.encounters[:-1], current), flags=(flag("j", "incarceration", effective, until),)
    )
    toc = decision(run(history, admission(current)), "TOC")
    assert criterion(toc, "any_of/incarceration_1m").met is met
    assert toc.eligible is met


@pytest.mark.parametrize(
    ("facility", "detail"),
    [
        ("WESTSIDE", "facility not participating"),
        ("BAYVIEWPSY", "facility kind psychiatric"),
        ("NOWHERE", "facility not in the registry"),
    ],
)
def test_toc_needs_a_participating_general_acute_hospital(facility: str, detail: str) -> None:
    history, _ = toc_history(3)
    current = dataclasses.replace(history.encounters[-1], facility=facility)
    history = dataclasses.replace(history, encounters=(*history.encounters[:-1], current))
    ev = run(history, admission(current))
    c = criterion(decision(ev, "TOC"), "participating_facility")
    assert not c.met and c.detail == detail and c.evidence == ()
    assert ev.proposed is None


def test_toc_participating_facility_evidence_is_the_admission() -> None:
    history, trigger = toc_history(3)
    c = criterion(decision(run(history, trigger), "TOC"), "participating_facility")
    assert c.met and c.evidence == ("cur",)


# --- common criteria ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "met"),
    [
        (dt.date(2007, 8, 31), True),  # 18 on the trigger day
        (dt.date(2007, 9, 1), False),  # 18 tomorrow
        (dt.date(2007, 8, 30), True),
    ],
)
def test_toc_minimum_age_at_the_trigger(birth: dt.date, met: bool) -> None:
    history, trigger = toc_history(3, birth_date=birth)
    ev = run(history, trigger)
    assert criterion(decision(ev, "TOC"), "age>=18").met is met
    assert (ev.proposed == "TOC") is met


def test_age_is_taken_on_the_local_date() -> None:
    rules = make_rules(**{"site.timezone": "America/Los_Angeles"})
    at = dt.datetime(2025, 9, 1, 3, 0, tzinfo=UTC)  # still 31 August in Los Angeles
    current = enc("cur", "inpatient", at, "acsc", status="active")
    prior = [enc("a1", "inpatient", at - dt.timedelta(days=9)), enc("a2", "inpatient", at - dt.timedelta(days=19))]
    history = person([*prior, current], birth_date=dt.date(2007, 9, 1))
    assert not criterion(decision(run(history, admission(current), rules, at), "TOC"), "age>=18").met


def test_unknown_birth_date_is_advisory_unless_required() -> None:
    history, trigger = toc_history(3, birth_date=None)
    ev = run(history, trigger)
    c = criterion(decision(ev, "TOC"), "birth_date_unknown")
    assert not c.met and not is_blocking(c) and c.name in ADVISORY
    assert ev.proposed == "TOC"
    strict = run(history, trigger, make_rules(require_known_birth_date=True))
    assert not criterion(decision(strict, "TOC"), "age>=18").met
    assert strict.proposed != "TOC"


def test_unknown_residence_is_advisory_unless_required() -> None:
    history, trigger = toc_history(3, county_resident=None)
    ev = run(history, trigger)
    c = criterion(decision(ev, "TOC"), "county_residence_unknown")
    assert not c.met and not is_blocking(c)
    assert ev.proposed == "TOC"
    strict = run(history, trigger, make_rules(require_known_residence=True))
    assert not criterion(decision(strict, "TOC"), "county_resident").met
    assert strict.proposed is None


@pytest.mark.parametrize("field", ["medi_cal", "county_resident"])
def test_not_medi_cal_or_not_resident_blocks_every_program(field: str) -> None:
    history, trigger = toc_history(3, **{field: False})
    ev = run(history, trigger)
    assert all(not d.eligible and not criterion(d, field).met for d in ev.decisions)
    assert ev.proposed is None


# --- ISR ------------------------------------------------------------------------------------


def isr_history(n_psych: int, *dx: str, flags: tuple[Flag, ...] = (), **kw: Any) -> tuple[PersonHistory, Trigger]:
    current = admitted("psych_inpatient", *dx, facility="BAYVIEWPSY")
    prior = [enc(f"p{i}", "psych_inpatient", days_ago(30 * (i + 1)), facility="BAYVIEWPSY") for i in range(n_psych - 1)]
    return person([*prior, current], flags, **kw), admission(current)


@pytest.mark.parametrize(("n", "met"), [(5, False), (6, True), (7, True)])
def test_isr_psych_admissions_threshold(n: int, met: bool) -> None:
    history, trigger = isr_history(n, "smi", "sud")
    ev = run(history, trigger)
    isr = decision(ev, "ISR")
    c = criterion(isr, "psych_admissions_12m>=6")
    assert c.met is met and len(c.evidence) == n
    assert isr.eligible is met
    assert (ev.proposed == "ISR") is met


def test_isr_window_edge() -> None:
    current = admitted("psych_inpatient", "smi", "sud")
    prior = [enc(f"p{i}", "psych_inpatient", days_ago(20 * (i + 1))) for i in range(4)]
    edge = months_before(AT, 12)
    on = run(person([*prior, enc("e", "psych_inpatient", edge), current]), admission(current))
    off = run(person([*prior, enc("e", "psych_inpatient", edge - SEC), current]), admission(current))
    assert criterion(decision(on, "ISR"), "psych_admissions_12m>=6").met
    assert not criterion(decision(off, "ISR"), "psych_admissions_12m>=6").met


def test_isr_medical_admissions_do_not_count() -> None:
    history, trigger = isr_history(5, "smi", "sud")
    history = dataclasses.replace(history, encounters=(*history.encounters, enc("m", "inpatient", days_ago(3))))
    assert not criterion(decision(run(history, trigger), "ISR"), "psych_admissions_12m>=6").met


@pytest.mark.parametrize(
    ("dx", "flags", "eligible"),
    [
        (("smi", "sud"), (), True),
        (("smi",), (), False),
        (("sud",), (), False),
        ((), (flag("s", "smi", days_ago(900)), flag("u", "sud", days_ago(10))), True),
        (("smi",), (flag("u", "sud", days_ago(800), until=days_ago(700)),), True),  # ended within 24 months
        (("smi",), (flag("u", "sud", days_ago(800), until=months_before(AT, 24) - SEC),), False),
    ],
)
def test_isr_needs_smi_and_sud(dx: tuple[str, ...], flags: tuple[Flag, ...], eligible: bool) -> None:
    history, trigger = isr_history(6, *dx, flags=flags)
    assert decision(run(history, trigger), "ISR").eligible is eligible


def test_isr_dx_on_an_earlier_encounter_within_24_months() -> None:
    history, trigger = isr_history(6, "smi")
    edge = months_before(AT, 24)
    on = dataclasses.replace(history, encounters=(*history.encounters, enc("d", "ed", edge, "sud")))
    off = dataclasses.replace(history, encounters=(*history.encounters, enc("d", "ed", edge - SEC, "sud")))
    c = criterion(decision(run(on, trigger), "ISR"), "sud_24m")
    assert c.met and c.evidence == ("d",)
    assert not criterion(decision(run(off, trigger), "ISR"), "sud_24m").met


def test_isr_only_for_psychiatric_triggers() -> None:
    history, trigger = toc_history(3)
    assert [d.program for d in run(history, trigger).decisions] == ["TOC", "SUD-ENS"]
    visit = enc("v", "ed", AT, "sud", status="active")
    assert [d.program for d in run(person([visit]), Trigger(kind="visit", at=AT, encounter=visit)).decisions] == [
        "SUD-ENS"
    ]


# --- SUD-ENS --------------------------------------------------------------------------------


def sud_eval(*extra: EncounterFacts, flags: tuple[Flag, ...] = (), **kw: Any) -> Decision:
    """SUD-ENS on an ED visit with a SUD diagnosis at AT, plus ``extra`` history."""
    visit = enc("v", "ed", AT, "sud", status="active")
    history = person([*extra, visit], flags, **kw)
    return decision(run(history, Trigger(kind="visit", at=AT, encounter=visit)), "SUD-ENS")


def options_met(d: Decision) -> list[str]:
    return [c.name for c in d.criteria if c.name.startswith("any_of/") and c.met]


@pytest.mark.parametrize(("n_before", "met"), [(1, False), (2, True), (3, True)])
def test_sud_ed_visits_threshold(n_before: int, met: bool) -> None:
    # The current visit counts: 1 + n_before.
    extra = [enc(f"e{i}", "ed", days_ago(30 * (i + 1)), "sud") for i in range(n_before)]
    d = sud_eval(*extra)
    c = criterion(d, "any_of/sud_ed_visits_12m>=3")
    assert c.met is met and set(c.evidence) == {"v", *(e.id for e in extra)}
    assert d.eligible is met


def test_an_overdose_ed_visit_is_sud_related() -> None:
    d = sud_eval(enc("o1", "ed", days_ago(10), "overdose"), enc("o2", "ed", days_ago(20), "sud"))
    assert set(criterion(d, "any_of/sud_ed_visits_12m>=3").evidence) == {"v", "o1", "o2"}


def test_sud_ed_visits_without_a_sud_diagnosis_do_not_count() -> None:
    d = sud_eval(enc("e1", "ed", days_ago(10), "acsc"), enc("e2", "ed", days_ago(20)))
    assert not criterion(d, "any_of/sud_ed_visits_12m>=3").met


@pytest.mark.parametrize(("n", "met"), [(1, False), (2, True), (3, True)])
def test_sud_inpatient_admissions_threshold(n: int, met: bool) -> None:
    extra = [enc(f"i{i}", "inpatient" if i % 2 else "psych_inpatient", days_ago(40 * (i + 1)), "sud") for i in range(n)]
    c = criterion(sud_eval(*extra, enc("nosud", "inpatient", days_ago(5))), "any_of/sud_inpatient_admissions_12m>=2")
    assert c.met is met and set(c.evidence) == {e.id for e in extra}


@pytest.mark.parametrize(("n", "met"), [(2, False), (3, True), (4, True)])
def test_sobering_visits_threshold(n: int, met: bool) -> None:
    extra = [enc(f"s{i}", "sobering", days_ago(30 * (i + 1)), facility="DTSOBERING") for i in range(n)]
    c = criterion(sud_eval(*extra), "any_of/sobering_visits_12m>=3")
    assert c.met is met and len(c.evidence) == n


def test_sobering_window_edge() -> None:
    edge = months_before(AT, 12)
    two = [enc("s1", "sobering", days_ago(10)), enc("s2", "sobering", days_ago(20))]
    assert criterion(sud_eval(*two, enc("s3", "sobering", edge)), "any_of/sobering_visits_12m>=3").met
    assert not criterion(sud_eval(*two, enc("s3", "sobering", edge - SEC)), "any_of/sobering_visits_12m>=3").met


@pytest.mark.parametrize(("n", "met"), [(2, False), (3, True), (4, True)])
def test_residential_sud_admissions_more_than_two(n: int, met: bool) -> None:
    flags = tuple(flag(f"r{i}", "residential_sud_admission", days_ago(50 * (i + 1))) for i in range(n))
    d = sud_eval(flags=flags)
    c = criterion(d, "any_of/residential_sud_admissions_12m>=3")
    assert c.met is met and set(c.evidence) == {f.id for f in flags}


@pytest.mark.parametrize(("n", "met"), [(1, False), (2, True)])
def test_drug_incarcerations(n: int, met: bool) -> None:
    drug = tuple(flag(f"j{i}", "incarceration", days_ago(365 * (i + 1)), detail="drug_use") for i in range(n))
    other = (flag("x", "incarceration", days_ago(30)), flag("y", "incarceration", days_ago(60), detail="theft"))
    c = criterion(sud_eval(flags=drug + other), "any_of/drug_incarcerations_120m>=2")
    assert c.met is met and set(c.evidence) == {f.id for f in drug}


@pytest.mark.parametrize(
    ("kind", "option"),
    [
        ("foster_care", "any_of/foster_care_12m"),
        ("drug_court_referral", "any_of/drug_court_referral_12m"),
        ("homelessness", "any_of/homelessness_12m"),
        ("overdose", "any_of/overdose_24m"),
    ],
)
def test_partner_flag_options(kind: FlagKind, option: str) -> None:
    d = sud_eval(flags=(flag("f", kind, days_ago(30)),))
    assert options_met(d) == [option]
    assert criterion(d, option).evidence == ("f",)
    assert d.eligible


def test_drug_court_referral_window() -> None:
    edge = months_before(AT, 12)
    assert sud_eval(flags=(flag("f", "drug_court_referral", edge),)).eligible
    assert not sud_eval(flags=(flag("f", "drug_court_referral", edge - SEC),)).eligible


def test_foster_care_still_open_counts_ended_long_ago_does_not() -> None:
    assert sud_eval(flags=(flag("f", "foster_care", days_ago(3000)),)).eligible
    ended = flag("f", "foster_care", days_ago(3000), until=months_before(AT, 12) - SEC)
    assert not sud_eval(flags=(ended,)).eligible


def test_overdose_within_two_years() -> None:
    edge = months_before(AT, 24)
    on = sud_eval(enc("o", "ed", edge, "overdose"))
    assert options_met(on) == ["any_of/overdose_24m"] and criterion(on, "any_of/overdose_24m").evidence == ("o",)
    assert not sud_eval(enc("o", "ed", edge - SEC, "overdose")).eligible


def test_homelessness_dx_counts() -> None:
    d = sud_eval(enc("h", "outpatient", days_ago(200), "homelessness"))
    assert options_met(d) == ["any_of/homelessness_12m"]


def test_sud_ens_needs_active_sud() -> None:
    visit = enc("v", "ed", AT, status="active")
    flags = (flag("f", "foster_care", days_ago(30)),)
    ev = run(person([visit], flags), Trigger(kind="visit", at=AT, encounter=visit))
    d = decision(ev, "SUD-ENS")
    assert criterion(d, "any_of").met and not criterion(d, "active_sud_12m").met and not d.eligible
    ev = run(person([visit], (*flags, flag("s", "sud", days_ago(200)))), Trigger(kind="visit", at=AT, encounter=visit))
    assert decision(ev, "SUD-ENS").eligible


def test_active_sud_window_edge() -> None:
    flags = (flag("f", "drug_court_referral", days_ago(30)),)
    visit = enc("v", "ed", AT, status="active")
    trigger = Trigger(kind="visit", at=AT, encounter=visit)
    edge = months_before(AT, 12)
    on = run(person([enc("s", "ed", edge, "sud"), visit], flags), trigger)
    off = run(person([enc("s", "ed", edge - SEC, "sud"), visit], flags), trigger)
    assert criterion(decision(on, "SUD-ENS"), "active_sud_12m").evidence == ("s",)
    assert not decision(off, "SUD-ENS").eligible


@pytest.mark.parametrize("age_years", [12, 15, 17])
def test_sud_ens_includes_youth(age_years: int) -> None:
    born = dt.date(AT.year - age_years, 1, 1)
    visit = enc("v", "ed", AT, "sud", status="active")
    ev = run(person([visit], (flag("f", "foster_care", days_ago(30)),), birth_date=born), Trigger("visit", AT, visit))
    assert criterion(decision(ev, "SUD-ENS"), "age>=0").met
    assert ev.proposed == "SUD-ENS"


def test_youth_is_not_proposed_for_toc() -> None:
    history, trigger = toc_history(3, birth_date=dt.date(2010, 1, 1))
    history = dataclasses.replace(history, flags=(flag("f", "foster_care", days_ago(30)), flag("s", "sud", AT)))
    ev = run(history, trigger)
    assert not decision(ev, "TOC").eligible and ev.proposed == "SUD-ENS"


# --- proposal: priority, currency, non-duplication ----------------------------------------------


def all_three() -> tuple[PersonHistory, Trigger]:
    """Eligible for ISR, TOC and SUD-ENS at once: 6 psychiatric admissions at a participating hospital."""
    current = admitted("psych_inpatient", "smi", "sud", "mental_health")
    prior = [enc(f"p{i}", "psych_inpatient", days_ago(20 * (i + 1)), "sud") for i in range(5)]
    return person([*prior, current]), admission(current)


def test_priority_when_several_programs_are_met() -> None:
    history, trigger = all_three()
    ev = run(history, trigger)
    assert [d.program for d in ev.decisions] == ["ISR", "TOC", "SUD-ENS"]
    assert all(d.eligible for d in ev.decisions)
    assert ev.proposed == "ISR"
    assert ev.reason == "ISR: every criterion met; also eligible for TOC, SUD-ENS, ISR comes first by priority"
    other = make_rules(priority=["SUD-ENS", "TOC", "ISR"])
    assert run(history, trigger, other).proposed == "SUD-ENS"


def test_proposed_evidence_is_exactly_the_met_criteria_evidence() -> None:
    history, trigger = all_three()
    ev = run(history, trigger)
    isr = decision(ev, "ISR")
    expected = {i for c in isr.criteria if c.met for i in c.evidence}
    assert set(ev.evidence) == expected == {e.id for e in history.encounters}
    assert len(ev.evidence) == len(set(ev.evidence))


def test_evidence_never_includes_unmet_options() -> None:
    history, trigger = toc_history(3, enc("ed", "ed", days_ago(3), "acsc"))  # an ACSC ED visit: not an admission
    ev = run(history, trigger)
    assert ev.proposed == "TOC"
    assert "ed" not in ev.evidence
    assert set(ev.evidence) == {"a0", "a1", "cur"}


@pytest.mark.parametrize(
    ("ended_hours_ago", "current"),
    [(72, True), (72 + 1 / 3600, False), (1, True)],
)
def test_currency_of_a_discharge(ended_hours_ago: float, current: bool) -> None:
    history, _ = toc_history(3)
    end = AT + dt.timedelta(days=4)
    cur = dataclasses.replace(history.encounters[-1], status="discharged", end=end)
    history = dataclasses.replace(history, encounters=(*history.encounters[:-1], cur))
    ev = run(history, Trigger(kind="discharge", at=end, encounter=cur), now=end + dt.timedelta(hours=ended_hours_ago))
    assert decision(ev, "TOC").eligible  # decisions are still computed
    assert (ev.proposed == "TOC") is current
    if not current:
        assert ev.reason == (
            "eligible for TOC, but the trigger is more than 72 h old: only current events make candidates"
        )


def test_currency_of_a_backfilled_admission() -> None:
    history, trigger = toc_history(3)
    assert run(history, trigger, now=AT + dt.timedelta(hours=72)).proposed == "TOC"
    late = run(history, trigger, now=AT + dt.timedelta(hours=72) + SEC)
    assert late.proposed is None and decision(late, "TOC").eligible


def test_admission_trigger_whose_encounter_ended_long_ago_is_not_current() -> None:
    history, _ = toc_history(3)
    cur = dataclasses.replace(history.encounters[-1], status="discharged", end=AT + dt.timedelta(hours=1))
    history = dataclasses.replace(history, encounters=(*history.encounters[:-1], cur))
    ev = run(history, admission(cur), now=AT + dt.timedelta(hours=74))
    assert ev.proposed is None  # 73 h since the discharge


def test_no_duplication_active_program() -> None:
    history, trigger = all_three()
    history = dataclasses.replace(history, active_program="SUD-ENS")
    ev = run(history, trigger)
    assert ev.proposed is None and len(ev.decisions) == 3
    assert ev.reason == (
        "eligible for ISR, TOC, SUD-ENS, but an active SUD-ENS candidacy or enrollment exists (no duplication)"
    )
    assert ev.evidence == ()


@pytest.mark.parametrize(
    ("effective", "until", "blocks"),
    [
        (days_ago(100), None, True),
        (days_ago(100), NOW + dt.timedelta(days=1), True),
        (days_ago(100), NOW, False),  # ended: no longer enrolled
        (days_ago(100), days_ago(1), False),
        (NOW + SEC, None, False),  # starts later
    ],
)
def test_no_duplication_other_county_program(effective: dt.datetime, until: dt.datetime | None, blocks: bool) -> None:
    history, trigger = toc_history(3)
    other = flag("o", "other_program_enrollment", effective, until, detail="Re-entry")
    ev = run(dataclasses.replace(history, flags=(other,)), trigger)
    assert decision(ev, "TOC").eligible
    assert (ev.proposed is None) is blocks
    if blocks:
        assert ev.reason.endswith("enrolled in another county care-coordination program (no duplication)")
        assert "Re-entry" not in ev.reason


def test_cancelled_trigger_encounter_proposes_nothing() -> None:
    history, _ = toc_history(3)
    cur = dataclasses.replace(history.encounters[-1], status="cancelled")
    ev = run(dataclasses.replace(history, encounters=(*history.encounters[:-1], cur)), admission(cur))
    assert ev.proposed is None and "cancelled" in ev.reason


def test_trigger_encounter_counts_even_if_missing_from_history() -> None:
    history, trigger = toc_history(3)
    history = dataclasses.replace(history, encounters=history.encounters[:-1])
    assert run(history, trigger).proposed == "TOC"


def test_rule_version_recorded() -> None:
    history, trigger = toc_history(3)
    assert run(history, trigger).rule_version == RULES.rule_version


def test_flag_trigger_evaluates_sud_ens_only() -> None:
    received = AT
    fc = flag("fc", "foster_care", dt.datetime(2024, 1, 1, tzinfo=UTC))
    history = person([enc("s", "ed", days_ago(100), "sud")], birth_date=dt.date(2010, 2, 2))
    ev = run(history, flag_trigger(fc, received))
    assert [d.program for d in ev.decisions] == ["SUD-ENS"]
    assert ev.proposed == "SUD-ENS" and set(ev.evidence) == {"s", "fc"}


def test_reason_and_details_carry_no_phi() -> None:
    history, trigger = toc_history(3, birth_date=dt.date(1970, 3, 4))
    for h in (history, dataclasses.replace(history, medi_cal=False), dataclasses.replace(history, birth_date=None)):
        ev = run(h, trigger)
        texts = [ev.reason, *(c.detail for d in ev.decisions for c in d.criteria)]
        for text in texts:
            assert "1970" not in text and "p-1" not in text and "STMARY" not in text


# --- order independence -----------------------------------------------------------------------


KINDS: list[EncounterKind] = ["ed", "inpatient", "psych_inpatient", "sobering", "outpatient", "other"]
STATUSES: list[EncounterStatus] = ["active", "discharged", "cancelled", "preadmit"]
DX = ["smi", "sud", "overdose", "acsc", "mental_health", "homelessness", "incarceration"]
FLAG_KINDS: list[FlagKind] = [
    "homelessness",
    "foster_care",
    "drug_court_referral",
    "residential_sud_admission",
    "incarceration",
    "overdose",
    "sud",
    "smi",
]


@st.composite
def histories(draw: st.DrawFn) -> tuple[PersonHistory, Trigger]:
    n = draw(st.integers(0, 14))
    encounters = [
        enc(
            f"e{i}",
            draw(st.sampled_from(KINDS)),
            AT - dt.timedelta(days=draw(st.integers(0, 800))),
            *draw(st.sets(st.sampled_from(DX), max_size=3)),
            status=draw(st.sampled_from(STATUSES)),
            facility=draw(st.sampled_from(["STMARY", "WESTSIDE", "BAYVIEWPSY"])),
        )
        for i in range(n)
    ]
    flags = [
        flag(
            f"f{i}",
            draw(st.sampled_from(FLAG_KINDS)),
            AT - dt.timedelta(days=draw(st.integers(0, 1500))),
            detail=draw(st.sampled_from([None, "drug_use"])),
        )
        for i in range(draw(st.integers(0, 6)))
    ]
    current = admitted(draw(st.sampled_from(["inpatient", "psych_inpatient"])), *draw(st.sets(st.sampled_from(DX))))
    return person([*encounters, current], flags), admission(current)


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_evaluation_is_independent_of_history_order(case: tuple[PersonHistory, Trigger], rnd: Any) -> None:
    history, trigger = case
    encounters, flags = list(history.encounters), list(history.flags)
    rnd.shuffle(encounters)
    rnd.shuffle(flags)
    shuffled = dataclasses.replace(history, encounters=tuple(encounters), flags=tuple(flags))
    assert run(shuffled, trigger) == run(history, trigger)


@settings(max_examples=150, deadline=None)
@given(histories())
def test_invariants(case: tuple[PersonHistory, Trigger]) -> None:
    history, trigger = case
    ev = run(history, trigger)
    known = {e.id for e in history.encounters} | {f.id for f in history.flags}
    counted = {e.id for e in history.encounters if e.status in ("active", "discharged")} | {f.id for f in history.flags}
    for d in ev.decisions:
        assert d.eligible == all(c.met for c in d.criteria if is_blocking(c))
        for c in d.criteria:
            assert set(c.evidence) <= counted <= known  # never a cancelled or pre-admitted encounter
    if ev.proposed is not None:
        assert decision(ev, ev.proposed).eligible
        assert ev.proposed == next(
            p for p in RULES.priority if any(d.program == p and d.eligible for d in ev.decisions)
        )


# --- triggers -------------------------------------------------------------------------------


OPEN_IP = enc("e", "inpatient", AT, status="active")
OPEN_ED = enc("e", "ed", AT, status="active")
GONE_IP = enc("e", "inpatient", AT, status="discharged", end=AT + dt.timedelta(days=3))
PRE = enc("e", "inpatient", AT, status="preadmit")
CANCELLED = enc("e", "inpatient", AT, status="cancelled")
LATER = AT + dt.timedelta(days=2)


@pytest.mark.parametrize(
    ("event", "encounter", "kind", "at"),
    [
        ("A01", OPEN_IP, "admission", AT),
        ("A06", OPEN_IP, "admission", AT),
        ("A04", OPEN_IP, "admission", AT),
        ("A05", OPEN_IP, "admission", AT),
        ("A05", PRE, None, None),
        ("A04", OPEN_ED, "visit", AT),
        ("A04", enc("e", "sobering", AT, status="active"), "visit", AT),
        ("A04", enc("e", "outpatient", AT, status="active"), "visit", AT),
        ("A03", GONE_IP, "discharge", GONE_IP.end),
        ("A03", enc("e", "ed", AT, status="discharged", end=LATER), "discharge", LATER),
        ("A08", OPEN_IP, "admission", LATER),
        ("A02", OPEN_IP, "admission", LATER),
        ("A07", OPEN_ED, "visit", LATER),
        ("A08", OPEN_ED, "visit", LATER),
        ("A08", GONE_IP, "discharge", GONE_IP.end),
        ("A08", PRE, None, None),
        ("A11", OPEN_IP, None, None),
        ("A12", OPEN_IP, None, None),
        ("A13", OPEN_IP, None, None),
        ("A01", CANCELLED, None, None),
        ("A03", CANCELLED, None, None),
        ("A31", OPEN_IP, None, None),
        ("A40", OPEN_IP, None, None),
    ],
)
def test_trigger_for(event: str, encounter: EncounterFacts, kind: str | None, at: dt.datetime | None) -> None:
    trigger = trigger_for(event, encounter, event_time=LATER)
    if kind is None:
        assert trigger is None
    else:
        assert trigger == Trigger(kind=kind, at=at, encounter=encounter)  # type: ignore[arg-type]


def test_trigger_for_update_without_event_time_counts_from_the_start() -> None:
    assert trigger_for("A08", OPEN_IP) == Trigger(kind="admission", at=AT, encounter=OPEN_IP)
    # An event time before the start (clock skew) never moves the anchor back.
    assert trigger_for("A08", OPEN_IP, event_time=AT - SEC) == Trigger(kind="admission", at=AT, encounter=OPEN_IP)


def test_mid_stay_update_is_current() -> None:
    # A diagnosis added on day 5 of a stay: the A08 is current although the admission is not.
    start = AT - dt.timedelta(days=5)
    cur = enc("cur", "inpatient", start, "acsc", status="active")
    history = person([enc("a1", "inpatient", days_ago(30)), enc("a2", "inpatient", days_ago(60)), cur])
    trigger = trigger_for("A08", cur, event_time=AT)
    assert trigger is not None
    assert run(history, trigger).proposed == "TOC"
    stale = trigger_for("A01", cur)
    assert stale is not None and run(history, stale).proposed is None


# --- person facts from ADT --------------------------------------------------------------------


def adt(
    *,
    medi_cal_id: str | None = None,
    insurance: tuple[tuple[str | None, str | None], ...] = (),
    financial_class: str | None = None,
    address: Address | None = None,
) -> AdtEventV1:
    return AdtEventV1(
        event_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        message_type="ADT",
        trigger_event="A01",
        hl7_version="2.5.1",
        processing_id="P",
        control_id="1",
        sending_facility="STMARY",
        received_at=AT,
        patient=Patient(patient_key="k", identifiers=[Identifier(value="1")], medi_cal_id=medi_cal_id, address=address),
        visit=Visit(financial_class=financial_class),
        insurance=[Insurance(plan_id=p, company_id=c) for p, c in insurance],
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (adt(medi_cal_id="90000001A"), True),
        (adt(insurance=(("MCLAC", None),)), True),
        (adt(insurance=(("mclac ", None),)), True),
        (adt(insurance=(("XYZ", "CADHCS"),)), True),
        (adt(insurance=(("MCR", "MCR"), ("MCHN", None))), True),  # Medicare first, Medi-Cal second
        (adt(financial_class="MCAL"), True),
        (adt(insurance=(("BSCPPO", "BSCPPO"),)), False),
        (adt(financial_class="MC"), None),  # local codes: an unlisted PV1-20 proves nothing
        (adt(insurance=(("SELF", None),), financial_class="MC"), False),
        (adt(), None),  # says nothing of coverage
        (adt(insurance=((None, " "),)), None),
    ],
)
def test_is_medi_cal(event: AdtEventV1, expected: bool | None) -> None:
    assert is_medi_cal(event, RULES) is expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (None, None),
        (Address(county_code="06037"), True),
        (Address(county_code="037"), True),
        (Address(county_code="06059", zip="90012"), False),  # the county code decides
        (Address(zip="90012"), True),
        (Address(zip="93534-1234"), True),
        (Address(zip="92101"), False),
        (Address(zip="HOMELESS"), None),
        (Address(street="GENERAL DELIVERY"), None),
    ],
)
def test_county_resident(address: Address | None, expected: bool | None) -> None:
    assert county_resident(adt(address=address), RULES) is expected


def test_synthetic_feed_person_facts() -> None:
    """The example rules read the synthetic feed's coverage and addresses as intended."""
    seen: set[bool | None] = set()
    for raw in synthetic_feed(400, seed=5):
        event, _ = normalize(
            Message.parse(raw), message_id=uuid.uuid4(), received_at=AT, policy=IntakePolicy(),
            content_digest=content_digest(raw),
        )
        assert county_resident(event, RULES) is True
        plans = {i.plan_id for i in event.insurance}
        medi_cal = is_medi_cal(event, RULES)
        seen.add(medi_cal)
        if event.patient.medi_cal_id or plans & {"MCLAC", "MCHN", "MCFFS"}:
            assert medi_cal is True
        elif plans:
            assert medi_cal is False
        else:
            assert medi_cal is None  # no IN1 (A02, A03 ...) and PV1-20 "MC" is not read as Medi-Cal
    assert seen == {True, False, None}
