"""The pilot's measures as pure functions over loaded rows (`enrollment_svc.measures`)."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

from enrollment_svc.measure_rows import EnrolledRow, StayRow
from enrollment_svc.measures import (
    isr_home_visit_share,
    month_range,
    readmissions,
    report,
    toc_pcp_appointment_share,
    toc_visit_share,
)

PT = ZoneInfo("America/Los_Angeles")


def pt(day: int, hour: int = 12, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, tzinfo=PT)


def row(program: str, end: dt.datetime | None, *services: tuple[str, dt.datetime],
        person: uuid.UUID | None = None) -> EnrolledRow:
    return EnrolledRow(uuid.uuid4(), person or uuid.uuid4(), program, end, tuple(services))


def test_toc_visit_counts_a_pre_discharge_visit_or_a_home_visit_within_three_business_days() -> None:
    friday = pt(20, 17)
    rows = [
        row("TOC", friday, ("pre_discharge_visit", pt(19))),  # before discharge
        row("TOC", friday, ("home_visit", pt(25, 23))),  # Wednesday: the 3rd business day
        row("TOC", friday, ("home_visit", pt(26, 9))),  # Thursday: late
        row("TOC", friday, ("pre_discharge_visit", pt(21))),  # "pre" after discharge: not one
        row("TOC", None, ("home_visit", pt(21))),  # still in hospital: not counted at all
    ]
    assert toc_visit_share(rows, PT) == 0.5
    assert toc_visit_share([], PT) is None


def test_pcp_appointment_within_one_calendar_month_of_discharge() -> None:
    end = pt(30, 10)
    rows = [row("TOC", end, ("pcp_appointment", pt(30, 10, month=12))),
            row("TOC", end, ("pcp_appointment", pt(30, 11, month=12))),
            row("TOC", end, ("home_visit", pt(31, 11, month=12)))]
    assert toc_pcp_appointment_share(rows) == round(1 / 3, 4)


def test_isr_home_visit_within_five_business_days() -> None:
    monday = pt(16, 9)
    rows = [row("ISR", monday, ("home_visit", pt(23, 20))),  # next Monday: the 5th business day
            row("ISR", monday, ("home_visit", pt(24, 8)))]
    assert isr_home_visit_share(rows, PT) == 0.5


def test_readmissions_rate() -> None:
    p = uuid.uuid4()
    assert readmissions([StayRow(p, pt(3), True), StayRow(p, pt(9), False), StayRow(p, pt(12), False)]) == {
        "discharges": 3, "readmitted": 1, "rate": 0.3333}
    assert readmissions([]) == {"discharges": 0, "readmitted": 0, "rate": None}


def test_report_per_program_with_the_notifiers_figure_and_each_programs_own_stays() -> None:
    toc_person, isr_person = uuid.uuid4(), uuid.uuid4()
    rows = [row("TOC", pt(2), ("home_visit", pt(3)), person=toc_person), row("ISR", None, person=isr_person)]
    stays = [StayRow(toc_person, pt(2), True), StayRow(isr_person, pt(8), False)]
    figure = {"source": "notifier", "enrolled": 4, "notified": 3, "share": 0.75}
    out = report(dt.date(2026, 11, 1), rows, stays, {"TOC": figure, "SUD-ENS": {**figure, "share": 0.5}})
    assert out["month"] == "2026-11" and set(out["programs"]) == {"TOC", "ISR", "SUD-ENS"}
    toc = out["programs"]["TOC"]
    assert toc["enrolled"] == 1 and toc["pcp_notified_share"] == 0.75
    assert toc["visit_within_3_business_days_share"] == 1.0
    assert toc["readmissions_30d"] == {"discharges": 1, "readmitted": 1, "rate": 1.0}
    isr = out["programs"]["ISR"]
    assert isr["home_visit_within_5_business_days_share"] is None  # nobody discharged yet
    assert isr["pcp_notified_share"] is None and isr["pcp_notified"]["share"] is None
    assert isr["readmissions_30d"]["discharges"] == 1
    assert out["programs"]["SUD-ENS"]["enrolled"] == 0

    only = report(dt.date(2026, 11, 1), rows, stays, {"TOC": figure}, program="ISR")
    assert list(only["programs"]) == ["ISR"]


def test_month_range_is_local() -> None:
    start, end = month_range(dt.date(2026, 3, 1), PT)
    assert start.utcoffset() == dt.timedelta(hours=-8) and end.utcoffset() == dt.timedelta(hours=-7)
    assert (start.month, end.month) == (3, 4)
