"""The care team's worklist of one program, read for the web app (`GET /v1/worklist`).

What a due date needs and the candidate list lacks: the triggering encounter's admission
and discharge (is the patient still in hospital? when did they leave?), when the
candidate was accepted, the services already recorded, and the program's slots (used of
capacity, queue length). Ids, facility codes, statuses and times only: the worklist
shows no names, and the web app's due dates are computed there (`webapp.views.worklist`).

``version`` is a cheap fingerprint of a program's candidates (count and last change),
for the web app's live page to ask once a second whether to fetch the list again; it
shows nobody, so it writes no audit row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

ACTIVE_STATUSES = ("queued", "pending", "accepted", "enrolled")


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


async def rows(conn: AsyncConnection, program: str, statuses: Sequence[str], facility: str | None,
               limit: int) -> list[dict[str, Any]]:
    """The program's candidates in ``statuses``, oldest first, with their encounter and services."""
    result = await conn.execute(
        text(
            "SELECT c.id, c.person_id, c.status, c.facility, c.created_at, c.proposed_at, c.expires_at, "
            "c.updated_at, c.decision->>'trigger' AS trigger, c.decision->>'trigger_at' AS trigger_at, "
            "e.kind AS encounter_kind, e.status AS encounter_status, e.patient_class, e.hospital_service, "
            "e.start_at AS admitted_at, e.end_at AS discharged_at, "
            "(SELECT min(t.at) FROM candidate_transition t WHERE t.candidate_id = c.id "
            " AND t.to_status = 'accepted') AS accepted_at, "
            "(SELECT coalesce(jsonb_agg(jsonb_build_object('kind', s.kind, 'at', s.at) ORDER BY s.at), '[]') "
            " FROM service_record s WHERE s.candidate_id = c.id) AS services "
            "FROM candidate c LEFT JOIN encounter e ON e.id = c.encounter_id "
            "WHERE c.program = :p AND c.status = ANY(:s) AND (CAST(:f AS text) IS NULL OR c.facility = :f) "
            "ORDER BY c.seq LIMIT :n"
        ),
        {"p": program, "s": list(statuses), "f": facility, "n": limit},
    )
    return [{k: _json(v) for k, v in r._mapping.items()} for r in result]


async def slots(conn: AsyncConnection, program: str) -> dict[str, int]:
    """The program's capacity, slots used (pending, accepted, enrolled) and queue length."""
    row = (await conn.execute(
        text(
            "SELECT (SELECT capacity FROM program_capacity WHERE program = :p) AS capacity, "
            "count(*) FILTER (WHERE status IN ('pending', 'accepted', 'enrolled')) AS used, "
            "count(*) FILTER (WHERE status = 'queued') AS queued FROM candidate WHERE program = :p"
        ),
        {"p": program},
    )).one()
    return {"capacity": int(row.capacity or 0), "used": int(row.used), "queued": int(row.queued)}


async def version(conn: AsyncConnection, programs: Sequence[str]) -> str:
    """A fingerprint of the candidates of ``programs`` that changes when one is added or changes."""
    row = (await conn.execute(
        text("SELECT count(*) AS n, max(seq) AS seq, max(updated_at) AS at FROM candidate WHERE program = ANY(:p)"),
        {"p": list(programs)},
    )).one()
    return f"{row.n}-{row.seq or 0}-{row.at.isoformat() if row.at else ''}"
