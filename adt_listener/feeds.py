"""What ops read about the feeds: the per-facility overview, the message search, one message.

All reads of the listener's own tables (``adt_message``, ``adt_duplicate``,
``adt_event_queue``, ``outbox``, ``conformance_finding``, ``adt_reprocess``); served by
`adt_listener.ops_api`.

- `overview`: per sending facility (MSH-4), the last message's time, today's counts of
  AA / AE / AR and retransmissions (today in the caller's time zone: the site's), the
  feed-quality findings of today (`adt_listener.feed_report`), and what the listener's
  relays have not published yet (``adt_event_queue``: events; ``outbox``: dead letters).
  Rows of re-runs (channel ``reprocess``) are not counted as received: they are counted
  as ``reprocessed``, on the day of the re-run.
- `search`: newest first, keyset pagination on (received_at, id): ``before`` is the id of
  the last message of the previous page, so a page costs the same however deep, and
  messages arriving meanwhile do not shift it. Only ids, codes and times in a result: no
  field of the message (it may be PHI).
- `detail`: one message segment by segment with field names (`adt_listener.message_view`),
  the ACK we sent, the normalized event (derived again, byte for byte what was
  published: `adt_listener.events.derive_event`), the intake and conformance findings,
  retransmissions, and its re-runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adt_listener.events import derive_event
from adt_listener.feed_report import feed_quality
from adt_listener.intake import IntakePolicy
from adt_listener.message_view import segments
from adt_listener.reprocess import CHANNEL as REPROCESS_CHANNEL

MAX_PAGE = 200
ACK_CODES = ("AA", "AE", "AR")


def day_start(now: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """Midnight of ``now``'s day in ``tz``, as an aware time."""
    local = now.astimezone(tz)
    return dt.datetime.combine(local.date(), dt.time(), tzinfo=tz)


# Distinct facilities by a skip scan of the (sending_facility, received_at) index (one
# probe per facility, not a scan of every message), and each one's last message time.
_LAST = """
WITH RECURSIVE f AS (
    (SELECT sending_facility FROM adt_message ORDER BY sending_facility LIMIT 1)
    UNION ALL
    SELECT (SELECT m.sending_facility FROM adt_message m WHERE m.sending_facility > f.sending_facility
            ORDER BY m.sending_facility LIMIT 1)
    FROM f WHERE f.sending_facility IS NOT NULL
)
SELECT f.sending_facility,
       (SELECT max(m.received_at) FROM adt_message m WHERE m.sending_facility = f.sending_facility) AS last_at
FROM f WHERE f.sending_facility IS NOT NULL
"""
_TODAY = """
SELECT sending_facility,
       count(*) FILTER (WHERE ack_code = 'AA') AS aa,
       count(*) FILTER (WHERE ack_code = 'AE') AS ae,
       count(*) FILTER (WHERE ack_code = 'AR') AS ar
FROM adt_message WHERE received_at >= :since AND channel <> :reprocess
GROUP BY sending_facility
"""
_DUPLICATES = """
SELECT m.sending_facility, count(*) AS duplicates
FROM adt_duplicate d JOIN adt_message m ON m.id = d.original_id
WHERE d.received_at >= :since
GROUP BY m.sending_facility
"""
_REPROCESSED = """
SELECT m.sending_facility, count(*) AS runs, count(r.accepted_id) AS accepted
FROM adt_reprocess r JOIN adt_message m ON m.id = r.message_id
WHERE r.at >= :since
GROUP BY m.sending_facility
"""
_EVENT_BACKLOG = """
SELECT m.sending_facility, count(*) AS n
FROM adt_event_queue q JOIN adt_message m ON m.id = q.message_id
GROUP BY m.sending_facility
"""
# Dead letters are keyed by MSH-4 ('' has no key: `adt_listener.store._dead_letter`).
_DEAD_LETTER_BACKLOG = """
SELECT coalesce(key, '') AS sending_facility, count(*) AS n
FROM outbox WHERE service = :service AND topic = :topic
GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class Today:
    AA: int = 0
    AE: int = 0
    AR: int = 0
    duplicates: int = 0  # retransmissions answered with the stored ACK
    reprocessed: int = 0  # re-runs of rejected messages
    reprocessed_accepted: int = 0  # ... of which now accepted


@dataclass(frozen=True, slots=True)
class Backlog:
    events: int = 0  # accepted messages whose adt.events record is not published yet
    dead_letters: int = 0  # rejected messages whose adt.deadletter record is not published yet


@dataclass(frozen=True, slots=True)
class FacilityFeed:
    sending_facility: str
    last_message_at: dt.datetime | None
    today: Today
    backlog: Backlog
    findings: dict[str, Any] | None  # today's feed-quality entry (adt_listener.feed_report), None: no message today


async def overview(
    engine: AsyncEngine, *, tz: zoneinfo.ZoneInfo, now: dt.datetime, service: str, deadletter_topic: str
) -> dict[str, Any]:
    """The feeds overview (module docstring) as JSON-ready data."""
    since = day_start(now, tz)
    params = {"since": since, "reprocess": REPROCESS_CHANNEL}
    async with engine.connect() as conn:
        last = {r.sending_facility: r.last_at for r in (await conn.execute(text(_LAST))).all()}
        today = {r.sending_facility: r for r in (await conn.execute(text(_TODAY), params)).all()}
        dups = {r.sending_facility: int(r.duplicates) for r in (await conn.execute(text(_DUPLICATES), params)).all()}
        rerun = {r.sending_facility: r for r in (await conn.execute(text(_REPROCESSED), params)).all()}
        events = {r.sending_facility: int(r.n) for r in (await conn.execute(text(_EVENT_BACKLOG))).all()}
        dead = {r.sending_facility: int(r.n) for r in (await conn.execute(
            text(_DEAD_LETTER_BACKLOG), {"service": service, "topic": deadletter_topic})).all()}
    quality = {q.sending_facility: dataclasses.asdict(q) for q in await feed_quality(engine, since=since)}
    facilities = []
    for facility in sorted(set(last) | set(events) | set(dead)):
        t = today.get(facility)
        r = rerun.get(facility)
        facilities.append(dataclasses.asdict(FacilityFeed(
            sending_facility=facility,
            last_message_at=last.get(facility),
            today=Today(
                AA=int(t.aa) if t else 0, AE=int(t.ae) if t else 0, AR=int(t.ar) if t else 0,
                duplicates=dups.get(facility, 0),
                reprocessed=int(r.runs) if r else 0, reprocessed_accepted=int(r.accepted) if r else 0,
            ),
            backlog=Backlog(events=events.get(facility, 0), dead_letters=dead.get(facility, 0)),
            findings=quality.get(facility),
        )))
    return {
        "as_of": now,
        "timezone": tz.key,
        "day_start": since,
        "facilities": facilities,
        "relay_backlog": {"events": sum(events.values()), "dead_letters": sum(dead.values())},
    }


# --- the message browser --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Query:
    facility: str | None = None
    control_id: str | None = None
    event: str | None = None  # trigger, e.g. A01
    ack: str | None = None  # AA / AE / AR
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = 50
    before: uuid.UUID | None = None  # the last id of the previous page


_ROW = """
m.id, m.received_at, m.channel, m.sender, m.sending_facility, m.control_id, m.message_type, m.trigger_event,
m.hl7_version, m.ack_code,
(SELECT count(*) FROM adt_duplicate d WHERE d.original_id = m.id) AS duplicates,
(SELECT r.accepted_id FROM adt_reprocess r WHERE r.message_id = m.id AND r.accepted_id IS NOT NULL) AS accepted_as,
(SELECT r.message_id FROM adt_reprocess r WHERE r.accepted_id = m.id) AS reprocess_of
"""


def _summary(r: Any) -> dict[str, Any]:
    return {k: r[k] for k in ("id", "received_at", "channel", "sender", "sending_facility", "control_id",
                              "message_type", "trigger_event", "hl7_version", "ack_code", "accepted_as",
                              "reprocess_of")} | {"duplicates": int(r["duplicates"])}


async def search(engine: AsyncEngine, q: Query) -> dict[str, Any]:
    """One page of messages, newest first: ``{"messages": [...], "next": id | None}``.

    ``next`` is the ``before`` of the next page. An unknown ``before`` gives an empty page."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": q.limit + 1}
    for column, value in (("sending_facility", q.facility), ("control_id", q.control_id),
                          ("trigger_event", q.event), ("ack_code", q.ack)):
        if value is not None:
            where.append(f"m.{column} = :{column}")
            params[column] = value
    if q.since is not None:
        where.append("m.received_at >= :since")
        params["since"] = q.since
    if q.until is not None:
        where.append("m.received_at < :until")
        params["until"] = q.until
    if q.before is not None:
        where.append("(m.received_at, m.id) < (SELECT b.received_at, b.id FROM adt_message b WHERE b.id = :before)")
        params["before"] = q.before
    sql = (f"SELECT {_ROW} FROM adt_message m {'WHERE ' + ' AND '.join(where) if where else ''} "
           "ORDER BY m.received_at DESC, m.id DESC LIMIT :limit")
    async with engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).mappings().all()
    page = [_summary(r) for r in rows[:q.limit]]
    return {"messages": page, "next": page[-1]["id"] if len(rows) > q.limit else None}


_MESSAGE = f"""
SELECT {_ROW}, m.errors, m.ack, m.raw, m.charset, m.event_id, m.conformance_checked, m.conformance_checked_at,
       EXISTS (SELECT 1 FROM adt_event_queue q WHERE q.message_id = m.id) AS event_queued
FROM adt_message m WHERE m.id = :id
"""
_CONFORMANCE = """
SELECT kind, location, detail, checked_at FROM conformance_finding WHERE message_id = :id ORDER BY id
"""
_DUPLICATE_ROWS = """
SELECT received_at, sender, same_bytes FROM adt_duplicate WHERE original_id = :id ORDER BY id
"""
_RUNS = """
SELECT at, actor, ack_code, errors, accepted_id FROM adt_reprocess WHERE message_id = :id ORDER BY id
"""


def _segments_json(raw: bytes, charset: str | None) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in segments(raw, charset)]


async def detail(conn: AsyncConnection, message_id: uuid.UUID, policy: IntakePolicy) -> dict[str, Any] | None:
    """One message (module docstring), or None when there is no such id."""
    row = (await conn.execute(text(_MESSAGE), {"id": message_id})).mappings().first()
    if row is None:
        return None
    conformance = [dict(r) for r in (await conn.execute(text(_CONFORMANCE), {"id": message_id})).mappings()]
    duplicates = [dict(r) for r in (await conn.execute(text(_DUPLICATE_ROWS), {"id": message_id})).mappings()]
    runs = [dict(r) for r in (await conn.execute(text(_RUNS), {"id": message_id})).mappings()]
    raw, ack = bytes(row["raw"]), bytes(row["ack"])
    event: dict[str, Any] | None = None
    event_status = "none"
    if row["ack_code"] == "AA":
        event_status = "queued" if row["event_queued"] else "published"
        try:
            event = json.loads(derive_event(raw, message_id=row["id"], received_at=row["received_at"],
                                            policy=policy))
        except Exception:  # the relay logs and counts this one (adt_listener.events): say so, do not fail
            event_status = "underivable"
    accepted_run = any(r["accepted_id"] is not None for r in runs)
    return _summary(row) | {
        "charset": row["charset"],
        "segments": _segments_json(raw, row["charset"]),
        "ack": {
            "code": row["ack_code"],
            "sent": row["channel"] != REPROCESS_CHANNEL,
            "segments": _segments_json(ack, row["charset"]),
        },
        "findings": list(row["errors"] or []),
        "conformance": {"checked_at": row["conformance_checked_at"],
                        "pending": not row["conformance_checked"], "findings": conformance},
        "duplicate_rows": duplicates,
        "event_id": row["event_id"],
        "event_status": event_status,
        "event": event,
        "reprocess_runs": runs,
        "reprocessable": row["ack_code"] in ("AE", "AR") and not accepted_run,
    }
