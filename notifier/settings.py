"""The notifier's settings: `DownstreamSettings` (infrastructure, topics, relay, consumer,
API users) and what only the notifier reads: its port, its configuration file, its pace.

Built once by its command (`wpc notifier`, `wpc up`, `wpc load-roster`, `wpc redrive`) with
`services.settings.load_settings` and handed to `notifier.service.NotifierService`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.settings import DownstreamSettings


class NotifierSettings(DownstreamSettings):
    notifier_http_port: int = 8082
    notify_file: Path | None = Field(
        default=None,
        description="Notification configuration YAML (notifier/config.py); required by `wpc notifier`; "
        "empty under `wpc up`: the demo inbox",
    )
    notifier_poll_interval_s: float = Field(default=1.0, description="How often due notices and retries are checked")
    demo_inbox_port: int = Field(
        default=8083, description="`wpc up` without WPC_NOTIFY_FILE: the demo inbox the notifier delivers to"
    )
