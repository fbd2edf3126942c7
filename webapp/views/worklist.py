"""The worklist's view model: each candidate's next due step, ordered by when it is due.

Windows (programs.md; the pending lapse is the rules file's ``pending_expiry_days``, which
the enrollment service writes on the candidate as ``expires_at``)::

    program  while admitted                      after discharge                          then
    TOC      pre-discharge visit (no deadline)   home visit within 3 business days       PCP appointment
                                                 (a pre-discharge visit also meets it)   within 1 month
    ISR      —  (waiting for discharge)          home visit within 5 business days
                                                 of the psychiatric discharge
    SUD-ENS  —                                   —  (no service deadline)
    any      a pending proposal lapses at expires_at: accept or decline before then

The business days of a discharge count from the next working day in the site's time
zone (weekends and ``holidays`` skipped); the step is due by the end of the last one.
A candidate's due time is the earliest of its open steps; overdue when that has passed.
Queued candidates wait for a slot: they have nothing due and come last, oldest first.
Pure: the time "now" is an argument.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from webapp.views.timefmt import parse_time

# The service windows of programs.md, in business days after discharge.
VISIT_BUSINESS_DAYS: Mapping[str, int] = {"TOC": 3, "ISR": 5}
PCP_WITHIN = dt.timedelta(days=30)
_FAR = dt.datetime.max.replace(tzinfo=dt.UTC)


def add_business_days(start: dt.date, days: int, holidays: Collection[dt.date] = ()) -> dt.date:
    """The ``days``-th working day after ``start`` (weekends and ``holidays`` are not working days).

    >>> add_business_days(dt.date(2026, 12, 4), 3)   # Friday -> Wednesday
    datetime.date(2026, 12, 9)
    """
    if days < 0:
        raise ValueError("days must be 0 or more")
    day = start
    left = days
    while left:
        day += dt.timedelta(days=1)
        if day.weekday() < 5 and day not in holidays:
            left -= 1
    return day


def business_deadline(discharged: dt.datetime, days: int, zone: str,
                      holidays: Collection[dt.date] = ()) -> dt.datetime:
    """The end of the ``days``-th business day after ``discharged``, in the site's zone ``zone``."""
    tz = ZoneInfo(zone)
    last = add_business_days(discharged.astimezone(tz).date(), days, holidays)
    return dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tz) - dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Due:
    what: str  # the step, in plain words
    at: dt.datetime | None  # by when; None: no deadline (while admitted)


@dataclass(frozen=True)
class Row:
    id: str
    person_id: str
    status: str
    facility: str
    trigger: str
    admitted_at: dt.datetime | None
    discharged_at: dt.datetime | None
    created_at: dt.datetime | None
    due: Due | None
    overdue: bool
    in_hospital: bool


@dataclass(frozen=True)
class Worklist:
    program: str
    capacity: int
    used: int
    queued: int
    rows: tuple[Row, ...]
    facilities: tuple[str, ...]

    @property
    def overdue(self) -> int:
        return sum(1 for r in self.rows if r.overdue)


def _done(services: Iterable[Mapping[str, Any]], kinds: Collection[str]) -> bool:
    return any(s.get("kind") in kinds for s in services)


def next_steps(program: str, candidate: Mapping[str, Any], zone: str,
               holidays: Collection[dt.date] = ()) -> list[Due]:
    """Every open step of ``candidate`` (API JSON of `GET /v1/worklist`), per the table above."""
    steps: list[Due] = []
    status = candidate.get("status")
    if status == "queued":
        return steps
    services = candidate.get("services") or []
    discharged = parse_time(candidate.get("discharged_at"))
    admitted = parse_time(candidate.get("admitted_at"))
    if status == "pending":
        lapses = parse_time(candidate.get("expires_at"))
        if lapses is not None:
            steps.append(Due("accept or decline: the proposal lapses", lapses))
    window = VISIT_BUSINESS_DAYS.get(program)
    if window is not None:
        visited = _done(services, {"home_visit", "pre_discharge_visit"} if program == "TOC" else {"home_visit"})
        if not visited and discharged is None and admitted is not None:
            if program == "TOC":
                steps.append(Due("pre-discharge visit (patient in hospital)", None))
        elif not visited and discharged is not None:
            steps.append(Due(f"home visit within {window} business days of discharge",
                             business_deadline(discharged, window, zone, holidays)))
        if program == "TOC" and discharged is not None and not _done(services, {"pcp_appointment"}):
            steps.append(Due("PCP appointment within 1 month of discharge", discharged + PCP_WITHIN))
    return steps


def _first(steps: Sequence[Due]) -> Due | None:
    """The step to show: the earliest deadline; an open-ended one only when none has a date."""
    dated = [s for s in steps if s.at is not None]
    if dated:
        return min(dated, key=lambda s: s.at or _FAR)
    return steps[0] if steps else None


def build_worklist(body: Mapping[str, Any], now: dt.datetime, zone: str,
                   holidays: Collection[dt.date] = ()) -> Worklist:
    """The page's model from `GET /v1/worklist`'s answer ``body`` at ``now``."""
    program = str(body["program"])
    rows = []
    for c in body.get("candidates", []):
        due = _first(next_steps(program, c, zone, holidays))
        discharged = parse_time(c.get("discharged_at"))
        admitted = parse_time(c.get("admitted_at"))
        rows.append(Row(
            id=str(c["id"]), person_id=str(c["person_id"]), status=str(c["status"]), facility=str(c["facility"]),
            trigger=str(c.get("trigger") or ""), admitted_at=admitted, discharged_at=discharged,
            created_at=parse_time(c.get("created_at")), due=due,
            overdue=bool(due is not None and due.at is not None and due.at < now),
            in_hospital=admitted is not None and discharged is None,
        ))
    rows.sort(key=_order)
    return Worklist(program, int(body.get("capacity", 0)), int(body.get("used", 0)), int(body.get("queued", 0)),
                    tuple(rows), tuple(sorted({r.facility for r in rows})))


def _order(row: Row) -> tuple[int, dt.datetime, dt.datetime]:
    """Dated steps by deadline; then open-ended ones (in hospital); then nothing due; queued last."""
    created = row.created_at or _FAR
    if row.status == "queued":
        return (3, created, created)
    if row.due is None:
        return (2, created, created)
    if row.due.at is None:
        return (1, row.admitted_at or created, created)
    return (0, row.due.at, created)
