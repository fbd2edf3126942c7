"""`notifications.measures` v1: the pilot's PCP-notified measure, as the notifier computes it.

The primary care engagement measure (programs.md: the share of enrollees whose PCP was
notified of the enrollment; the incentive payment drops 4% for every point short of
50%) must be one number. It is computed in one place, the notifier, which alone knows
which enrollment notices its channels delivered (`notifier.measures`). The notifier
publishes the figure of each program and month of enrollment whenever it changes; the
enrollment service keeps the latest figure and its API reports it, naming the source
and when it was computed, beside the measures it computes itself.

Kafka key: ``<measure>|<program>|<month>`` (the figures of one cell in order). The
``event_id`` is derived from the figure, so the same figure published twice (two
notifier instances, a retried publish) is one event; consumers keep the latest
``computed_at``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.enrollment import Program

# Namespace for uuid5 ids of published measures; fixed forever (changing it breaks dedupe).
MEASURE_NAMESPACE = uuid.UUID("5c0f2b7e-3d41-5a8e-9b6c-2f7d1e4a8c90")


def measure_event_id(measure: str, program: str, month: str, enrolled: int, notified: int) -> uuid.UUID:
    return uuid.uuid5(MEASURE_NAMESPACE, f"{measure}\x1f{program}\x1f{month}\x1f{enrolled}\x1f{notified}")


class PcpNotifiedV1(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID
    measure: Literal["pcp_notified"] = "pcp_notified"
    program: Program
    month: str = Field(pattern=r"^\d{4}-\d{2}$", description="Month of enrollment (YYYY-MM) in `timezone`")
    timezone: str = Field(description="IANA zone the month is read in (the notifier's configuration)")
    enrolled: int = Field(ge=0, description="Candidates that became enrolled in the month")
    notified: int = Field(ge=0, description="Of them, those whose PCP was sent (or delivered) the enrollment notice")
    share: float | None = Field(description="notified / enrolled, 4 decimals; None when nobody enrolled")
    computed_at: dt.datetime
