"""Figures the enrollment API reports but does not compute: the notifier's PCP-notified measure.

Why not count here: "PCP notified" means an enrollment notice the notifier's channels
sent or delivered, which only the notifier knows; a second count here (the old
``pcp_notified`` service records, written by nobody unless a person did) gave a second
number, and the pilot's incentive payment depends on one. So the notifier computes it
(`notifier.measures`) and publishes each figure on ``notifications.measures``; this
module's handler keeps the latest figure per program and month (``reported_measure``,
newest ``computed_at`` wins, so a redelivered or late older figure changes nothing),
and `enrollment_svc.measures` reports it with its source and time.

A record that does not decode is kept (``undecodable_event``) and skipped, as for
``adt.events``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.measure import PcpNotifiedV1
from services.consumer import keep_undecodable

__all__ = ["MeasureHandler", "pcp_notified"]

log = logging.getLogger(__name__)

_UPSERT = (
    "INSERT INTO reported_measure (measure, program, month, timezone, enrolled, notified, share, computed_at, "
    "source) VALUES (:m, :p, :mo, :tz, :e, :n, :s, :at, 'notifier') "
    "ON CONFLICT (measure, program, month) DO UPDATE SET timezone = EXCLUDED.timezone, "
    "enrolled = EXCLUDED.enrolled, notified = EXCLUDED.notified, share = EXCLUDED.share, "
    "computed_at = EXCLUDED.computed_at, received_at = now() "
    "WHERE reported_measure.computed_at <= EXCLUDED.computed_at"
)


class MeasureHandler:
    """The consumer of ``notifications.measures``: keep the latest figure of each cell."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def __call__(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        async with self._engine.begin() as conn:
            for record in records:
                try:
                    fact = PcpNotifiedV1.model_validate_json(record.value or b"")
                except ValidationError:
                    await keep_undecodable(conn, record.topic, record.partition, record.offset, record.value or b"")
                    log.error("%s record at partition %d offset %d does not decode; kept, skipped",
                              record.topic, record.partition, record.offset)
                    continue
                await conn.execute(
                    text(_UPSERT),
                    {"m": fact.measure, "p": fact.program, "mo": fact.month, "tz": fact.timezone, "e": fact.enrolled,
                     "n": fact.notified, "s": fact.share, "at": fact.computed_at},
                )


async def pcp_notified(conn: AsyncConnection, month: dt.date) -> dict[str, dict[str, Any]]:
    """The notifier's latest PCP-notified figure of each program for ``month``, as reported."""
    rows = await conn.execute(
        text("SELECT program, timezone, enrolled, notified, share, computed_at FROM reported_measure "
             "WHERE measure = 'pcp_notified' AND month = :mo"),
        {"mo": month.strftime("%Y-%m")},
    )
    return {
        r.program: {"source": "notifier", "enrolled": r.enrolled, "notified": r.notified, "share": r.share,
                    "month_timezone": r.timezone, "computed_at": r.computed_at}
        for r in rows
    }
