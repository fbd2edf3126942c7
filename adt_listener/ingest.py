"""One received message, from bytes to the ACK to send: shared by MLLP and HTTP.

    decide (pure: intake.intake, without building the event) → check the sender may use
    that MSH-4 → store (custody, group commit) → the ACK to send

The `adt.events` record of an accepted message is derived from the stored message
after the commit (`adt_listener.events`), off the ACK path.

The ACK is the stored one: an AA is released only after the commit, a retransmission
gets the original's ACK, and when the database cannot take the message the sender gets
AR 207 (application internal error) and nothing is kept, so it must resend.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from adt_listener.conformance import sample_selected
from adt_listener.intake import Finding, Intake, IntakePolicy, intake, internal_error_ack, with_rejection
from adt_listener.senders import OPEN_SENDER, Sender, Senders
from adt_listener.store import MessageStore, StoreUnavailable
from services import metrics

log = logging.getLogger(__name__)

UNREGISTERED = Sender(name="unregistered", validation="off")
MSH4_UNKNOWN = Finding("E", 204, "MSH-4", "sending facility is not registered for this listener")
MSH4_NOT_YOURS = Finding("E", 204, "MSH-4", "sending facility does not belong to the authenticated sender")


@dataclass(frozen=True, slots=True)
class Reply:
    ack: bytes
    ack_code: str  # AA / AE / AR as decided (AR for "not stored")
    send_ack: bool
    stored: bool
    duplicate: bool = False


class Ingestor:
    def __init__(self, store: MessageStore, policy: IntakePolicy, senders: Senders) -> None:
        self._store = store
        self._policy = policy
        self._senders = senders

    async def receive(
        self, raw: bytes, *, channel: str, sender: Sender | None, oversized: int | None = None
    ) -> Reply:
        """Answer one message. `sender` is the authenticated one (TLS certificate, HTTP token).

        `oversized`: the frame exceeded the size limit; `raw` is only its head, kept so
        the AR can echo MSH-10, and the message is rejected whatever it says.
        """
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        decided = intake(raw, received_at=now, policy=self._policy, with_event=False)
        if oversized is not None:
            decided = with_rejection(
                decided,
                Finding("E", 100, "", f"message exceeds the {oversized}-byte frame limit"),
                now=now,
                policy=self._policy,
            )
        decided, acting = self._authorize(decided, sender, now)
        facility = metrics.facility_label(decided.sending_facility)
        trigger = decided.trigger_event or "unknown"
        metrics.child(metrics.MESSAGES_RECEIVED, channel, facility, trigger[:8]).inc()
        check = sample_selected(acting.validation, acting.sample_rate, decided.message_id)
        try:
            stored = await self._store.store(
                decided, channel=channel, sender=acting.name, check_conformance=check, received_at=now
            )
        except StoreUnavailable:
            ack = internal_error_ack(raw, now=now, policy=self._policy)
            reply = Reply(ack, "AR", True, stored=False)
            log.error("message %s from %s not stored: database unavailable", decided.control_id, acting.name)
        else:
            reply = Reply(stored.ack, decided.ack_code, decided.send_ack, stored=True, duplicate=stored.duplicate)
        metrics.child(metrics.MESSAGES_ACKED, channel, facility, trigger[:8], reply.ack_code).inc()
        metrics.child(metrics.ACK_LATENCY, channel).observe(time.perf_counter() - started)
        if reply.ack_code != "AA":
            log.info(
                "message %s from %s answered %s: %s",
                decided.control_id, acting.name, reply.ack_code,
                "; ".join(f"{f.code} {f.location}" for f in decided.findings if f.severity == "E"),
            )
        return reply

    def _authorize(self, decided: Intake, sender: Sender | None, now: dt.datetime) -> tuple[Intake, Sender]:
        if self._senders.open:
            return decided, sender or OPEN_SENDER
        facility = decided.sending_facility
        if sender is not None:
            if decided.control_id is not None and not sender.allows(facility):
                return with_rejection(decided, MSH4_NOT_YOURS, now=now, policy=self._policy), sender
            return decided, sender
        owner = self._senders.by_facility(facility)
        if owner is None:
            if decided.ack_code == "AA":
                decided = with_rejection(decided, MSH4_UNKNOWN, now=now, policy=self._policy)
            return decided, UNREGISTERED
        return decided, owner
