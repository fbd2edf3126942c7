"""The pilot's measures (programs.md, "What the pilot is measured on"), from the database.

For the enrollments of one calendar month (candidates that became ``enrolled`` in it):

* ``pcp_notified_share`` (target 50%) is not computed here: it is the notifier's figure
  (the notifier alone knows which enrollment notices were delivered), received on
  ``notifications.measures`` (`enrollment_svc.reported`) and shown with its source, its
  counts, the zone its month is read in and when it was computed (``pcp_notified``);
  None until the notifier has published one. One number, the same in both APIs.
* TOC: ``visit_within_3_business_days_share`` (a pre-discharge visit before discharge,
  or a home visit within 3 business days after it) and ``pcp_appointment_within_1_month_share``,
  of enrollees whose triggering stay has ended.
* ISR: ``home_visit_within_5_business_days_share`` after the psychiatric discharge.
* ``readmissions_30d``: the enrollees' inpatient stays that ended in the month, and how
  many were followed by another inpatient admission within 30 days (all-cause).

Business days are Monday to Friday; county holidays are not configured (a choice:
say so in reports). A share is None when its denominator is 0.

Each measure is a pure function over loaded rows (`measure_rows.EnrolledRow`,
`measure_rows.StayRow`): `toc_visit_share`, `toc_pcp_appointment_share`,
`isr_home_visit_share`, `readmissions`, and `report` puts a month together. `compute` is
the use case: it loads the rows (`enrollment_svc.measure_rows`, the SQL) and calls them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from enrollment_svc import measure_rows, reported
from enrollment_svc.eligibility import months_before
from enrollment_svc.measure_rows import EnrolledRow, StayRow

_PACIFIC = ZoneInfo("America/Los_Angeles")
BUSINESS_DAYS = "Mon-Fri, no holidays"


def add_business_days(start: dt.datetime, days: int) -> dt.datetime:
    """``start`` moved forward by ``days`` weekdays (Saturday and Sunday skipped)."""
    current = start
    left = days
    while left > 0:
        current += dt.timedelta(days=1)
        if current.weekday() < 5:
            left -= 1
    return current


def within_business_days(end: dt.datetime, at: dt.datetime, days: int, zone: ZoneInfo) -> bool:
    """``at`` is not before ``end`` and falls on a local date at most ``days`` weekdays after ``end``'s local date.

    Days are counted on calendar dates in the site's zone: a discharge Friday 17:30 Pacific
    (Saturday in UTC) has Monday to Wednesday, all of Wednesday, whatever the hour.
    """
    if at < end:
        return False
    last = add_business_days(end.astimezone(zone), days).date()
    return at.astimezone(zone).date() <= last


def add_months(start: dt.datetime, months: int) -> dt.datetime:
    """``start`` moved ``months`` calendar months forward, the day clamped (eligibility's arithmetic)."""
    return months_before(start, -months)


def month_range(month: dt.date, zone: ZoneInfo = _PACIFIC) -> tuple[dt.datetime, dt.datetime]:
    """The first instant of ``month`` in ``zone`` and that of the next month."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=zone)
    return start, add_months(start, 1)


def _share(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _discharged(rows: Iterable[EnrolledRow]) -> list[tuple[EnrolledRow, dt.datetime]]:
    return [(r, r.discharged_at) for r in rows if r.discharged_at is not None]


def toc_visit_share(rows: Sequence[EnrolledRow], zone: ZoneInfo) -> float | None:
    """Of enrollees whose stay ended: a pre-discharge visit before discharge, or a home visit
    within 3 business days after it."""
    done = _discharged(rows)
    return _share(sum(
        any((kind == "pre_discharge_visit" and at <= end)
            or (kind == "home_visit" and within_business_days(end, at, 3, zone)) for kind, at in r.services)
        for r, end in done
    ), len(done))


def toc_pcp_appointment_share(rows: Sequence[EnrolledRow]) -> float | None:
    """Of enrollees whose stay ended: a PCP appointment within 1 month of discharge."""
    done = _discharged(rows)
    return _share(sum(
        any(kind == "pcp_appointment" and at <= add_months(end, 1) for kind, at in r.services) for r, end in done
    ), len(done))


def isr_home_visit_share(rows: Sequence[EnrolledRow], zone: ZoneInfo) -> float | None:
    """Of enrollees discharged from the psychiatric stay: a home visit within 5 business days."""
    done = _discharged(rows)
    return _share(sum(
        any(kind == "home_visit" and within_business_days(end, at, 5, zone) for kind, at in r.services)
        for r, end in done
    ), len(done))


def readmissions(stays: Sequence[StayRow]) -> dict[str, Any]:
    """Inpatient stays that ended, and how many were followed by an admission within 30 days."""
    readmitted = sum(1 for s in stays if s.readmitted_within_30d)
    return {"discharges": len(stays), "readmitted": readmitted, "rate": _share(readmitted, len(stays))}


def report(
    month: dt.date,
    rows: Sequence[EnrolledRow],
    stays: Sequence[StayRow],
    notified: Mapping[str, dict[str, Any]],
    program: str | None = None,
    zone: ZoneInfo = _PACIFIC,
) -> dict[str, Any]:
    """The measures of one month, per program: every program with an enrollment or a
    PCP-notified figure, or only ``program`` (always listed, even with nothing)."""
    if program is not None:
        notified = {p: v for p, v in notified.items() if p == program}
        rows = [r for r in rows if r.program == program]
    out: dict[str, Any] = {"month": month.strftime("%Y-%m"), "business_days": BUSINESS_DAYS, "programs": {}}
    for prog in sorted({r.program for r in rows} | set(notified) | ({program} if program else set())):
        mine = [r for r in rows if r.program == prog]
        figure = notified.get(prog)
        result: dict[str, Any] = {
            "enrolled": len(mine),
            "pcp_notified_share": figure["share"] if figure else None,
            "pcp_notified": figure or {"source": "notifier", "share": None,
                                       "detail": "no figure received from the notifier for this month"},
        }
        if prog == "TOC":
            result["visit_within_3_business_days_share"] = toc_visit_share(mine, zone)
            result["pcp_appointment_within_1_month_share"] = toc_pcp_appointment_share(mine)
        if prog == "ISR":
            result["home_visit_within_5_business_days_share"] = isr_home_visit_share(mine, zone)
        persons = {r.person_id for r in mine}
        result["readmissions_30d"] = readmissions([s for s in stays if s.person_id in persons])
        out["programs"][prog] = result
    return out


async def compute(
    conn: AsyncConnection, month: dt.date, program: str | None, zone: ZoneInfo = _PACIFIC
) -> dict[str, Any]:
    """Load the month's rows (`measure_rows`, `reported`) and report them."""
    start, end = month_range(month, zone)
    rows = await measure_rows.enrollments(conn, start, end, program)
    stays = await measure_rows.inpatient_stays(conn, sorted({r.person_id for r in rows}), start, end)
    notified = await reported.pcp_notified(conn, month)
    return report(month, rows, stays, notified, program, zone)
