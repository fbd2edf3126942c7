"""What the notifier sends: the signed webhook body (v1), and its dead-letter event.

A webhook receiver checks ``X-WPC-Signature`` (HMAC-SHA256, see notifier/channels/webhook.py)
and dedupes on ``Idempotency-Key`` (equal to ``delivery_id``): a delivery is re-sent after
a timeout or a crash with the same key and the same body.

One webhook body carries one notice, or several when they were bundled into a digest
(rate limit or daily digest). Each notice already holds only what its recipient may see:
``withheld`` names what was removed (42 CFR Part 2: ``sud_diagnoses``, ``program``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NoticeEvent = Literal["admit", "discharge", "transfer", "admit_discharge", "candidate", "enrolled"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PatientIdV1(_Model):
    value: str
    authority: str | None = None
    type_code: str | None = None


class PatientV1(_Model):
    ids: list[PatientIdV1]
    medi_cal_id: str | None = None
    family: str | None = None
    given: str | None = None
    birth_date: dt.date | None = None
    sex: str | None = None


class DiagnosisV1(_Model):
    code: str
    system: str | None = None
    description: str | None = None


class EncounterV1(_Model):
    facility: str
    visit_number: str | None = None
    patient_class: str | None = None
    location: str | None = None
    hospital_service: str | None = None
    admit_time: dt.datetime | None = None
    discharge_time: dt.datetime | None = None
    discharge_disposition: str | None = None
    diagnoses: list[DiagnosisV1] = []


class PractitionerV1(_Model):
    id: str | None = None
    family: str | None = None
    given: str | None = None


class NoticeV1(_Model):
    notice_id: uuid.UUID
    event: NoticeEvent
    occurred_at: dt.datetime
    patient: PatientV1
    person_id: uuid.UUID | None = None
    program: str | None = None
    candidate_id: uuid.UUID | None = None
    encounter: EncounterV1 | None = None
    pcp: PractitionerV1 | None = None
    reason: str | None = None
    withheld: list[str] = Field(default=[], description="What minimum-necessary removed for this recipient")


class NotificationV1(_Model):
    schema_name: Literal["wpc.notification"] = "wpc.notification"
    schema_version: Literal[1] = 1
    delivery_id: uuid.UUID
    recipient_id: str
    digest: bool = Field(description="True when several notices were bundled into this one message")
    notices: list[NoticeV1] = Field(min_length=1)


class NotificationDeadLetterV1(_Model):
    """Published to `notifications.deadletter` when a delivery gave up; carries no PHI."""

    schema_name: Literal["wpc.notification_deadletter"] = "wpc.notification_deadletter"
    schema_version: Literal[1] = 1
    event_id: uuid.UUID  # = delivery_id
    delivery_id: uuid.UUID
    recipient_id: str
    endpoint: str
    channel: str
    notice_ids: list[uuid.UUID]
    attempts: int
    reason: str
    at: dt.datetime
