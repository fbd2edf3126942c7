"""The rows the pilot's measures are computed from (`enrollment_svc.measures`): the
repository side, the one place their SQL lives.

- `enrollments`: the candidates that became ``enrolled`` in a time range, with the end of
  their triggering encounter and the services recorded for them (kind and time, in order);
- `inpatient_stays`: the inpatient stays of some persons that ended in a time range, each
  with whether another inpatient admission of the same person began within 30 days after
  (all-cause readmission; cancelled admissions do not count).

The notifier's PCP-notified figures are read by `enrollment_svc.reported.pcp_notified`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["EnrolledRow", "StayRow", "enrollments", "inpatient_stays"]

INPATIENT_KINDS = ("inpatient", "psych_inpatient")


@dataclass(frozen=True)
class EnrolledRow:
    candidate_id: uuid.UUID
    person_id: uuid.UUID
    program: str
    discharged_at: dt.datetime | None  # the end of the triggering stay; None while it goes on
    services: tuple[tuple[str, dt.datetime], ...]  # (kind, at), oldest first


@dataclass(frozen=True)
class StayRow:
    person_id: uuid.UUID
    discharged_at: dt.datetime
    readmitted_within_30d: bool


async def enrollments(
    conn: AsyncConnection, start: dt.datetime, end: dt.datetime, program: str | None
) -> list[EnrolledRow]:
    rows = await conn.execute(
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
    return [EnrolledRow(r.id, r.person_id, r.program, r.end_at, tuple(zip(r.kinds, r.ats, strict=True)))
            for r in rows]


async def inpatient_stays(
    conn: AsyncConnection, persons: Sequence[uuid.UUID], start: dt.datetime, end: dt.datetime
) -> list[StayRow]:
    if not persons:
        return []
    rows = await conn.execute(
        text(
            "SELECT a.person_id, a.end_at, EXISTS (SELECT 1 FROM encounter b WHERE b.person_id = a.person_id "
            "  AND b.id <> a.id AND b.kind = ANY(:k) AND b.status <> 'cancelled' AND b.start_at > a.end_at "
            "  AND b.start_at <= a.end_at + interval '30 days') AS readmitted "
            "FROM encounter a WHERE a.person_id = ANY(:p) AND a.kind = ANY(:k) AND a.status = 'discharged' "
            "AND a.end_at >= :s AND a.end_at < :e"
        ),
        {"p": list(persons), "k": list(INPATIENT_KINDS), "s": start, "e": end},
    )
    return [StayRow(r.person_id, r.end_at, bool(r.readmitted)) for r in rows]
