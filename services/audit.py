"""The audit trail: who did what to whose record, one row per act (table ``audit``).

Every service writes it here, in the caller's transaction, so the act and its trail commit
together or not at all: the care team's reads and decisions (enrollment API), consents,
panels and re-sends (notifier API), 42 CFR Part 2 disclosures and withholdings (the
notifier), re-drives of parked records (`services.parking`).

``actor`` is a user's name, a service's (``notifier``) or a command's (``cli:<user>``);
``detail`` holds ids and kinds only, never PHI (the row is read by auditors, and copied).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_INSERT = text(
    "INSERT INTO audit (actor, action, person_id, candidate_id, detail) "
    "VALUES (:actor, :action, :person_id, :candidate_id, :detail)"
)


async def record(
    conn: AsyncConnection, actor: str, action: str, *, person_id: object = None, candidate_id: object = None,
    detail: str = "",
) -> None:
    """One audit row in ``conn``'s transaction."""
    await conn.execute(_INSERT, {"actor": actor, "action": action, "person_id": person_id,
                                 "candidate_id": candidate_id, "detail": detail})
