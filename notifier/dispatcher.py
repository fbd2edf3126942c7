"""Getting notices out: the planner turns due notices into deliveries, the sender attempts them.

Both run in every notifier instance; PostgreSQL row locks (``FOR UPDATE SKIP LOCKED``) keep
two instances from planning or sending the same rows.

- **Planner**: per recipient with due notices, in one transaction: lock them, apply the
  rate limit and digest rules (`planning.plan`), render one message per batch and endpoint
  (`render.outbound`) and store it as a ``queued`` delivery. The rendered bytes are stored,
  so every attempt and every re-send transmits the same document under the same key.
- **Sender**: claims due deliveries with a lease, sends them concurrently, and records a
  round's outcomes in one transaction: ``delivered`` / ``sent``, or a retry after an
  exponential backoff with full jitter, or, after the last attempt or a permanent
  refusal, ``failed`` with a dead-letter row and a `notifications.deadletter` event
  (through the outbox, same transaction). A crash between sending and recording leaves
  the lease to expire; the retry carries the same idempotency key, so the receiver can
  tell it already has the message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier import metrics, planning, render, store
from notifier.channels.base import Channel, DeliveryError, PermanentDeliveryError
from notifier.config import NotifyConfig
from notifier.model import DeliveryOutcome, Endpoint, Outbound
from notifier.planning import DueNotice
from notifier.settings import NotifierSettings
from services import lifecycle
from services.outbox import Outbox

log = logging.getLogger(__name__)


def backoff_s(attempt: int, first: float, cap: float, rand: Callable[[float, float], float] = random.uniform) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, jittered in [d/2, d] so a
    recovering receiver is not hit by every sender at the same instant."""
    delay = min(cap, first * 2 ** max(0, attempt - 1))
    return rand(delay / 2, delay)


class Dispatcher:
    def __init__(
        self,
        engine: AsyncEngine,
        cfg: NotifyConfig,
        endpoints: Mapping[str, Mapping[str, Endpoint]],
        channels: Mapping[str, Channel],
        *,
        deadletter_topic: str,
        outbox: Outbox | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        poll_interval_s: float = 1.0,
        concurrency: int = 16,
        on_deadletter: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._cfg = cfg
        self._endpoints = endpoints
        self._channels = channels
        # The notifier's outbox (by default one of the dead-letter topic alone).
        self._outbox = outbox or Outbox.of(NotifierSettings.service, (deadletter_topic,))
        self._deadletter_topic = self._outbox.check(deadletter_topic)
        self._clock = clock
        self._poll = poll_interval_s
        self._concurrency = concurrency
        self._on_deadletter = on_deadletter
        self._plan_wake = asyncio.Event()
        self._send_wake = asyncio.Event()

    def wake(self) -> None:
        """New notices or a re-sent delivery: plan and send now rather than at the next poll."""
        self._plan_wake.set()
        self._send_wake.set()

    # --- planner -------------------------------------------------------------------------

    async def plan_once(self) -> int:
        """Plan every recipient with due notices; the number of deliveries created."""
        now = self._clock()
        async with self._engine.connect() as conn:
            recipients = await store.due_recipients(conn, now)
        made = 0
        for recipient_id in recipients:
            made += await self._plan_recipient(recipient_id, now)
        if made:
            self._send_wake.set()
        return made

    async def _plan_recipient(self, recipient_id: str, now: dt.datetime) -> int:
        recipient = self._cfg.recipient(recipient_id)
        made = 0
        async with self._engine.begin() as conn:
            due = await store.lock_due(conn, recipient_id, now)
            if not due:
                return 0
            if recipient is None:
                await store.set_notice_status(conn, [d.id for d in due], "suppressed", "recipient_not_configured")
                return 0
            sent = await store.batch_times(conn, recipient_id, now - planning.HOUR)
            plan = planning.plan(
                [DueNotice(d.id, d.urgent, d.deliver_after) for d in due],
                max_per_hour=recipient.max_per_hour, digest=recipient.digest_at is not None,
                sent_in_last_hour=sent, now=now,
            )
            by_id = {d.id: d for d in due}
            planned = {n for batch in plan.batches for n in batch}
            if plan.postpone_until is not None:
                await store.postpone(conn, [n for n in by_id if n not in planned], plan.postpone_until)
            endpoints = self._endpoints.get(recipient_id, {})
            unsendable: list[uuid.UUID] = []
            for batch in plan.batches:
                taken: set[uuid.UUID] = set()
                for endpoint in endpoints.values():
                    items = [(n, by_id[n].content) for n in batch if endpoint.takes(by_id[n].content.event)]
                    # A FHIR notification message is about one event: one delivery per notice.
                    groups = [[i] for i in items] if endpoint.kind == "fhir" else ([items] if items else [])
                    for group in groups:
                        ids = [n for n, _ in group]
                        delivery = render.delivery_id(recipient_id, endpoint.name, ids)
                        message = render.outbound(delivery, recipient, endpoint, group, self._cfg, now)
                        received = min(by_id[n].received_at for n in ids)
                        await store.add_delivery(conn, message, recipient_id, ids, received, now)
                        taken.update(ids)
                        made += 1
                unsendable.extend(n for n in batch if n not in taken)
            await store.set_notice_status(conn, sorted(planned - set(unsendable)), "planned")
            if unsendable:
                await store.set_notice_status(conn, unsendable, "suppressed", "no_endpoint_for_event")
        return made

    async def run_planner(self, stop: asyncio.Event) -> None:
        await self._loop(stop, self._plan_wake, self.plan_once, "planner")

    # --- sender --------------------------------------------------------------------------

    async def send_once(self, limit: int = 64) -> int:
        """Claim due deliveries, attempt them concurrently, record every outcome in one transaction."""
        now = self._clock()
        async with self._engine.begin() as conn:
            claimed = await store.claim_due(conn, now, limit, self._cfg.retry.lease_s)
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self._concurrency)

        async def one(delivery: store.DeliveryRow) -> DeliveryOutcome | DeliveryError:
            async with gate:
                return await self._attempt(delivery)

        results = await asyncio.gather(*(one(d) for d in claimed))
        now = self._clock()
        dead = False
        async with self._engine.begin() as conn:
            for delivery, result in zip(claimed, results, strict=True):
                dead |= await self._record(conn, delivery, result, now)
        if dead:
            self._on_deadletter()
        return len(claimed)

    async def _attempt(self, delivery: store.DeliveryRow) -> DeliveryOutcome | DeliveryError:
        endpoint = self._endpoints.get(delivery.recipient_id, {}).get(delivery.endpoint)
        if endpoint is None:
            return PermanentDeliveryError(f"endpoint {delivery.recipient_id}/{delivery.endpoint} is not configured")
        message = Outbound(delivery.id, delivery.idempotency_key, endpoint, delivery.subject,
                           delivery.content_type, delivery.body)
        try:
            return await self._channels[endpoint.kind].send(message)
        except DeliveryError as exc:
            return exc

    async def _record(
        self, conn: AsyncConnection, delivery: store.DeliveryRow, result: DeliveryOutcome | DeliveryError,
        now: dt.datetime,
    ) -> bool:
        """Record one attempt's outcome; True when the delivery went to the dead letters."""
        if not isinstance(result, DeliveryError):
            await store.record_success(conn, delivery, result, now)
            metrics.DELIVERIES.labels(channel=delivery.channel, outcome=result).inc()
            metrics.DELIVERY_LATENCY.labels(channel=delivery.channel).observe(
                (now - delivery.received_at).total_seconds())
            return False
        retry = self._cfg.retry
        if isinstance(result, PermanentDeliveryError) or delivery.attempts >= retry.max_attempts:
            await store.record_dead(conn, delivery, result.reason, now, self._deadletter_topic, self._outbox)
            metrics.DELIVERIES.labels(channel=delivery.channel, outcome="failed").inc()
            log.warning("delivery %s to %s/%s failed for good after %d attempts: %s", delivery.id,
                        delivery.recipient_id, delivery.endpoint, delivery.attempts, result.reason)
            return True
        delay = backoff_s(delivery.attempts, retry.first_delay_s, retry.max_delay_s)
        await store.record_retry(conn, delivery.id, result.reason, now + dt.timedelta(seconds=delay))
        metrics.DELIVERIES.labels(channel=delivery.channel, outcome="retry").inc()
        log.info("delivery %s attempt %d: %s; next in %.1fs", delivery.id, delivery.attempts, result.reason, delay)
        return False

    async def run_sender(self, stop: asyncio.Event) -> None:
        await self._loop(stop, self._send_wake, self.send_once, "sender")

    async def _loop(self, stop: asyncio.Event, wake: asyncio.Event, once: Callable[[], Any], name: str) -> None:
        """At once again while there is work, else at the next poll or wake; a failed round
        (database trouble) is retried at the next poll."""

        async def round_() -> float:
            return 0.0 if await once() else self._poll

        await lifecycle.repeat(stop, round_, what=f"notifier {name}", wake=wake,
                               backoff=lifecycle.Backoff(self._poll, self._poll))

    # --- gauges --------------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        async with self._engine.connect() as conn:
            queued = (await conn.execute(text("SELECT count(*) FROM delivery WHERE status = 'queued'"))).scalar_one()
            metrics.QUEUED.set(queued)
            for row in await pcp_notified(conn, self._cfg.timezone):
                metrics.PCP_NOTIFIED_SHARE.labels(program=row["program"], month=row["month"]).set(row["share"])


async def pcp_notified(conn: Any, timezone: str) -> list[dict[str, Any]]:
    """The pilot's primary care engagement measure (programs.md): per program and month of
    enrollment, the share of enrollees whose PCP was sent the enrollment notice."""
    rows = await conn.execute(
        text(
            "SELECT c.program, to_char(c.enrolled_at AT TIME ZONE :tz, 'YYYY-MM') AS month, count(*) AS enrolled, "
            "count(*) FILTER (WHERE EXISTS (SELECT 1 FROM notice n JOIN delivery d ON n.id = ANY(d.notice_ids) "
            "  WHERE n.source_event_id = c.enrolled_event_id AND n.event_kind = 'enrolled' "
            "  AND d.status IN ('sent', 'delivered'))) AS notified "
            "FROM notifier_candidate c WHERE c.enrolled_at IS NOT NULL GROUP BY 1, 2 ORDER BY 2, 1"
        ),
        {"tz": timezone},
    )
    return [
        {"program": r.program, "month": r.month, "enrolled": r.enrolled, "pcp_notified": r.notified,
         "share": round(r.notified / r.enrolled, 4) if r.enrolled else 0.0}
        for r in rows
    ]
