"""Applies `enrollment.candidates`, `enrollment.events` and `adt.events` records. A consumer
batch is one transaction holding every record's dedupe mark and everything it causes
(candidate state, watches, notices), so a redelivered record is a no-op and a crash
leaves nothing half done.

The two enrollment topics are keyed by person but are two topics, so a candidate's
``enrolled`` event can arrive before the candidate itself; `notifier_candidate` collects
both, and the PCP's enrollment notice is made when both are known, exactly once
(``enrolled_notified``).

A record that does not decode against its contract is kept in ``undecodable_event`` and
skipped. When the batch's transaction fails, transient trouble (the database away,
`services.consumer.is_transient`) propagates and the consumer loop re-reads the batch;
any other failure has the batch applied again one record per transaction, and a record
that keeps failing on its own is parked (`services.parking`) while the others are
applied, once each.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier import metrics, policy, store
from notifier.config import NotifyConfig
from notifier.store import ENDED, CandidateState
from schemas.adt_event import AdtEventV1
from schemas.enrollment import EnrollmentCandidateV1, EnrollmentEventV1
from services.consumer import is_transient, keep_undecodable
from services.parking import Parking, RecordRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    adt_events: str
    candidates: str
    enrollment_events: str
    deadletter: str


class NotifierHandler:
    def __init__(
        self,
        engine: AsyncEngine,
        cfg: NotifyConfig,
        topics: Topics,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_notice: Callable[[], None] = lambda: None,
        parking: Parking | None = None,
    ) -> None:
        self._engine = engine
        self._cfg = cfg
        self._topics = topics
        self._clock = clock
        self._on_notice = on_notice
        self._parking = parking  # None: a failing record fails the batch (tests of the flow)

    async def __call__(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """A consumer batch (a fetch, every partition of it) in one transaction: fewer commits,
        same guarantees, since every record's dedupe mark commits with its effects or not at all."""
        refs = [RecordRef.of(r) for r in records]
        if self._parking is None:
            await self._apply_all(refs)
            return
        try:
            await self._apply_all(refs)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.info("batch of %d records failed (%s); applying them one by one", len(refs), type(exc).__name__)
            for ref in refs:
                if await self._parking.attempt(ref, functools.partial(self._apply_all, [ref])) is None:
                    metrics.EVENTS.labels(topic=ref.topic, outcome="parked").inc()

    async def apply(self, topic: str, value: bytes, *, partition: int = 0, offset: int = 0) -> None:
        await self._apply_all([RecordRef(topic, partition, offset, None, value)])

    async def reapply(self, record: RecordRef) -> None:
        """Apply a parked record again (`services.parking.Parking.redrive`); raises when it
        still fails. A record applied before is a duplicate, a no-op."""
        await self._apply_all([record])

    async def _apply_all(self, records: Sequence[RecordRef]) -> int:
        """The records in one transaction; returns the number of notices made.

        Per batch, not per record: the dedupe marks (one statement), and, when the batch
        holds only `adt.events` (nothing in it can add or drop a watch), which of its
        patients anyone watches (one statement), so an admission of a patient nobody
        watches costs no statement of its own."""
        outcomes: list[tuple[str, str]] = []
        made = 0
        decoded = [self._decode(r) for r in records]
        async with self._engine.begin() as conn:
            fresh = await store.mark_all_processed(
                conn, [(e.event_id, r.topic) for r, e in zip(records, decoded, strict=True) if e is not None])
            watched = await self._watched(conn, decoded)
            for r, event in zip(records, decoded, strict=True):
                if event is None:
                    await keep_undecodable(conn, r.topic, r.partition, r.offset, r.value)
                    log.error("%s record at partition %d offset %d does not decode; kept in undecodable_event",
                              r.topic, r.partition, r.offset)
                    outcome, n = "undecodable", 0
                elif event.event_id not in fresh:
                    outcome, n = "duplicate", 0
                else:
                    fresh.discard(event.event_id)  # the same event twice in the batch: the second is a duplicate
                    outcome, n = await self._apply_one(conn, event, watched)
                outcomes.append((r.topic, outcome))
                made += n
        for topic, outcome in outcomes:
            metrics.EVENTS.labels(topic=topic, outcome=outcome).inc()
        if made:
            self._on_notice()
        return made

    def _decode(self, record: RecordRef) -> EnrollmentCandidateV1 | EnrollmentEventV1 | AdtEventV1 | None:
        """The record's event, or None when it breaks its topic's contract."""
        try:
            if record.topic == self._topics.candidates:
                return EnrollmentCandidateV1.model_validate_json(record.value)
            if record.topic == self._topics.enrollment_events:
                return EnrollmentEventV1.model_validate_json(record.value)
            return AdtEventV1.model_validate_json(record.value)
        except ValidationError:
            return None

    async def _watched(
        self, conn: AsyncConnection, events: Sequence[EnrollmentCandidateV1 | EnrollmentEventV1 | AdtEventV1 | None]
    ) -> set[str] | None:
        """The watched keys among the batch's patients, or None (look per event) when a record
        of the batch may change the watches."""
        if not all(isinstance(e, AdtEventV1) for e in events):
            return None
        keys = [k for e in events if isinstance(e, AdtEventV1)
                for k in policy.keys_of(e.patient.identifiers, e.patient.medi_cal_id, e.sending_facility)]
        return await store.watched_keys(conn, keys)

    async def _apply_one(
        self, conn: AsyncConnection, event: EnrollmentCandidateV1 | EnrollmentEventV1 | AdtEventV1,
        watched: set[str] | None,
    ) -> tuple[str, int]:
        now = self._clock()
        if isinstance(event, EnrollmentCandidateV1):
            return "applied", await self._candidate(conn, event, now)
        if isinstance(event, EnrollmentEventV1):
            return "applied", await self._status(conn, event, now)
        return "applied", await self._encounter(conn, event, now, watched)

    # --- enrollment.candidates -----------------------------------------------------------

    async def _candidate(self, conn: AsyncConnection, candidate: EnrollmentCandidateV1, now: dt.datetime) -> int:
        state = await store.save_proposal(conn, candidate)
        made = await self._store_notices(conn, policy.candidate_notices(candidate, self._cfg, now))
        if state.status == "enrolled":  # its enrollment arrived first
            made += await self._enrolled(conn, state, now)
        return made

    # --- enrollment.events ---------------------------------------------------------------

    async def _status(self, conn: AsyncConnection, event: EnrollmentEventV1, now: dt.datetime) -> int:
        state = await store.save_status(conn, event)
        if event.to_status == "enrolled":
            return await self._enrolled(conn, state, now)
        if event.to_status in ENDED:
            await store.drop_watches(conn, f"enrolled:{event.candidate_id}")
        return 0

    async def _enrolled(self, conn: AsyncConnection, state: CandidateState, now: dt.datetime) -> int:
        """Watch the enrollee for its care team and PCP, and tell the PCP (once)."""
        cand = state.proposal
        if cand is None or state.enrolled_notified or state.status in ENDED:
            return 0
        assert state.enrolled_at is not None and state.enrolled_event_id is not None
        await store.set_enrolled_notified(conn, state.candidate_id)
        facility = cand.trigger.facility if cand.trigger else ""
        keys = policy.keys_of(cand.identifiers, cand.medi_cal_id, facility)
        reason = f"enrolled:{cand.candidate_id}"
        team = self._cfg.care_team_for(cand.program, cand.trigger.facility if cand.trigger else None)
        if team is not None:
            await store.add_watches(conn, keys, team.id, reason, cand.program, cand.person_id)
        roster = None
        if cand.medi_cal_id:
            local_day = state.enrolled_at.astimezone(self._cfg.zone).date()
            roster = await store.roster_practice(conn, cand.medi_cal_id, local_day)
        practice = policy.pcp_practice(cand.primary_care, roster, self._cfg)
        if practice is None:
            # Counted in the PCP-notified measure's denominator; the audit says why not told.
            await store.audit(conn, "withhold", person_id=cand.person_id, candidate_id=cand.candidate_id,
                              detail="recipient=pcp reason=pcp_unknown event=enrolled")
            metrics.NOTICES.labels(kind="enrolled", outcome="no_pcp").inc()
            return 0
        await store.add_watches(conn, keys, practice.id, reason, cand.program, cand.person_id)
        scopes = (await store.consented_scopes(conn, [cand.person_id], now)).get(cand.person_id, frozenset())
        planned = policy.enrolled_notice(cand, state.enrolled_event_id, state.enrolled_at, practice, scopes,
                                         self._cfg, now)
        return await self._store_notices(conn, [planned])

    # --- adt.events ----------------------------------------------------------------------

    async def _encounter(self, conn: AsyncConnection, event: AdtEventV1, now: dt.datetime,
                         watched: set[str] | None = None) -> int:
        """``watched``: the keys anyone watched when the batch began (None: unknown)."""
        visit_number = event.visit.visit_number if event.visit else None
        key = policy.encounter_key(event.sending_facility, visit_number)
        if event.trigger_event.upper() == "A11" and key is not None:
            await store.cancel_pending_admits(conn, key)
            return 0
        if policy.encounter_event_kind(event) is None:
            return 0
        keys = policy.keys_of(event.patient.identifiers, event.patient.medi_cal_id, event.sending_facility)
        if watched is not None and watched.isdisjoint(keys):
            return 0
        found = await store.watchers(conn, keys)
        if not found:
            return 0
        watchers = []
        for recipient_id, program, person_id in found:
            recipient = self._cfg.recipient(recipient_id)
            if recipient is not None:  # a recipient removed from the configuration is told nothing
                watchers.append((recipient, program, person_id))
        persons = sorted({p for _, _, p in watchers if p is not None})
        consents = await store.consented_scopes(conn, persons, now)
        return await self._store_notices(conn, policy.encounter_notices(event, watchers, consents, self._cfg, now))

    # --- notices -------------------------------------------------------------------------

    async def _store_notices(self, conn: AsyncConnection, planned: Sequence[policy.Planned]) -> int:
        made = 0
        for p in planned:
            notice = p.notice
            kind = notice.content.event
            if p.suppressed_reason is not None:
                if await store.add_notice(conn, notice, status="suppressed", reason=p.suppressed_reason):
                    await store.audit(conn, "withhold", person_id=notice.content.person_id,
                                      candidate_id=notice.content.candidate_id,
                                      detail=f"recipient={notice.recipient_id} reason={p.suppressed_reason} "
                                             f"event={kind}")
                metrics.NOTICES.labels(kind=kind, outcome="suppressed").inc()
                continue
            if notice.encounter_key is not None:
                pending = await store.pending_for_encounter(conn, notice.recipient_id, notice.encounter_key)
                merged = policy.bundle(pending[1], notice.content) if pending is not None else None
                if pending is not None and merged is not None:
                    await store.rewrite_notice(conn, pending[0], merged)
                    await store.add_notice(conn, notice, status="bundled", reason=f"bundled into {pending[0]}")
                    metrics.NOTICES.labels(kind=kind, outcome="bundled").inc()
                    continue
            if await store.add_notice(conn, notice, status="pending"):
                made += 1
                metrics.NOTICES.labels(kind=kind, outcome="queued").inc()
        return made
