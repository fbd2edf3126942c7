"""Settings of every service, from environment variables prefixed ``WPC_``.

Built once per command with `load_settings` and passed down; nothing reads the
environment anywhere else. `load_settings` turns pydantic's report into one line per
wrong value that names the variable ("WPC_MLLP_PORT='abc': not an integer (e.g.
WPC_MLLP_PORT=2575)"); `wpc` prints it and exits with status 2. A setting left empty
means "start the embedded one" for the database and the broker (see `services.embedded`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.configfile import ConfigError

PREFIX = "WPC_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PORT_SETTINGS = ("mllp_port", "listener_http_port", "enrollment_http_port", "notifier_http_port", "demo_inbox_port")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

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
    # --- ADT listener: no one can lock the hospitals out (adt_listener/admission.py) ----------
    mllp_first_frame_timeout_s: float = Field(
        default=10.0, gt=0,
        description="A new connection from an unknown sender must complete its first frame (TLS handshake "
        "included) within this time; interface engines send at once after connecting",
    )
    mllp_max_connections_per_address: int = Field(
        default=32, ge=0, description="Connections per source IP of unknown senders (0: no limit); known ones exempt"
    )
    mllp_reserved_slots: int = Field(
        default=32, ge=0,
        description="Of WPC_MLLP_MAX_CONNECTIONS, slots only senders known by address or client certificate may use",
    )
    http_max_body_bytes: int | None = Field(
        default=None, gt=0,
        description="POST /v1/adt body limit, refused (413) before reading it; empty: WPC_MLLP_MAX_FRAME_BYTES",
    )
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

    # --- the PCP-notified measure: computed by the notifier, reported by both APIs (issue 12) --
    topic_notifications_measures: str = Field(
        default="notifications.measures",
        description="The notifier's PCP-notified figures (schemas/measure.py), consumed by the enrollment service",
    )
    measure_publish_interval_s: float = Field(
        default=30.0, gt=0, description="How often the notifier publishes the PCP-notified figures that changed"
    )

    # --- consumers: parking and readiness (services/consumer.py, services/parking.py) ----------
    topic_enrollment_deadletter: str = Field(
        default="enrollment.deadletter",
        description="adt.events records the enrollment service could not apply (parked), for inspection",
    )
    topic_notifier_deadletter: str = Field(
        default="notifier.deadletter",
        description="Records the notifier could not apply (parked); not notifications.deadletter (failed deliveries)",
    )
    consumer_max_lag: int = Field(
        default=10_000, description="/readyz fails when a consumer is more records than this behind its partitions"
    )
    consumer_max_restarts: int = Field(
        default=3, description="/readyz fails when a consumer restarts more often than this within the window"
    )
    consumer_restart_window_s: float = Field(
        default=300.0, description="The window of consumer_max_restarts (restarts without a committed batch)"
    )

    conformance_max_per_s: float = Field(
        default=5.0, description="Cap on hl7apy conformance checks per second (each costs ~30 ms of CPU)"
    )

    # --- operations -----------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    # --- validation (errors a person can act on: `load_settings`) -----------------------------
    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise ValueError(f"not a log level; use one of {', '.join(LOG_LEVELS)}")

    @field_validator(*PORT_SETTINGS, mode="after")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65_535:
            raise ValueError("not a TCP port (1-65535; 0 picks a free one)")
        return value
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


# --- loading: one place that turns pydantic's report into lines naming the variable ------------

_WHAT = {
    "int_parsing": "not an integer", "int_type": "not an integer", "int_from_float": "not an integer",
    "float_parsing": "not a number", "float_type": "not a number",
    "bool_parsing": "not true or false", "bool_type": "not true or false",
    "path_type": "not a file path",
}
_SECRET_HINTS = ("url", "password", "secret", "token", "key")


def load_settings(overrides: Mapping[str, object] | None = None, *, flags: Mapping[str, str] | None = None) -> Settings:
    """`Settings` from the environment and ``overrides`` (command-line options, named in
    ``flags``: setting -> option); a wrong value raises `ConfigError` naming the variable."""
    given: dict[str, Any] = dict(overrides or {})
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise settings_error(exc, given, flags or {}) from None


def settings_error(
    exc: ValidationError, overrides: Mapping[str, object] | None = None, flags: Mapping[str, str] | None = None
) -> ConfigError:
    """One line per wrong setting: "WPC_MLLP_PORT='abc': not an integer (e.g. WPC_MLLP_PORT=2575)"."""
    overrides = overrides or {}
    flags = flags or {}
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else ""
        problems.append(_one(field, err, from_flag=flags.get(field) if field in overrides else None))
    return ConfigError(problems)


def _one(field: str, err: Mapping[str, Any], *, from_flag: str | None) -> str:
    kind = str(err.get("type", ""))
    what = _WHAT.get(kind) or str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind.startswith(("greater_than", "less_than")):
        what = str(err.get("msg", "")).replace("Input should be", "must be")
    name = from_flag or (f"{PREFIX}{field.upper()}" if field else "settings")
    value = err.get("input")
    secret = any(h in field for h in _SECRET_HINTS)
    shown = ""
    if not secret and isinstance(value, str | int | float):
        shown = f" {value}" if from_flag else f"={str(value)!r}"
    info = Settings.model_fields.get(field)
    default = info.default if info is not None else None
    example = ""
    if default not in (None, "") and not isinstance(default, bool) and kind in _WHAT:
        example = f" (e.g. {from_flag} {default})" if from_flag else f" (e.g. {name}={default})"
    return f"{name}{shown}: {what}{example}"
