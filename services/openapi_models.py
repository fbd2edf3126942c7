"""Response models the APIs declare in OpenAPI (``/docs``, ``/openapi.json``), so a reader
sees what each main endpoint answers without calling it.

Every model keeps fields it does not name (``extra="allow"``): the endpoints build their
answers as dicts, and a field added there must reach the client rather than be dropped
silently by the model; the names here are the contract's core, the rest is listed as
"additional properties".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CandidateOut(_Open):
    id: str
    person_id: str
    program: str = Field(description="TOC, ISR or SUD-ENS")
    status: str = Field(description="queued, pending, accepted, enrolled, declined, expired, withdrawn, disenrolled")
    facility: str | None = None
    encounter_id: str | None = None
    rule_version: str | None = None
    decision: dict[str, Any] | None = Field(default=None, description="Every criterion, met or not, with evidence")
    created_at: dt.datetime | None = None
    proposed_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    status_reason: str | None = None


class CandidateDetailOut(CandidateOut):
    identifiers: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []


class ActionOut(_Open):
    id: str
    status: str


class ServiceOut(_Open):
    id: str
    kind: str


class ProgramMeasuresOut(_Open):
    enrolled: int
    pcp_notified_share: float | None = Field(description="The notifier's figure; target 0.5")
    pcp_notified: dict[str, Any]
    visit_within_3_business_days_share: float | None = Field(default=None, description="TOC only")
    pcp_appointment_within_1_month_share: float | None = Field(default=None, description="TOC only")
    home_visit_within_5_business_days_share: float | None = Field(default=None, description="ISR only")
    readmissions_30d: dict[str, Any]


class MeasuresOut(_Open):
    month: str = Field(description="YYYY-MM, read in the site's zone")
    business_days: str
    programs: dict[str, ProgramMeasuresOut]


class DeliveryOut(_Open):
    delivery_id: str
    recipient_id: str
    endpoint: str
    channel: str
    status: str
    attempts: int
    notices: int
    last_error: str | None = None
