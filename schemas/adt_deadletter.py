"""`adt.deadletter` v1: a message the listener rejected (AE/AR), for inspection and replay.

It carries the raw bytes (base64, exactly as received) and the findings named by
location and HL7 error code (table 0357); the findings never quote field values.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Literal["E", "W"]
    code: int  # HL7 table 0357
    location: str  # e.g. "PID-3", "MSH-12", "PV1"
    text: str


class AdtDeadLetterV1(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_name: Literal["wpc.adt_deadletter"] = "wpc.adt_deadletter"
    schema_version: Literal[1] = 1
    message_id: uuid.UUID
    received_at: dt.datetime
    channel: Literal["mllp", "http"]
    sender: str
    sending_facility: str
    control_id: str | None
    trigger_event: str | None
    ack_code: Literal["AE", "AR"]
    errors: list[Finding]
    raw_base64: str
