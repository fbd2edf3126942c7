"""The enrollment service's settings: `DownstreamSettings` (infrastructure, topics, relay,
consumer, API users) and what only this service reads: its port, the rules, its lanes.

Built once by its command (`wpc enrollment`, `wpc up`, `wpc replay`, `wpc redrive`) with
`services.settings.load_settings` and handed to `enrollment_svc.service.EnrollmentService`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.settings import DownstreamSettings


class EnrollmentSettings(DownstreamSettings):
    service: ClassVar[str] = "enrollment"

    def published_topics(self) -> tuple[str, ...]:
        return (self.topic_enrollment_candidates, self.topic_enrollment_events, self.topic_enrollment_deadletter)

    def consumed_topics(self) -> tuple[str, ...]:
        return (self.topic_adt_events, self.topic_notifications_measures)

    def consumer_groups(self) -> tuple[str, ...]:
        return (self.enrollment_group_id, self.measures_group_id())

    def measures_group_id(self) -> str:
        """The group of its notifications.measures consumer: one of its own, so that small topic
        never waits behind an adt.events backlog."""
        return f"{self.enrollment_group_id}.measures"

    enrollment_http_port: int = 8081
    rules_file: Path | None = Field(
        default=None, description="Program rules YAML (enrollment_svc/RULES.md); empty: deploy/rules/wpc-rules.yaml"
    )
    enrollment_lanes: int = Field(default=8, description="adt.events applied concurrently (by patient key)")
    enrollment_bulk_min: int = Field(
        default=8, ge=0,
        description="A consumer batch of at least this many events is applied as sets in one transaction, "
                    "a patient's several events in rounds of at least this many (enrollment_svc/bulk.py); "
                    "0: always one event at a time",
    )
    expiry_interval_s: float = Field(default=60.0, description="How often pending candidates are checked for expiry")
