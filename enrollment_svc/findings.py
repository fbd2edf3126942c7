"""Feed-quality findings the enrollment service makes of the ADT it applies, per facility.

Kinds (no PHI: a facility's MSH-4, a kind, counts and when first and last seen)::

    visit_number_reused  an event's facility and visit number (PV1-19) already belong to
                         another person's encounter: the sender reused or recycled the
                         number. The event makes its own encounter (store.py), so one
                         patient's diagnoses never join another's history.
    clock_ahead          the event time (EVN-2, else MSH-7) is more than the rules'
                         ``site.clock_ahead_margin_minutes`` after the listener received the
                         message: the sender's clock or time zone is wrong (local times sent
                         8 hours ahead read as if in the future). The event is still used.

The listener's own report (`GET /v1/feed-quality` of the listener) lives in its database;
these are the enrollment service's, served by its API (`GET /v1/feed-findings`).

Why shards: every event of a facility with a wrong clock is a finding, and one counter
row per facility would make every lane applying that facility's events wait for the
others' commits. A counter per (facility, kind, shard) with the shard taken from the
patient key as the lanes are (`handler.lane_of`, CRC-32) keeps lanes apart whenever the
number of lanes divides `SHARDS`; a report adds the shards up.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable
from typing import Any, Final

from enrollment_svc.sql import Sql

__all__ = ["CLOCK_AHEAD", "KINDS", "SHARDS", "VISIT_REUSED", "clock_ahead", "count", "count_all", "report"]

VISIT_REUSED: Final = "visit_number_reused"
CLOCK_AHEAD: Final = "clock_ahead"
KINDS: Final = (VISIT_REUSED, CLOCK_AHEAD)
SHARDS: Final = 16


def clock_ahead(event_time: dt.datetime | None, received_at: dt.datetime, margin: dt.timedelta) -> bool:
    """Whether an event claims a time further after its receipt than ``margin`` (both aware)."""
    return event_time is not None and event_time - received_at > margin


def shard(patient_key: str) -> int:
    return zlib.crc32(patient_key.encode()) % SHARDS


async def count(db: Sql, facility: str, kind: str, patient_key: str, at: dt.datetime) -> None:
    """Count one finding (in the caller's transaction: exactly once with the event it is about)."""
    await db.execute(
        "INSERT INTO feed_finding (facility, kind, shard, count, first_seen, last_seen) "
        "VALUES (:f, :k, :s, 1, :at, :at) "
        "ON CONFLICT (facility, kind, shard) DO UPDATE SET count = feed_finding.count + 1, "
        "first_seen = LEAST(feed_finding.first_seen, EXCLUDED.first_seen), "
        "last_seen = GREATEST(feed_finding.last_seen, EXCLUDED.last_seen)",
        {"f": facility, "k": kind, "s": shard(patient_key), "at": at},
    )


async def count_all(db: Sql, found: Iterable[tuple[str, str, str, dt.datetime]]) -> None:
    """Count many findings, (facility, kind, patient key, at) each, as `count` would one by one:
    one row per counter, in one pipelined round trip (the bulk path: a facility with a wrong
    clock makes every one of its events a finding)."""
    counters: dict[tuple[str, str, int], list[Any]] = {}
    for facility, kind, patient_key, at in found:
        counter = counters.setdefault((facility, kind, shard(patient_key)), [0, at, at])
        counter[0] += 1
        counter[1], counter[2] = min(counter[1], at), max(counter[2], at)
    await db.execute_many(
        "INSERT INTO feed_finding (facility, kind, shard, count, first_seen, last_seen) "
        "VALUES (:f, :k, :s, :n, :first, :last) "
        "ON CONFLICT (facility, kind, shard) DO UPDATE SET count = feed_finding.count + EXCLUDED.count, "
        "first_seen = LEAST(feed_finding.first_seen, EXCLUDED.first_seen), "
        "last_seen = GREATEST(feed_finding.last_seen, EXCLUDED.last_seen)",
        [{"f": f, "k": k, "s": s, "n": n, "first": first, "last": last}
         for (f, k, s), (n, first, last) in sorted(counters.items())],
    )


async def report(db: Sql, facility: str | None = None) -> list[dict[str, Any]]:
    """Findings per facility and kind, shards added up, most frequent first."""
    rows = await db.fetch(
        "SELECT facility, kind, sum(count) AS n, min(first_seen) AS first_seen, "
        "max(last_seen) AS last_seen FROM feed_finding WHERE CAST(:f AS text) IS NULL OR facility = :f "
        "GROUP BY facility, kind ORDER BY sum(count) DESC, facility, kind",
        {"f": facility},
    )
    return [
        {"facility": r["facility"], "kind": r["kind"], "count": int(r["n"]), "first_seen": r["first_seen"],
         "last_seen": r["last_seen"]}
        for r in rows
    ]
