"""From notices to the bytes of one message per channel (pure).

- webhook: `schemas.notification.NotificationV1` as JSON (the full minimum-necessary content).
- fhir: a Da Vinci notification bundle, one per notice (`notifier.fhir_bundle`).
- email: no PHI at all. Mail crosses servers we do not control, so a message says what
  happened (kind of event, program unless withheld) and a reference, no time, and the reader
  opens the details in the portal behind their login.

A delivery's id is a uuid5 of (recipient, endpoint, notice ids): planning the same notices
again can only produce the same id, which is also the idempotency key receivers dedupe on.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from notifier.config import NotifyConfig, RecipientConfig
from notifier.fhir_bundle import bundle_bytes, notification_bundle
from notifier.model import Content, Endpoint, Outbound
from schemas.notification import NotificationV1

DELIVERY_NAMESPACE = uuid.UUID("a4f1e2b3-7c6d-5e8f-9a0b-1c2d3e4f5a6b")  # fixed forever: keys dedupe

_CONTENT = TypeAdapter(Content)

_WORDS = {
    "admit": "admission",
    "discharge": "discharge",
    "transfer": "transfer",
    "admit_discharge": "admission and discharge",
    "candidate": "new enrollment candidate",
    "enrolled": "enrollment",
}


def content_to_json(content: Content) -> dict[str, Any]:
    data: dict[str, Any] = _CONTENT.dump_python(content, mode="json")
    return data


def content_from_json(data: dict[str, Any]) -> Content:
    return _CONTENT.validate_python(data)


def delivery_id(recipient_id: str, endpoint: str, notice_ids: Sequence[uuid.UUID]) -> uuid.UUID:
    joined = ",".join(sorted(str(n) for n in notice_ids))
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{recipient_id}\x1f{endpoint}\x1f{joined}")


def _reference(notice_id: uuid.UUID) -> str:
    return str(notice_id)[:8]


def webhook_body(delivery: uuid.UUID, recipient_id: str, notices: Sequence[tuple[uuid.UUID, Content]]) -> bytes:
    doc = {
        "delivery_id": str(delivery),
        "recipient_id": recipient_id,
        "digest": len(notices) > 1,
        "notices": [{"notice_id": str(nid), **content_to_json(c)} for nid, c in notices],
    }
    model = NotificationV1.model_validate(doc)  # the contract is checked before anything leaves
    return model.model_dump_json(exclude_none=True).encode()


def email_text(notices: Sequence[tuple[uuid.UUID, Content]], cfg: NotifyConfig) -> tuple[str, str]:
    """Subject and body: event kinds, programs (unless withheld), references; no PHI."""
    if len(notices) == 1:
        nid, c = notices[0]
        program = f" ({c.program})" if c.program else ""
        subject = f"WPC: {_WORDS[c.event]}{program}, ref {_reference(nid)}"
    else:
        subject = f"WPC: {len(notices)} notifications"
    lines = ["Whole Person Care notifications.", ""]
    for nid, c in notices:
        # No time either: with the recipient's own panel, an admission date can point at a patient.
        program = f" - {c.program}" if c.program else ""
        lines.append(f"- {_WORDS[c.event]}{program}, reference {_reference(nid)}")
    lines += [
        "",
        f"Open the details (login required): {cfg.portal_url}",
        "This message holds no patient information by design; references are valid only in the portal.",
    ]
    return subject, "\n".join(lines) + "\n"


def outbound(
    delivery: uuid.UUID,
    recipient: RecipientConfig,
    endpoint: Endpoint,
    notices: Sequence[tuple[uuid.UUID, Content]],
    cfg: NotifyConfig,
    now: dt.datetime,
) -> Outbound:
    key = str(delivery)
    if endpoint.kind == "webhook":
        subject = f"WPC notification {key[:8]}"
        return Outbound(delivery, key, endpoint, subject, "application/json", webhook_body(delivery, recipient.id,
                                                                                          notices))
    if endpoint.kind == "email":
        subject, text = email_text(notices, cfg)
        return Outbound(delivery, key, endpoint, subject, "text/plain; charset=utf-8", text.encode())
    if len(notices) != 1:
        raise ValueError("a FHIR notification message carries exactly one notice")
    _, content = notices[0]
    bundle = notification_bundle(
        content, bundle_id=key, sender=cfg.sender, recipient_id=recipient.id,
        recipient_endpoint=endpoint.url or "", now=now,
    )
    return Outbound(delivery, key, endpoint, f"WPC notification {key[:8]}", "application/fhir+json",
                    bundle_bytes(bundle))

