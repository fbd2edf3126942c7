"""The notifier's tables (migration 0003): every read and write, on a caller's connection.

Callers own the transaction: the handler applies one Kafka event (dedupe mark, candidate
state, watches, notices) in one; the planner turns due notices into deliveries in one;
the dispatcher records each attempt's outcome in one (with the audit row of the
disclosure, and the dead letter and its outbox row when it gives up).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.model import Content, Notice, Outbound
from notifier.render import content_from_json, content_to_json
from schemas.enrollment import EnrollmentCandidateV1, EnrollmentEventV1
from schemas.notification import NotificationDeadLetterV1
from services import audit as audit_trail
from services.outbox import INSERT as OUTBOX_INSERT
from services.outbox import Outbox

ENDED = ("declined", "expired", "disenrolled", "withdrawn")


@dataclass(frozen=True)
class CandidateState:
    candidate_id: uuid.UUID
    person_id: uuid.UUID
    program: str
    status: str | None
    proposal: EnrollmentCandidateV1 | None
    enrolled_at: dt.datetime | None
    enrolled_event_id: uuid.UUID | None
    enrolled_notified: bool


@dataclass(frozen=True)
class DeliveryRow:
    id: uuid.UUID
    recipient_id: str
    endpoint: str
    channel: str
    notice_ids: tuple[uuid.UUID, ...]
    idempotency_key: str
    subject: str
    content_type: str
    body: bytes
    status: str
    attempts: int
    received_at: dt.datetime
    last_error: str | None = None


# --- the consuming side ---------------------------------------------------------------------


async def mark_all_processed(conn: AsyncConnection, events: Sequence[tuple[uuid.UUID, str]]) -> set[uuid.UUID]:
    """`mark_processed` for a batch in one statement: the event ids seen for the first time."""
    if not events:
        return set()
    rows = await conn.execute(
        text("INSERT INTO notifier_processed (event_id, topic) "
             "SELECT * FROM unnest(CAST(:e AS uuid[]), CAST(:t AS text[])) "
             "ON CONFLICT DO NOTHING RETURNING event_id"),
        {"e": [e for e, _ in events], "t": [t for _, t in events]},
    )
    return {r[0] for r in rows}


async def watched_keys(conn: AsyncConnection, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` someone watches (one statement for a batch of events)."""
    if not keys:
        return set()
    rows = await conn.execute(text("SELECT DISTINCT key FROM watch WHERE key = ANY(:keys)"), {"keys": list(keys)})
    return {r[0] for r in rows}


def _candidate_state(row: Any) -> CandidateState:
    proposal = EnrollmentCandidateV1.model_validate(row.proposal) if row.proposal is not None else None
    return CandidateState(row.candidate_id, row.person_id, row.program, row.status, proposal, row.enrolled_at,
                          row.enrolled_event_id, row.enrolled_notified)


_RETURNING = "RETURNING candidate_id, person_id, program, status, proposal, enrolled_at, enrolled_event_id, " \
             "enrolled_notified"


async def save_proposal(conn: AsyncConnection, candidate: EnrollmentCandidateV1) -> CandidateState:
    row = (
        await conn.execute(
            text("INSERT INTO notifier_candidate (candidate_id, person_id, program, proposal) "
                 "VALUES (:c, :p, :g, CAST(:j AS jsonb)) "
                 "ON CONFLICT (candidate_id) DO UPDATE SET proposal = EXCLUDED.proposal " + _RETURNING),
            {"c": candidate.candidate_id, "p": candidate.person_id, "g": candidate.program,
             "j": candidate.model_dump_json()},
        )
    ).one()
    return _candidate_state(row)


async def save_status(conn: AsyncConnection, event: EnrollmentEventV1) -> CandidateState:
    """Record a status change; an older change arriving late does not overwrite a newer one."""
    enrolled = event.to_status == "enrolled"
    row = (
        await conn.execute(
            text("INSERT INTO notifier_candidate (candidate_id, person_id, program, status, status_at, enrolled_at, "
                 "enrolled_event_id) VALUES (:c, :p, :g, :s, :at, :ea, :ee) "
                 "ON CONFLICT (candidate_id) DO UPDATE SET "
                 "status = CASE WHEN notifier_candidate.status_at IS NULL OR notifier_candidate.status_at <= :at "
                 "THEN EXCLUDED.status ELSE notifier_candidate.status END, "
                 "status_at = GREATEST(notifier_candidate.status_at, EXCLUDED.status_at), "
                 "enrolled_at = COALESCE(notifier_candidate.enrolled_at, EXCLUDED.enrolled_at), "
                 "enrolled_event_id = COALESCE(notifier_candidate.enrolled_event_id, EXCLUDED.enrolled_event_id) "
                 + _RETURNING),
            {"c": event.candidate_id, "p": event.person_id, "g": event.program, "s": event.to_status,
             "at": event.at, "ea": event.at if enrolled else None, "ee": event.event_id if enrolled else None},
        )
    ).one()
    return _candidate_state(row)


async def set_enrolled_notified(conn: AsyncConnection, candidate_id: uuid.UUID) -> None:
    await conn.execute(text("UPDATE notifier_candidate SET enrolled_notified = true WHERE candidate_id = :c"),
                       {"c": candidate_id})


async def add_watches(
    conn: AsyncConnection, keys: Sequence[str], recipient_id: str, reason: str, program: str | None,
    person_id: uuid.UUID | None,
) -> None:
    if not keys:
        return
    await conn.execute(
        text("INSERT INTO watch (key, recipient_id, reason, program, person_id) "
             "SELECT k, :r, :why, :g, :p FROM unnest(CAST(:keys AS text[])) AS k ON CONFLICT DO NOTHING"),
        {"keys": list(keys), "r": recipient_id, "why": reason, "g": program, "p": person_id},
    )


async def drop_watches(conn: AsyncConnection, reason: str) -> None:
    await conn.execute(text("DELETE FROM watch WHERE reason = :why"), {"why": reason})


async def replace_panel(conn: AsyncConnection, recipient_id: str, keys: Sequence[str]) -> int:
    await conn.execute(text("DELETE FROM watch WHERE recipient_id = :r AND reason = 'panel'"), {"r": recipient_id})
    await add_watches(conn, keys, recipient_id, "panel", None, None)
    return len(set(keys))


async def watchers(conn: AsyncConnection, keys: Sequence[str]) -> list[tuple[str, str | None, uuid.UUID | None]]:
    """(recipient, program, person) watching any of ``keys``; enrollee watches first, so a
    recipient that watches a person for a program and in a panel gets the program's view."""
    rows = await conn.execute(
        text("SELECT recipient_id, program, person_id FROM watch WHERE key = ANY(:keys) "
             "ORDER BY (reason = 'panel'), since"),
        {"keys": list(keys)},
    )
    return [(r.recipient_id, r.program, r.person_id) for r in rows]


async def consented_scopes(
    conn: AsyncConnection, person_ids: Sequence[uuid.UUID], now: dt.datetime
) -> dict[uuid.UUID | None, frozenset[str]]:
    if not person_ids:
        return {}
    rows = await conn.execute(
        text("SELECT person_id, array_agg(DISTINCT scope) AS scopes FROM consent WHERE person_id = ANY(:p) "
             "AND granted_at <= :now AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > :now) "
             "GROUP BY person_id"),
        {"p": list(person_ids), "now": now},
    )
    return {r.person_id: frozenset(r.scopes) for r in rows}


async def roster_practice(conn: AsyncConnection, member_id: str, on: dt.date) -> str | None:
    row = await conn.execute(
        text("SELECT practice_id FROM roster WHERE member_id = :m AND effective_from <= :d "
             "AND (effective_to IS NULL OR effective_to >= :d) ORDER BY effective_from DESC, loaded_at DESC LIMIT 1"),
        {"m": member_id.strip().upper(), "d": on},
    )
    return row.scalar_one_or_none()


async def add_notice(conn: AsyncConnection, notice: Notice, *, status: str, reason: str | None = None) -> bool:
    c = notice.content
    row = await conn.execute(
        text("INSERT INTO notice (id, recipient_id, source_event_id, event_kind, person_id, program, encounter_key, "
             "content, urgent, status, suppressed_reason, occurred_at, deliver_after) "
             "VALUES (:id, :r, :e, :k, :p, :g, :ek, CAST(:c AS jsonb), :u, :s, :why, :o, :da) "
             "ON CONFLICT ON CONSTRAINT notice_event_recipient_uq DO NOTHING RETURNING 1"),
        {"id": notice.notice_id, "r": notice.recipient_id, "e": notice.source_event_id, "k": c.event,
         "p": c.person_id, "g": c.program, "ek": notice.encounter_key, "c": json.dumps(content_to_json(c)),
         "u": notice.urgent, "s": status, "why": reason, "o": c.occurred_at, "da": notice.deliver_after},
    )
    return row.first() is not None


async def pending_for_encounter(
    conn: AsyncConnection, recipient_id: str, key: str
) -> tuple[uuid.UUID, Content] | None:
    row = (
        await conn.execute(
            text("SELECT id, content FROM notice WHERE recipient_id = :r AND encounter_key = :k "
                 "AND status = 'pending' ORDER BY received_at DESC LIMIT 1 FOR UPDATE"),
            {"r": recipient_id, "k": key},
        )
    ).first()
    return (row.id, content_from_json(row.content)) if row is not None else None


async def rewrite_notice(conn: AsyncConnection, notice_id: uuid.UUID, content: Content) -> None:
    await conn.execute(
        text("UPDATE notice SET content = CAST(:c AS jsonb), event_kind = :k WHERE id = :id"),
        {"c": json.dumps(content_to_json(content)), "k": content.event, "id": notice_id},
    )


async def cancel_pending_admits(conn: AsyncConnection, key: str) -> int:
    """A11 (cancel admit) inside the bundle window: the admit notice never goes."""
    result = await conn.execute(
        text("UPDATE notice SET status = 'suppressed', suppressed_reason = 'admit_cancelled' "
             "WHERE encounter_key = :k AND status = 'pending' AND event_kind = 'admit'"),
        {"k": key},
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def audit(
    conn: AsyncConnection, action: str, *, person_id: uuid.UUID | None, candidate_id: uuid.UUID | None, detail: str
) -> None:
    await audit_trail.record(conn, "notifier", action, person_id=person_id, candidate_id=candidate_id, detail=detail)


# --- planning -------------------------------------------------------------------------------


async def due_recipients(conn: AsyncConnection, now: dt.datetime) -> list[str]:
    rows = await conn.execute(
        text("SELECT DISTINCT recipient_id FROM notice WHERE status = 'pending' AND deliver_after <= :now"),
        {"now": now},
    )
    return [r.recipient_id for r in rows]


@dataclass(frozen=True)
class DueRow:
    id: uuid.UUID
    urgent: bool
    deliver_after: dt.datetime
    received_at: dt.datetime
    person_id: uuid.UUID | None
    content: Content


async def lock_due(conn: AsyncConnection, recipient_id: str, now: dt.datetime) -> list[DueRow]:
    """The recipient's due notices, locked; another planner skips them."""
    rows = await conn.execute(
        text("SELECT id, urgent, deliver_after, received_at, person_id, content FROM notice "
             "WHERE recipient_id = :r AND status = 'pending' AND deliver_after <= :now "
             "ORDER BY deliver_after, id FOR UPDATE SKIP LOCKED"),
        {"r": recipient_id, "now": now},
    )
    return [DueRow(r.id, r.urgent, r.deliver_after, r.received_at, r.person_id, content_from_json(r.content))
            for r in rows]


async def batch_times(conn: AsyncConnection, recipient_id: str, since: dt.datetime) -> list[dt.datetime]:
    """When each message (a batch, whatever its endpoints) went to the recipient since ``since``."""
    rows = await conn.execute(
        text("SELECT min(created_at) AS at FROM delivery WHERE recipient_id = :r AND created_at > :s "
             "GROUP BY notice_ids"),
        {"r": recipient_id, "s": since},
    )
    return [r.at for r in rows]


async def postpone(conn: AsyncConnection, notice_ids: Sequence[uuid.UUID], until: dt.datetime) -> None:
    await conn.execute(text("UPDATE notice SET deliver_after = :u WHERE id = ANY(:ids)"),
                       {"u": until, "ids": list(notice_ids)})


async def set_notice_status(
    conn: AsyncConnection, notice_ids: Sequence[uuid.UUID], status: str, reason: str | None = None
) -> None:
    await conn.execute(text("UPDATE notice SET status = :s, suppressed_reason = :why WHERE id = ANY(:ids)"),
                       {"s": status, "why": reason, "ids": list(notice_ids)})


async def add_delivery(
    conn: AsyncConnection, message: Outbound, recipient_id: str, notice_ids: Sequence[uuid.UUID],
    received_at: dt.datetime, now: dt.datetime,
) -> None:
    await conn.execute(
        text("INSERT INTO delivery (id, recipient_id, endpoint, channel, notice_ids, idempotency_key, subject, "
             "content_type, body, status, next_attempt_at, received_at, created_at) "
             "VALUES (:id, :r, :ep, :ch, :n, :k, :s, :ct, :b, 'queued', :now, :rcv, :now) ON CONFLICT DO NOTHING"),
        {"id": message.delivery_id, "r": recipient_id, "ep": message.endpoint.name, "ch": message.endpoint.kind,
         "n": list(notice_ids), "k": message.idempotency_key, "s": message.subject, "ct": message.content_type,
         "b": message.body, "rcv": received_at, "now": now},
    )


# --- dispatching ----------------------------------------------------------------------------

_DELIVERY_COLUMNS = ("id, recipient_id, endpoint, channel, notice_ids, idempotency_key, subject, content_type, body, "
                     "status, attempts, received_at, last_error")


def _delivery(r: Any) -> DeliveryRow:
    return DeliveryRow(r.id, r.recipient_id, r.endpoint, r.channel, tuple(r.notice_ids), r.idempotency_key,
                       r.subject, r.content_type, bytes(r.body), r.status, r.attempts, r.received_at, r.last_error)


async def claim_due(conn: AsyncConnection, now: dt.datetime, limit: int, lease_s: float) -> list[DeliveryRow]:
    """Take up to ``limit`` due deliveries for one attempt each. The lease makes an attempt
    whose outcome was never recorded (a crash after sending) due again once it expires:
    the receiver then gets the same idempotency key a second time and dedupes."""
    rows = await conn.execute(
        text("UPDATE delivery SET attempts = attempts + 1, lease_until = :lease, next_attempt_at = :lease "
             "WHERE id IN (SELECT id FROM delivery WHERE status = 'queued' AND next_attempt_at <= :now "
             "ORDER BY next_attempt_at LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING " + _DELIVERY_COLUMNS),
        {"now": now, "n": limit, "lease": now + dt.timedelta(seconds=lease_s)},
    )
    return [_delivery(r) for r in rows]


async def notice_refs(conn: AsyncConnection, notice_ids: Sequence[uuid.UUID]) -> list[tuple[Any, ...]]:
    rows = await conn.execute(
        text("SELECT id, person_id, content->>'candidate_id' AS candidate_id, event_kind, program, "
             "content->'withheld' AS withheld FROM notice WHERE id = ANY(:ids)"),
        {"ids": list(notice_ids)},
    )
    return [tuple(r) for r in rows]


async def record_success(conn: AsyncConnection, delivery: DeliveryRow, outcome: str, now: dt.datetime) -> None:
    await conn.execute(
        text("UPDATE delivery SET status = :s, finished_at = :now, lease_until = NULL, last_error = NULL "
             "WHERE id = :id"),
        {"s": outcome, "now": now, "id": delivery.id},
    )
    # The audit trail of every disclosure: who got which kinds of facts about whom (ids only).
    for _nid, person_id, candidate_id, kind, program, withheld in await notice_refs(conn, delivery.notice_ids):
        detail = (f"recipient={delivery.recipient_id} endpoint={delivery.endpoint} channel={delivery.channel} "
                  f"event={kind} program={program or '-'} withheld={','.join(withheld or []) or '-'} "
                  f"delivery={delivery.id}")
        await audit(conn, "disclose", person_id=person_id,
                    candidate_id=uuid.UUID(candidate_id) if candidate_id else None, detail=detail)


async def record_retry(conn: AsyncConnection, delivery_id: uuid.UUID, reason: str, next_at: dt.datetime) -> None:
    await conn.execute(
        text("UPDATE delivery SET next_attempt_at = :n, lease_until = NULL, last_error = :e WHERE id = :id"),
        {"n": next_at, "e": reason, "id": delivery_id},
    )


async def record_dead(
    conn: AsyncConnection, delivery: DeliveryRow, reason: str, now: dt.datetime, deadletter_topic: str,
    outbox: Outbox,
) -> None:
    await conn.execute(
        text("UPDATE delivery SET status = 'failed', finished_at = :now, lease_until = NULL, last_error = :e "
             "WHERE id = :id"),
        {"now": now, "e": reason, "id": delivery.id},
    )
    await conn.execute(
        text("INSERT INTO notifier_deadletter (delivery_id, reason, attempts, at) VALUES (:id, :e, :a, :now) "
             "ON CONFLICT (delivery_id) DO UPDATE SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, "
             "at = EXCLUDED.at"),
        {"id": delivery.id, "e": reason, "a": delivery.attempts, "now": now},
    )
    event = NotificationDeadLetterV1(
        event_id=uuid.uuid5(delivery.id, f"dead\x1f{delivery.attempts}"), delivery_id=delivery.id,
        recipient_id=delivery.recipient_id, endpoint=delivery.endpoint, channel=delivery.channel,
        notice_ids=list(delivery.notice_ids), attempts=delivery.attempts, reason=reason, at=now,
    )
    await conn.execute(text(OUTBOX_INSERT), outbox.row(deadletter_topic, delivery.recipient_id,
                                                       event.model_dump_json().encode(), event.event_id))


async def list_deliveries(
    conn: AsyncConnection, status: str | None, recipient_id: str | None, limit: int
) -> list[DeliveryRow]:
    rows = await conn.execute(
        text("SELECT " + _DELIVERY_COLUMNS + " FROM delivery WHERE (CAST(:s AS text) IS NULL OR status = :s) "
             "AND (CAST(:r AS text) IS NULL OR recipient_id = :r) ORDER BY created_at DESC LIMIT :n"),
        {"s": status, "r": recipient_id, "n": limit},
    )
    return [_delivery(r) for r in rows]


async def requeue(conn: AsyncConnection, delivery_id: uuid.UUID, now: dt.datetime) -> bool:
    """Re-send a failed delivery: same body, same idempotency key, a fresh round of attempts."""
    result = await conn.execute(
        text("UPDATE delivery SET status = 'queued', attempts = 0, next_attempt_at = :now, finished_at = NULL "
             "WHERE id = :id AND status = 'failed' RETURNING 1"),
        {"now": now, "id": delivery_id},
    )
    if result.first() is None:
        return False
    await conn.execute(text("UPDATE notifier_deadletter SET resent_at = :now WHERE delivery_id = :id"),
                       {"now": now, "id": delivery_id})
    return True


async def person_programs_ever(conn: AsyncConnection, person_id: uuid.UUID) -> set[str]:
    """Programs the person has ever been proposed for (who may read what they were told)."""
    rows = await conn.execute(text("SELECT DISTINCT program FROM notifier_candidate WHERE person_id = :p"),
                              {"p": person_id})
    return {str(r[0]) for r in rows}


async def person_consents(conn: AsyncConnection, person_id: uuid.UUID, now: dt.datetime) -> list[dict[str, Any]]:
    """The person's Part 2 consents, newest first, each with whether it is in effect at ``now``."""
    rows = await conn.execute(
        text("SELECT id, scope, granted_at, expires_at, revoked_at, recorded_by, source, "
             "(granted_at <= :now AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > :now)) AS active "
             "FROM consent WHERE person_id = :p ORDER BY granted_at DESC, id DESC"),
        {"p": person_id, "now": now},
    )
    return [dict(r._mapping) for r in rows]


async def person_notices(conn: AsyncConnection, person_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    """Who was told what about the person and when, newest first: each notice (kept or
    suppressed, with what Part 2 withheld) and the deliveries that carried it, with their status."""
    rows = await conn.execute(
        text("SELECT n.id, n.recipient_id, n.event_kind, n.program, n.occurred_at, n.status, n.suppressed_reason, "
             "n.content->'withheld' AS withheld, n.content->'encounter'->>'facility' AS facility, "
             "COALESCE((SELECT json_agg(json_build_object('delivery_id', d.id, 'endpoint', d.endpoint, "
             "'channel', d.channel, 'status', d.status, 'attempts', d.attempts, 'last_error', d.last_error, "
             "'created_at', d.created_at, 'finished_at', d.finished_at) ORDER BY d.created_at) "
             "FROM delivery d WHERE d.notice_ids @> ARRAY[n.id]), '[]') AS deliveries "
             "FROM notice n WHERE n.person_id = :p ORDER BY n.occurred_at DESC LIMIT :n"),
        {"p": person_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows]
