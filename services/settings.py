"""Settings, from environment variables prefixed ``WPC_``: the part every service shares.

Each service has a settings class of its own, built once by its command with
`load_settings` and passed down; nothing reads the environment anywhere else:

    ServiceSettings                  infrastructure, topic and group names, relay, operations, API users
    ├── adt_listener.settings.ListenerSettings
    └── DownstreamSettings           + consumer readiness
        ├── enrollment_svc.settings.EnrollmentSettings
        └── notifier.settings.NotifierSettings

The variable names are those of every release: a field keeps its name in whichever class
it sits, so nothing a county sets changes. `load_settings` turns pydantic's report into
one line per wrong value that names the variable ("WPC_MLLP_PORT='abc': not an integer
(e.g. WPC_MLLP_PORT=2575)"); `wpc` prints it and exits with status 2. A setting left
empty means "start the embedded one" for the database and the broker (`services.embedded`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.configfile import ConfigError

PREFIX = "WPC_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_KAFKA_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ServiceSettings(BaseSettings):
    """What every service reads. Alone, the settings of the commands that only reach the
    database (`wpc migrate`, `wpc feed-report`)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    # The service these settings are of: the ``service`` of its outbox rows (`services.outbox`).
    service: ClassVar[str] = ""

    def published_topics(self) -> tuple[str, ...]:
        """The topics this service publishes, and no other service does (its outbox's)."""
        return ()

    def consumed_topics(self) -> tuple[str, ...]:
        """The topics this service's consumers read."""
        return ()

    def consumer_groups(self) -> tuple[str, ...]:
        """The consumer groups this service's consumers join."""
        return ()

    # --- API users: every service's API (the listener's ops API, the care team's) ------------
    users_file: Path | None = Field(
        default=None, description="API users YAML (services/auth.py); empty: no one can log in"
    )

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
    http_host: str = "0.0.0.0"

    # --- this service's Kafka principal (deploy/: one per service, its topics' ACLs only) -----
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", description="PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL"
    )
    kafka_sasl_mechanism: str = Field(default="PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    kafka_sasl_username: str = Field(default="", description="This service's Kafka principal (SASL)")
    kafka_sasl_password: str = Field(default="", description="Its password (from a Secret)")
    kafka_ssl_ca_file: Path | None = Field(
        default=None, description="CA of the brokers' certificates (SSL, SASL_SSL); empty: the system's"
    )

    # --- topics and consumer groups: the names the services agree on ------------------------
    # A service names the topics it publishes and those it reads; a relay names the groups
    # that read its topics (to know what they have read).
    topic_adt_events: str = "adt.events"
    topic_adt_deadletter: str = "adt.deadletter"
    topic_enrollment_candidates: str = "enrollment.candidates"
    topic_enrollment_events: str = "enrollment.events"
    topic_enrollment_deadletter: str = Field(
        default="enrollment.deadletter",
        description="adt.events records the enrollment service could not apply (parked), for inspection",
    )
    topic_notifications_deadletter: str = "notifications.deadletter"
    topic_notifier_deadletter: str = Field(
        default="notifier.deadletter",
        description="Records the notifier could not apply (parked); not notifications.deadletter (failed deliveries)",
    )
    topic_notifications_measures: str = Field(
        default="notifications.measures",
        description="The notifier's PCP-notified figures (schemas/measure.py), consumed by the enrollment service",
    )
    enrollment_group_id: str = "wpc-enrollment"
    notifier_group_id: str = "wpc-notifier"

    # --- the outbox relay (services/outbox.py) ------------------------------------------------
    relay_batch_max: int = 500
    relay_poll_interval_s: float = 0.2

    # --- stopping, and what a broker loss must not lose (issue 10 parts 2 and 3) ----------------
    shutdown_timeout_s: float = Field(
        default=20.0, gt=0,
        description="SIGTERM/SIGINT drain for at most this long, then the process exits anyway (status 1, "
        "saying what did not finish); a second signal exits at once",
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

    # --- operations -----------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments of every aiokafka client of this service (producer, consumers,
        the relay's broker reads): how it authenticates, as its own principal."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol.startswith("SASL_"):
            options.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=self.kafka_sasl_password)
        if protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            ca = str(self.kafka_ssl_ca_file) if self.kafka_ssl_ca_file is not None else None
            options["ssl_context"] = create_ssl_context(cafile=ca)
        return options

    # --- validation (errors a person can act on: `load_settings`) -----------------------------
    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _kafka_choice(cls, value: object, info: ValidationInfo) -> object:
        choices = _KAFKA_PROTOCOLS if info.field_name == "kafka_security_protocol" else _SASL_MECHANISMS
        if isinstance(value, str) and value.strip().upper() in choices:
            return value.strip().upper()
        raise ValueError(f"not one of {', '.join(choices)}")

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise ValueError(f"not a log level; use one of {', '.join(LOG_LEVELS)}")

    @field_validator("*", mode="after")
    @classmethod
    def _port(cls, value: object, info: ValidationInfo) -> object:
        """Every ``*_port`` setting, of whichever service."""
        if (info.field_name or "").endswith("_port") and isinstance(value, int) and not 0 <= value <= 65_535:
            raise ValueError("not a TCP port (1-65535; 0 picks a free one)")
        return value


class DownstreamSettings(ServiceSettings):
    """The services downstream of the listener (enrollment, notifier): each consumes topics
    (`services.consumer`, `services.parking`) and serves the care team's API (`services.auth`;
    its users file is shared: the listener's ops API reads it too)."""

    kafka_session_timeout_s: float = Field(
        default=6.0, ge=1,
        description="Consumer group session timeout: how long a dead consumer holds its partitions; Tansu also "
        "makes a joining consumer wait half of it (Kafka's minimum by default is 6 s)",
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=100, ge=0, le=5000,
        description="How long a consumer's fetch may wait at the broker for records to arrive. Kafka answers a "
        "waiting fetch as soon as records come; Tansu looks for them a few times during the wait (measured: "
        "~17 ms after a record at 100, ~115 ms at aiokafka's default 500). Lower: less delay, more empty "
        "fetches when idle",
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


S = TypeVar("S", bound=ServiceSettings)


def settings_classes(root: type[ServiceSettings] = ServiceSettings) -> Iterator[type[ServiceSettings]]:
    """``root`` and every settings class derived from it that is imported."""
    yield root
    for sub in root.__subclasses__():
        yield from settings_classes(sub)


# --- loading: one place that turns pydantic's report into lines naming the variable ------------

_WHAT = {
    "int_parsing": "not an integer", "int_type": "not an integer", "int_from_float": "not an integer",
    "float_parsing": "not a number", "float_type": "not a number",
    "bool_parsing": "not true or false", "bool_type": "not true or false",
    "path_type": "not a file path",
}
_SECRET_HINTS = ("url", "password", "secret", "token", "key")


def load_settings(
    model: type[S], overrides: Mapping[str, object] | None = None, *, flags: Mapping[str, str] | None = None
) -> S:
    """``model`` from the environment and ``overrides`` (command-line options, named in
    ``flags``: setting -> option; those that are no field of ``model`` are not its business);
    a wrong value raises `ConfigError` naming the variable."""
    given: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if k in model.model_fields}
    try:
        return model(**given)
    except ValidationError as exc:
        raise settings_error(exc, given, flags or {}, model=model) from None


def settings_error(
    exc: ValidationError,
    overrides: Mapping[str, object] | None = None,
    flags: Mapping[str, str] | None = None,
    *,
    model: type[ServiceSettings] | None = None,
) -> ConfigError:
    """One line per wrong setting: "WPC_MLLP_PORT='abc': not an integer (e.g. WPC_MLLP_PORT=2575)".
    ``model`` (by default the settings class the error names) gives the examples' defaults."""
    if model is None:
        model = next((c for c in settings_classes() if c.__name__ == exc.title), ServiceSettings)
    overrides = overrides or {}
    flags = flags or {}
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err.get("loc") else ""
        problems.append(_one(model, field, err, from_flag=flags.get(field) if field in overrides else None))
    return ConfigError(problems)


def is_settings_error(exc: BaseException) -> bool:
    """A `ValidationError` of a settings class (a command that built one without `load_settings`)."""
    return isinstance(exc, ValidationError) and any(c.__name__ == exc.title for c in settings_classes())


def _one(model: type[ServiceSettings], field: str, err: Mapping[str, Any], *, from_flag: str | None) -> str:
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
    info = model.model_fields.get(field)
    default = info.default if info is not None else None
    example = ""
    if default not in (None, "") and not isinstance(default, bool) and kind in _WHAT:
        example = f" (e.g. {from_flag} {default})" if from_flag else f" (e.g. {name}={default})"
    return f"{name}{shown}: {what}{example}"
