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
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from enrollment_svc import reported
from enrollment_svc.eligibility import months_before

_INPATIENT = ["inpatient", "psych_inpatient"]
_PACIFIC = ZoneInfo("America/Los_Angeles")


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


def _share(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


async def compute(
    conn: AsyncConnection, month: dt.date, program: str | None, zone: ZoneInfo = _PACIFIC
) -> dict[str, Any]:
    start = dt.datetime(month.year, month.month, 1, tzinfo=zone)
    end = add_months(start, 1)
    rows = (
        await conn.execute(
            text(
                "SELECT c.id, c.person_id, c.program, e.end_at, "
                "  array_remove(array_agg(s.kind ORDER BY s.at), NULL) AS kinds, "
                "  array_remove(array_agg(s.at ORDER BY s.at), NULL) AS ats "
                "FROM candidate c JOIN candidate_transition t ON t.candidate_id = c.id AND t.to_status = 'enrolled' "
                "LEFT JOIN encounter e ON e.id = c.encounter_id "
                "LEFT JOIN service_record s ON s.candidate_id = c.id "
                "WHERE t.at >= :s AND t.at < :e AND (CAST(:p AS text) IS NULL OR c.program = :p) "
                "GROUP BY c.id, c.person_id, c.program, e.end_at"
            ),
            {"s": start, "e": end, "p": program},
        )
    ).all()
    out: dict[str, Any] = {"month": month.strftime("%Y-%m"), "business_days": "Mon-Fri, no holidays", "programs": {}}
    notified = await reported.pcp_notified(conn, month)
    if program is not None:
        notified = {p: v for p, v in notified.items() if p == program}
    for prog in sorted({r.program for r in rows} | set(notified) | ({program} if program else set())):
        mine = [r for r in rows if r.program == prog]
        services = [list(zip(r.kinds, r.ats, strict=True)) for r in mine]
        figure = notified.get(prog)
        result: dict[str, Any] = {
            "enrolled": len(mine),
            "pcp_notified_share": figure["share"] if figure else None,
            "pcp_notified": figure or {"source": "notifier", "share": None,
                                       "detail": "no figure received from the notifier for this month"},
        }
        discharged = [(r, s) for r, s in zip(mine, services, strict=True) if r.end_at is not None]
        if prog == "TOC":
            result["visit_within_3_business_days_share"] = _share(
                sum(
                    any((k == "pre_discharge_visit" and at <= r.end_at)
                        or (k == "home_visit" and within_business_days(r.end_at, at, 3, zone)) for k, at in s)
                    for r, s in discharged
                ),
                len(discharged),
            )
            result["pcp_appointment_within_1_month_share"] = _share(
                sum(
                    any(k == "pcp_appointment" and at <= add_months(r.end_at, 1) for k, at in s)
                    for r, s in discharged
                ),
                len(discharged),
            )
        if prog == "ISR":
            result["home_visit_within_5_business_days_share"] = _share(
                sum(
                    any(k == "home_visit" and within_business_days(r.end_at, at, 5, zone) for k, at in s)
                    for r, s in discharged
                ),
                len(discharged),
            )
        persons = list({r.person_id for r in mine})
        stays = (
            await conn.execute(
                text(
                    "SELECT a.id, EXISTS (SELECT 1 FROM encounter b WHERE b.person_id = a.person_id AND b.id <> a.id "
                    "  AND b.kind = ANY(:k) AND b.status <> 'cancelled' AND b.start_at > a.end_at "
                    "  AND b.start_at <= a.end_at + interval '30 days') AS readmitted "
                    "FROM encounter a WHERE a.person_id = ANY(:p) AND a.kind = ANY(:k) AND a.status = 'discharged' "
                    "AND a.end_at >= :s AND a.end_at < :e"
                ),
                {"p": persons, "k": _INPATIENT, "s": start, "e": end},
            )
        ).all()
        result["readmissions_30d"] = {
            "discharges": len(stays),
            "readmitted": sum(1 for s in stays if s.readmitted),
            "rate": _share(sum(1 for s in stays if s.readmitted), len(stays)),
        }
        out["programs"][prog] = result
    return out
