"""Publishing the PCP-notified measure: the one place it is computed is the notifier.

`dispatcher.pcp_notified` computes, per program and month of enrollment, how many
enrollees there were and for how many the PCP's enrollment notice was sent or
delivered. That figure is the pilot's primary care engagement measure and it must be
one number, so the enrollment service does not count on its own: `publish_changed`
writes every figure that changed since it was last published to the outbox
(`notifications.measures`, `schemas.measure.PcpNotifiedV1`), in one transaction with
the record of what was published (``notifier_measure``); the relay publishes it and the
enrollment service reports it (`enrollment_svc.reported`).

Two notifier instances: the transaction takes an advisory lock first and the second
one skips its round; the figures it would publish are the same anyway (same event ids).
"""

from __future__ import annotations

import datetime as dt
import zlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.dispatcher import pcp_notified
from notifier.settings import NotifierSettings
from schemas.measure import PcpNotifiedV1, measure_event_id
from services.outbox import INSERT as OUTBOX_INSERT
from services.outbox import Outbox

__all__ = ["publish_changed"]

_LOCK = zlib.crc32(b"wpc notifier measures")
_MEASURE = "pcp_notified"


async def publish_changed(
    engine: AsyncEngine, topic: str, timezone: str, now: dt.datetime, outbox: Outbox | None = None
) -> int:
    """Put every PCP-notified figure that changed on the outbox (the notifier's: ``outbox``,
    by default one of ``topic`` alone); the number put."""
    outbox = outbox or Outbox.of(NotifierSettings.service, (topic,))
    outbox.check(topic)
    async with engine.begin() as conn:
        if not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK})).scalar_one():
            return 0
        published = {
            (r.program, r.month): (r.enrolled, r.notified)
            for r in await conn.execute(
                text("SELECT program, month, enrolled, notified FROM notifier_measure WHERE measure = :m"),
                {"m": _MEASURE},
            )
        }
        put = 0
        for row in await pcp_notified(conn, timezone):
            program, month, enrolled, notified = row["program"], row["month"], row["enrolled"], row["pcp_notified"]
            if published.get((program, month)) == (enrolled, notified):
                continue
            fact = PcpNotifiedV1(
                event_id=measure_event_id(_MEASURE, program, month, enrolled, notified),
                program=program,
                month=month,
                timezone=timezone,
                enrolled=enrolled,
                notified=notified,
                share=round(notified / enrolled, 4) if enrolled else None,
                computed_at=now,
            )
            await conn.execute(text(OUTBOX_INSERT), outbox.row(
                topic, f"{_MEASURE}|{program}|{month}", fact.model_dump_json().encode(), fact.event_id))
            await conn.execute(
                text(
                    "INSERT INTO notifier_measure (measure, program, month, enrolled, notified, published_at) "
                    "VALUES (:m, :p, :mo, :e, :n, :at) ON CONFLICT (measure, program, month) DO UPDATE SET "
                    "enrolled = EXCLUDED.enrolled, notified = EXCLUDED.notified, published_at = EXCLUDED.published_at"
                ),
                {"m": _MEASURE, "p": program, "mo": month, "e": enrolled, "n": notified, "at": now},
            )
            put += 1
    return put
