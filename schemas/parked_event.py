"""`enrollment.deadletter` / `notifier.deadletter` v1: a record a consumer set aside (parked).

Published once, when the record is parked, through the consumer's outbox in the
transaction that keeps it in ``parked_event``. It carries the record as consumed
(base64: key and value bytes exactly as read), where it was read, and why it failed:
the error class and the code locations of the traceback, never the exception's text
(it may quote the data). The value is the source topic's own record, as protected as
that topic. ``event_id`` is the dead letter's own id (stable per group and record);
``source_event_id`` the record's, when it decoded far enough to say.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ParkedEventV1(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_name: Literal["wpc.parked_event"] = "wpc.parked_event"
    schema_version: Literal[1] = 1
    event_id: uuid.UUID
    parked_id: int
    consumer_group: str
    topic: str
    partition: int
    offset: int
    source_event_id: uuid.UUID | None
    error_class: str
    traceback: str
    attempts: int
    parked_at: dt.datetime
    key_base64: str | None
    value_base64: str
