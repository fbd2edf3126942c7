"""Re-processing a rejected message: intake again, with the sender's settings as they are now.

Why: a message rejected for a reason on our side of the interface (its MSH-4 not yet in
``WPC_SENDERS_FILE``, a sender registered under the wrong facility) is still the hospital's
admission; once ops fix the setting, they re-run it instead of asking the hospital to
resend. The senders file is read again for each re-run, so the fix counts without a
restart (the live listener reads it at start: restart it too, for the next messages).

What a re-run does, in one transaction (`reprocess`):

==========================================  ===========================================
the stored message                           answer
==========================================  ===========================================
unknown id                                   `NotFound` (404)
accepted (AA), or already re-run to AA       `Conflict` (409), naming the accepted row
cut at the frame limit (only its head kept)  `Conflict` (409): nothing to re-run
senders file unreadable now                  `Conflict` (409) naming the file
rejected, still rejected                     an ``adt_reprocess`` row (AE/AR, findings)
rejected, now accepted                       a new ``adt_message`` row (channel
                                             ``reprocess``, the original's receive time),
                                             its ``adt_event_queue`` row (the events relay
                                             derives and publishes the event), the
                                             ``adt_reprocess`` row naming it
the sender meanwhile resent it, accepted     `Conflict` (409) naming that row: one event
==========================================  ===========================================

Every re-run writes an ``audit`` row (ids and codes only). Exactly once: the original row
is locked (``FOR UPDATE``) for the re-run, ``adt_reprocess`` has at most one accepted
outcome per message (unique index), and the accepted row itself falls under the accepted
messages' unique (MSH-4, MSH-10, content digest) index like any message received.

The rejected row and the ACK sent for it are never changed: they are what the sender was
told. No new ACK is sent (the sender is not waiting for one); the one intake built is
stored with the accepted row and shown as "not sent".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.conformance import sample_selected
from adt_listener.ingest import authorize
from adt_listener.intake import Intake, IntakePolicy, intake
from adt_listener.senders import Sender, Senders, SendersFileError, load_senders
from services import audit

CHANNEL = "reprocess"


class ReprocessError(Exception):
    """A re-run that cannot be done; ``str()`` is the reason shown to ops (ids only).

    ReprocessError
    ├── NotFound   no such message (404)
    └── Conflict   nothing to re-run, or done already (409)
    """


class NotFound(ReprocessError):
    pass


class Conflict(ReprocessError):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: uuid.UUID  # the rejected message re-run
    ack_code: str  # AA / AE / AR now
    findings: list[dict[str, Any]]
    accepted_id: uuid.UUID | None  # the accepted row, when AA
    sender: str  # the sender acting in the re-run


_ORIGINAL = text("""
    SELECT id, channel, sender, sending_facility, control_id, ack_code, errors, raw, received_at
    FROM adt_message WHERE id = :id FOR UPDATE
""")
_ACCEPTED_BEFORE = text("SELECT accepted_id FROM adt_reprocess WHERE message_id = :id AND accepted_id IS NOT NULL")
_INSERT_ACCEPTED = text("""
    INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, message_type, trigger_event,
                             hl7_version, ack_code, errors, ack, raw, charset, event_id, patient_key,
                             conformance_checked, received_at, content_digest)
    VALUES (:id, :channel, :sender, :facility, :control_id, :message_type, :trigger_event, :hl7_version,
            'AA', CAST(:errors AS jsonb), :ack, :raw, :charset, :event_id, :patient_key, :checked,
            :received_at, :digest)
    ON CONFLICT (sending_facility, control_id, content_digest) WHERE ack_code = 'AA' DO NOTHING
    RETURNING id
""")
_EXISTING = text("""
    SELECT id FROM adt_message
    WHERE sending_facility = :facility AND control_id = :control_id AND content_digest = :digest AND ack_code = 'AA'
""")
_QUEUE = text("INSERT INTO adt_event_queue (message_id) VALUES (:id)")
_RECORD = text("""
    INSERT INTO adt_reprocess (message_id, actor, ack_code, errors, accepted_id)
    VALUES (:message_id, :actor, :ack_code, CAST(:errors AS jsonb), :accepted_id)
""")


def _cut_at_frame_limit(errors: list[dict[str, Any]]) -> bool:
    """The MLLP server kept only the head of a frame over the limit (`Ingestor.decide`)."""
    return any(e.get("code") == 100 and "frame limit" in str(e.get("text", "")) for e in errors)


def sender_for(senders: Senders, stored_sender: str, channel: str) -> Sender | None:
    """The sender to re-run as, from the stored row's ``sender`` and ``channel``.

    Over HTTP (a token) or from a sender with a client certificate, the message came from
    an authenticated sender: it must still be allowed its MSH-4. Otherwise (plain MLLP,
    sender known by its MSH-4, or unregistered then) None: the owner of MSH-4 in the file
    as it is now decides, as for a message arriving now.
    """
    named = senders.named(stored_sender)
    if named is not None and (channel == "http" or named.tls_client_cn):
        return named
    return None


async def reprocess(
    engine: AsyncEngine,
    message_id: uuid.UUID,
    *,
    actor: str,
    policy: IntakePolicy,
    senders_file: Path | None,
    now: dt.datetime | None = None,
) -> Outcome:
    """Re-run intake on a stored rejected message (see the module docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    async with engine.begin() as conn:
        row = (await conn.execute(_ORIGINAL, {"id": message_id})).mappings().first()
        if row is None:
            raise NotFound(f"no message {message_id}")
        if row["ack_code"] == "AA":
            what = "a re-run's accepted row" if row["channel"] == CHANNEL else "accepted (AA) when it came"
            raise Conflict(f"message {message_id} was {what}: only rejected (AE/AR) messages are re-run")
        before = (await conn.execute(_ACCEPTED_BEFORE, {"id": message_id})).scalar()
        if before is not None:
            raise Conflict(f"message {message_id} was re-run already and accepted as message {before}")
        errors = list(row["errors"] or [])
        if _cut_at_frame_limit(errors):
            raise Conflict(f"message {message_id} was over the frame limit: only its head is stored, "
                           "the sender must send it again")
        try:
            senders = await asyncio.to_thread(load_senders, senders_file)
        except SendersFileError as exc:
            raise Conflict(f"WPC_SENDERS_FILE cannot be read now ({exc}); fix it, then re-run") from exc
        raw = bytes(row["raw"])
        decided = intake(raw, received_at=now, policy=policy, with_event=False)
        decided, acting = authorize(
            decided, sender_for(senders, row["sender"], row["channel"]), senders, now=now, policy=policy
        )
        findings = [asdict(f) for f in decided.findings]
        accepted_id = None
        if decided.ack_code == "AA":
            accepted_id = await _store_accepted(conn, decided, acting, row["received_at"], findings)
        await conn.execute(_RECORD, {"message_id": message_id, "actor": actor, "ack_code": decided.ack_code,
                                     "errors": json.dumps(findings), "accepted_id": accepted_id})
        detail = f"message {message_id}: {row['ack_code']} -> {decided.ack_code}"
        if accepted_id is not None:
            detail += f", accepted as message {accepted_id}"
        await audit.record(conn, actor, "message.reprocess", detail=detail)
    return Outcome(message_id, decided.ack_code, findings, accepted_id, acting.name)


async def _store_accepted(
    conn: Any, decided: Intake, acting: Sender, received_at: dt.datetime, findings: list[dict[str, Any]]
) -> uuid.UUID:
    """The accepted row and its queue row; `Conflict` when that message is accepted already."""
    params = {
        "id": decided.message_id, "channel": CHANNEL, "sender": acting.name,
        "facility": decided.sending_facility, "control_id": decided.control_id,
        "message_type": decided.message_type, "trigger_event": decided.trigger_event,
        "hl7_version": decided.hl7_version, "errors": json.dumps(findings), "ack": decided.ack,
        "raw": decided.raw, "charset": decided.charset, "event_id": decided.event_id,
        "patient_key": decided.patient_key,
        "checked": not sample_selected(acting.validation, acting.sample_rate, decided.message_id),
        "received_at": received_at, "digest": decided.content_digest,
    }
    inserted = (await conn.execute(_INSERT_ACCEPTED, params)).scalar()
    if inserted is None:
        existing = (await conn.execute(_EXISTING, params)).scalar()
        raise Conflict(f"this message is accepted already as message {existing} (the sender sent it again)")
    await conn.execute(_QUEUE, {"id": inserted})
    return uuid.UUID(str(inserted))
