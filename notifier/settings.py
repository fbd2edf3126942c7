"""The notifier's settings: `DownstreamSettings` (infrastructure, topics, relay, consumer,
API users) and what only the notifier reads: its port, its configuration file, its pace.

Built once by its command (`wpc notifier`, `wpc up`, `wpc load-roster`, `wpc redrive`) with
`services.settings.load_settings` and handed to `notifier.service.NotifierService`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.settings import DownstreamSettings


class NotifierSettings(DownstreamSettings):
    service: ClassVar[str] = "notifier"

    def published_topics(self) -> tuple[str, ...]:
        return (self.topic_notifications_deadletter, self.topic_notifier_deadletter, self.topic_notifications_measures)

    def consumed_topics(self) -> tuple[str, ...]:
        return (self.topic_enrollment_candidates, self.topic_enrollment_events, self.topic_adt_events)

    def consumer_groups(self) -> tuple[str, ...]:
        return (self.notifier_group_id,)

    notifier_http_port: int = 8082
    notify_file: Path | None = Field(
        default=None,
        description="Notification configuration YAML (notifier/config.py); required by `wpc notifier`; "
        "empty under `wpc up`: the demo inbox",
    )
    notifier_poll_interval_s: float = Field(default=1.0, description="How often due notices and retries are checked")
    measure_publish_interval_s: float = Field(
        default=30.0, gt=0, description="How often the notifier publishes the PCP-notified figures that changed"
    )
    demo_inbox_port: int = Field(
        default=8083, description="`wpc up` without WPC_NOTIFY_FILE: the demo inbox the notifier delivers to"
    )
