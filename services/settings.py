"""Settings of every service, from environment variables prefixed ``WPC_``.

Built once in `services.cli` (the composition root) and passed down; nothing reads
the environment anywhere else. A setting left empty means "start the embedded one"
for the database and the broker (see `services.embedded`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WPC_", extra="ignore")

    # --- infrastructure -------------------------------------------------------------------
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL, e.g. postgresql+asyncpg://user:pw@host:5432/wpc. Empty: embedded PostgreSQL.",
    )
    kafka_bootstrap_servers: str = Field(
        default="", description="host:port[,host:port]. Empty: embedded Tansu broker."
    )
    data_dir: Path = Field(default=Path(".wpc"), description="Where embedded PostgreSQL keeps its data")
    kafka_timeout_s: float = Field(
        default=10.0, description="A publish not acknowledged within this time fails and is retried from the outbox"
    )
    topic_adt_events: str = "adt.events"
    topic_adt_deadletter: str = "adt.deadletter"

    # --- ADT listener: MLLP ---------------------------------------------------------------
    mllp_host: str = "0.0.0.0"
    mllp_port: int = 2575
    mllp_max_frame_bytes: int = 1_048_576  # 1 MiB: large enough for any ADT, small enough to bound memory
    mllp_idle_timeout_s: float = 300.0  # interface engines keep connections open between messages
    mllp_read_timeout_s: float = 30.0  # a frame once started must complete within this time
    mllp_max_connections: int = 256
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(
        default=None, description="When set, MLLP requires client certificates signed by this CA (mutual TLS)"
    )

    # --- ADT listener: HTTP and senders ---------------------------------------------------
    http_host: str = "0.0.0.0"
    listener_http_port: int = 8080
    enrollment_http_port: int = 8081
    notifier_http_port: int = 8082
    senders_file: Path | None = Field(
        default=None,
        description="YAML list of senders (credentials, facilities, validation mode); see docs in README",
    )
    accepted_processing_ids: str = "P,T,D"  # MSH-11, HL7 table 0103
    medi_cal_authorities: str = "MEDI-CAL,MEDICAL,MEDICAID,CA-MEDICAID,CADHCS"

    # --- write path and relay -------------------------------------------------------------
    commit_batch_max: int = 512
    relay_batch_max: int = 500
    relay_poll_interval_s: float = 0.2

    # --- enrollment service -----------------------------------------------------------------
    rules_file: Path | None = Field(
        default=None, description="Program rules YAML (enrollment_svc/RULES.md); empty: deploy/rules/wpc-rules.yaml"
    )
    users_file: Path | None = Field(
        default=None, description="Care team API users YAML (services/auth.py); empty: no one can log in"
    )
    topic_enrollment_candidates: str = "enrollment.candidates"
    topic_enrollment_events: str = "enrollment.events"
    enrollment_group_id: str = "wpc-enrollment"
    enrollment_lanes: int = Field(default=8, description="adt.events applied concurrently (by patient key)")
    expiry_interval_s: float = Field(default=60.0, description="How often pending candidates are checked for expiry")

    # --- notifier -----------------------------------------------------------------------------
    notify_file: Path | None = Field(
        default=None,
        description="Notification configuration YAML (notifier/config.py); required by `wpc notifier`; "
        "empty under `wpc up`: the demo inbox",
    )
    notifier_group_id: str = "wpc-notifier"
    topic_notifications_deadletter: str = "notifications.deadletter"
    demo_inbox_port: int = Field(default=8083, description="`wpc up` without WPC_NOTIFY_FILE: the demo inbox")
    notifier_poll_interval_s: float = Field(default=1.0, description="How often due notices and retries are checked")

    conformance_max_per_s: float = Field(
        default=5.0, description="Cap on hl7apy conformance checks per second (each costs ~30 ms of CPU)"
    )

    # --- operations -----------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    # --- stopping, and what a broker loss must not lose (issue 10 parts 2 and 3) ----------------
    shutdown_timeout_s: float = Field(
        default=20.0, gt=0,
        description="SIGTERM/SIGINT drain for at most this long, then the process exits anyway (status 1, "
        "saying what did not finish); a second signal exits at once",
    )
    kafka_session_timeout_s: float = Field(
        default=6.0, ge=1,
        description="Consumer group session timeout: how long a dead consumer holds its partitions; Tansu also "
        "makes a joining consumer wait half of it (Kafka's minimum by default is 6 s)",
    )
    kafka_idempotence: bool = Field(
        default=False, description="Idempotent producer (no duplicates from its own retries); Kafka yes, Tansu no",
    )
    replay_retain_max: int = Field(
        default=200_000, ge=0,
        description="Published records kept in PostgreSQL until every consumer group has read them, to publish "
        "again should the broker lose them; beyond this many the oldest are dropped (0: keep none)",
    )
    replay_check_interval_s: float = Field(
        default=2.0, gt=0,
        description="How often a relay compares the broker with what it published (lost records, consumer "
        "groups' offsets) and drops what every group has read",
    )
    replay_settle_s: float = Field(
        default=8.0, ge=0,
        description="After a broker loss seen while consumers run, wait this long before publishing again, so "
        "they rejoin the new broker and read its log from the start (keep above the session timeout)",
    )

    def processing_ids(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.accepted_processing_ids.split(",") if p.strip())

    def medi_cal_authority_set(self) -> frozenset[str]:
        return frozenset(a.strip().upper() for a in self.medi_cal_authorities.split(",") if a.strip())
