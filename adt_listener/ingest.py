"""One received message, from bytes to the ACK to send: shared by MLLP and HTTP.

    decide (no I/O: intake.intake, without building the event; may the sender use that
    MSH-4?) → custody (the store's group commit) → finish (the ACK to send, metrics)

HTTP awaits each message (`receive`); the MLLP server hands a connection's frames over
as a group with a callback (`submit`), so a busy connection costs no task or future.

The `adt.events` record of an accepted message is derived from the stored message
after the commit (`adt_listener.events`), off the ACK path.

The ACK is the stored one: an AA is released only after the commit, a retransmission
(the same message again: `adt_listener.digest`) gets the original's ACK marked as a
retransmission in MSA-3, and when the database cannot take the message the sender gets
AR 207 (application internal error) and nothing is kept, so it must resend. A different
message under a control id already used is no retransmission: it gets its own ACK.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from adt_listener.conformance import sample_selected
from adt_listener.intake import Finding, Intake, IntakePolicy, intake, internal_error_ack, with_rejection
from adt_listener.senders import OPEN_SENDER, Sender, Senders
from adt_listener.store import Custody, MessageStore, Stored, StoreUnavailable
from services import metrics

log = logging.getLogger(__name__)

UNREGISTERED = Sender(name="unregistered", validation="off")
MSH4_UNKNOWN = Finding("E", 204, "MSH-4", "sending facility is not registered for this listener")
MSH4_NOT_YOURS = Finding("E", 204, "MSH-4", "sending facility does not belong to the authenticated sender")


@dataclass(frozen=True, slots=True)
class Decision:
    """A message decided (`Ingestor.decide`), waiting for custody."""

    intake: Intake
    sender: Sender  # the sender acting: authenticated, owner of MSH-4, or UNREGISTERED
    channel: str
    facility: str  # metrics label
    trigger: str  # metrics label
    check_conformance: bool
    received_at: dt.datetime
    started: float  # perf_counter at the frame's arrival, for the ACK latency


@dataclass(frozen=True, slots=True)
class Reply:
    ack: bytes
    ack_code: str  # AA / AE / AR as decided (AR for "not stored")
    send_ack: bool
    stored: bool
    duplicate: bool = False  # a retransmission, answered with the stored ACK


class Ingestor:
    def __init__(self, store: MessageStore | None, policy: IntakePolicy, senders: Senders) -> None:
        """``store``: None for a caller that only decides (`adt_listener.bulk` writes its own sets)."""
        self._store = store
        self._policy = policy
        self._senders = senders

    def decide(
        self, raw: bytes, *, channel: str, sender: Sender | None, oversized: int | None = None
    ) -> Decision:
        """Everything before custody, without I/O. `sender` is the authenticated one (TLS
        certificate, HTTP token).

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
        trigger = (decided.trigger_event or "unknown")[:8]
        metrics.child(metrics.MESSAGES_RECEIVED, channel, facility, trigger).inc()
        return Decision(
            decided, acting, channel, facility, trigger,
            sample_selected(acting.validation, acting.sample_rate, decided.message_id), now, started,
        )

    def custody(self, d: Decision) -> Custody:
        return Custody(d.intake, d.channel, d.sender.name, d.check_conformance, d.received_at)

    def finish(self, d: Decision, stored: Stored | None) -> Reply:
        """The reply to a decided message, once the store has answered (None: not stored)."""
        if stored is None:
            ack = internal_error_ack(d.intake.raw, now=d.received_at, policy=self._policy)
            reply = Reply(ack, "AR", True, stored=False)
            log.error("message %s from %s not stored: database unavailable", d.intake.control_id, d.sender.name)
        else:
            reply = Reply(stored.ack, d.intake.ack_code, d.intake.send_ack, stored=True, duplicate=stored.duplicate)
        if reply.duplicate:
            log.info("message %s from %s is a retransmission: answered with the stored ACK",
                     d.intake.control_id, d.sender.name)
        metrics.child(metrics.MESSAGES_ACKED, d.channel, d.facility, d.trigger, reply.ack_code).inc()
        metrics.child(metrics.ACK_LATENCY, d.channel).observe(time.perf_counter() - d.started)
        if reply.ack_code != "AA":
            log.info(
                "message %s from %s answered %s: %s",
                d.intake.control_id, d.sender.name, reply.ack_code,
                "; ".join(f"{f.code} {f.location}" for f in d.intake.findings if f.severity == "E"),
            )
        return reply

    async def receive(
        self, raw: bytes, *, channel: str, sender: Sender | None, oversized: int | None = None
    ) -> Reply:
        """Answer one message (the HTTP route; the MLLP server uses `submit`)."""
        d = self.decide(raw, channel=channel, sender=sender, oversized=oversized)
        try:
            if self._store is None:
                raise StoreUnavailable("no store")
            stored: Stored | None = await self._store.store(self.custody(d))
        except StoreUnavailable:
            stored = None
        return self.finish(d, stored)

    def submit(self, decisions: list[Decision], on_replies: Callable[[list[Reply]], None]) -> None:
        """Hand decided messages to the store as one group (committed together, in this
        order); `on_replies` gets their replies, in the same order, after the commit."""

        def stored(results: list[Stored] | None) -> None:
            if results is None:
                on_replies([self.finish(d, None) for d in decisions])
            else:
                on_replies([self.finish(d, s) for d, s in zip(decisions, results, strict=True)])

        try:
            if self._store is None:
                raise StoreUnavailable("no store")
            self._store.submit([self.custody(d) for d in decisions], stored)
        except StoreUnavailable:
            stored(None)

    def _authorize(self, decided: Intake, sender: Sender | None, now: dt.datetime) -> tuple[Intake, Sender]:
        return authorize(decided, sender, self._senders, now=now, policy=self._policy)


def authorize(
    decided: Intake, sender: Sender | None, senders: Senders, *, now: dt.datetime, policy: IntakePolicy
) -> tuple[Intake, Sender]:
    """May this sender use the message's MSH-4? The decision, rejected (AR) when not, and
    the sender acting. `sender` is the authenticated one (TLS certificate, HTTP token), or
    None: then the owner of MSH-4 in ``senders``. Also what a re-run uses
    (`adt_listener.reprocess`), with the senders file as it is now."""
    if senders.open:
        return decided, sender or OPEN_SENDER
    facility = decided.sending_facility
    if sender is not None:
        if decided.control_id is not None and not sender.allows(facility):
            return with_rejection(decided, MSH4_NOT_YOURS, now=now, policy=policy), sender
        return decided, sender
    owner = senders.by_facility(facility)
    if owner is None:
        if decided.ack_code == "AA":
            decided = with_rejection(decided, MSH4_UNKNOWN, now=now, policy=policy)
        return decided, UNREGISTERED
    return decided, owner
