"""Who the notifier tells, how, and under which limits: a versioned YAML file.

``WPC_NOTIFY_FILE`` selects it; the example for the county's pilot, with every option, is
``deploy/notify/wpc-notify.yaml``. Its parts:

- ``care_teams``: per program and region (the facilities whose patients the team
  visits; empty = every facility), each with delivery endpoints.
- ``practices``: primary care practices, found by their providers' ids (NPIs in PD1-4 /
  ROL-4) or by the health plan roster (member -> practice), each with endpoints.
- ``part2``: 42 CFR Part 2 facilities, the codes that count as SUD information, and what a
  recipient without the patient's consent gets: ``redact`` (the notice without SUD detail)
  or ``omit`` (no notice at all). See `notifier.policy` for the exact rule.
- ``retry``, ``bundle_window_s`` (an admit and its discharge within it are one notice),
  per-recipient ``max_per_hour`` and ``digest_at`` (alert fatigue), ``smtp``.

Secrets never sit in the file: an endpoint names the environment variable holding its
HMAC key or bearer token (``secret_env``), which the composition root resolves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from notifier.model import ChannelKind, Endpoint, EventKind
from schemas.enrollment import PROGRAMS
from services import icd10, part2
from services.configfile import ConfigError, YamlDocument, parse_yaml, read_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointConfig(_Strict):
    name: str = Field(min_length=1)
    channel: ChannelKind
    url: str | None = None
    to: list[str] = []
    secret_env: str | None = Field(default=None, description="Environment variable holding the HMAC key / token")
    events: list[EventKind] | None = Field(
        default=None, description="Notice kinds this endpoint takes; empty: every kind its channel can carry"
    )

    @model_validator(mode="after")
    def _complete(self) -> EndpointConfig:
        if self.channel in ("webhook", "fhir") and not self.url:
            raise ValueError(f"endpoint {self.name!r}: a {self.channel} endpoint needs a url")
        if self.channel == "webhook" and not self.secret_env:
            raise ValueError(f"endpoint {self.name!r}: a webhook is signed, so it needs secret_env")
        if self.channel == "email" and not self.to:
            raise ValueError(f"endpoint {self.name!r}: an email endpoint needs at least one address in 'to'")
        return self


class RecipientConfig(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")  # used in metrics labels and the audit
    name: str
    endpoints: list[EndpointConfig] = Field(min_length=1)
    max_per_hour: int | None = Field(default=None, ge=1, description="Past it, notices wait and go as one digest")
    digest_at: dt.time | None = Field(default=None, description="Local time of a daily digest of non-urgent notices")
    part2_qualified: bool = Field(
        default=False, description="May receive SUD information without the patient's consent (a Part 2 program)"
    )

    @field_validator("digest_at", mode="before")
    @classmethod
    def _time_of_day(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted 7:30 as the sexagesimal integer 450, which pydantic would
        # take as 450 seconds (00:07:30 UTC): a digest at the wrong hour, silently.
        if isinstance(value, int | float):
            raise ValueError('digest_at must be a time of day written as a quoted string, e.g. "07:30"')
        return value

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ValueError("endpoint names must be unique within a recipient")
        return endpoints


class CareTeamConfig(RecipientConfig):
    programs: list[Literal["TOC", "ISR", "SUD-ENS"]] = Field(min_length=1)
    facilities: list[str] = Field(default=[], description="Region: these hospitals (MSH-4); empty = every one")


class PracticeConfig(RecipientConfig):
    provider_ids: list[str] = Field(default=[], description="NPIs / provider ids of its PCPs (PD1-4, ROL-4)")


def _icd10(code: str) -> str:
    # A typo here (F1O for F10) would let SUD diagnoses through to recipients without consent.
    if (problem := icd10.problem(code)) is not None:
        raise ValueError(problem)
    return code


class Part2Config(_Strict):
    facilities: list[str] = Field(default=[], description="Facilities (MSH-4) that are 42 CFR Part 2 programs")
    sud_code_prefixes: list[Annotated[str, AfterValidator(_icd10)]] = Field(
        min_length=1, description="ICD-10-CM prefixes that are SUD information"
    )
    without_consent: Literal["redact", "omit"] = "redact"


class RetryConfig(_Strict):
    max_attempts: int = Field(default=8, ge=1)
    first_delay_s: float = Field(default=5.0, gt=0)
    max_delay_s: float = Field(default=900.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0, description="An attempt not recorded within this time is retried")


class SmtpConfig(_Strict):
    host: str = "localhost"
    port: int = 25
    sender: str = "wpc-notifier@localhost"
    starttls: bool = False
    use_tls: bool = False
    username_env: str | None = None
    password_env: str | None = None
    timeout_s: float = 15.0


class NotifyConfig(_Strict):
    version: str = Field(min_length=1)
    timezone: str = "America/Los_Angeles"
    sender: str = Field(default="urn:wpc:notifier", description="Our FHIR MessageHeader.source endpoint")
    portal_url: str = Field(description="Where a care team opens a candidate; e-mails carry only this link and ids")
    bundle_window_s: float = Field(default=120.0, ge=0)
    encounter_events: list[Literal["admit", "discharge", "transfer"]] = ["admit", "discharge", "transfer"]
    retry: RetryConfig = RetryConfig()
    smtp: SmtpConfig = SmtpConfig()
    part2: Part2Config
    care_teams: list[CareTeamConfig] = Field(min_length=1)
    practices: list[PracticeConfig] = []
    digest: str = ""  # sha256 of the file, set by load_config

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except ZoneInfoNotFoundError as exc:  # a KeyError: pydantic would not report it as invalid input
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @field_validator("care_teams")
    @classmethod
    def _every_program_served(cls, teams: list[CareTeamConfig]) -> list[CareTeamConfig]:
        # A field check, not a model check, so that the message points at the care_teams line.
        for program in PROGRAMS:
            if not any(program in t.programs for t in teams):
                raise ValueError(f"no care team serves {program}: add a team with programs: [{program}] "
                                 "(or add it to a team's programs)")
        return teams

    @model_validator(mode="after")
    def _consistent(self) -> NotifyConfig:
        # Messages start with the key they are about: the loader reports that key's line.
        ids = [r.id for r in (*self.care_teams, *self.practices)]
        if len(set(ids)) != len(ids):
            raise ValueError("care_teams: recipient ids must be unique across care teams and practices")
        for kind, recipients in (("care_teams", self.care_teams), ("practices", self.practices)):
            for n, r in enumerate(recipients):
                if r.digest_at is not None and any(e.channel == "fhir" for e in r.endpoints):
                    # A FHIR notification message is about one event (Da Vinci Unsolicited
                    # Notifications); a digest of many has no place in it.
                    raise ValueError(f"{kind}[{n}].digest_at: recipient {r.id!r}: a FHIR endpoint cannot take a digest")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def recipient(self, recipient_id: str) -> RecipientConfig | None:
        for r in (*self.care_teams, *self.practices):
            if r.id == recipient_id:
                return r
        return None

    def care_team_for(self, program: str, facility: str | None) -> CareTeamConfig | None:
        """The team of ``program`` whose region holds ``facility``; a region-less team is the fallback."""
        fallback = None
        for team in self.care_teams:
            if program not in team.programs:
                continue
            if facility is not None and facility in team.facilities:
                return team
            if not team.facilities and fallback is None:
                fallback = team
        return fallback

    def practice_of_provider(self, provider_id: str) -> PracticeConfig | None:
        for practice in self.practices:
            if provider_id in practice.provider_ids:
                return practice
        return None

    def is_sud_code(self, code: str) -> bool:
        return part2.is_sud_code(code, self.part2.sud_code_prefixes)


def endpoints_of(recipient: RecipientConfig, secrets: Mapping[str, str]) -> dict[str, Endpoint]:
    """The recipient's endpoints with their secrets resolved (missing secret: ValueError at start)."""
    out: dict[str, Endpoint] = {}
    for e in recipient.endpoints:
        secret = None
        if e.secret_env:
            secret = secrets.get(e.secret_env)
            if not secret:
                raise ValueError(f"recipient {recipient.id!r} endpoint {e.name!r}: {e.secret_env} is not set")
        out[e.name] = Endpoint(name=e.name, kind=e.channel, url=e.url, to=tuple(e.to), secret=secret,
                               events=tuple(e.events) if e.events else None)  # empty: every kind
    return out


_HINT = "set WPC_NOTIFY_FILE to a notification configuration (example: deploy/notify/wpc-notify.yaml)"


def config_from_text(text: str, source: str = "notification configuration") -> NotifyConfig:
    """The configuration in ``text``; a mistake raises `ConfigError` naming ``source`` and the line."""
    return _config_of(parse_yaml(text, source))


def load_config(path: Path, *, setting: str | None = None) -> NotifyConfig:
    """The configuration file at ``path`` (chosen by the variable ``setting``, for messages)."""
    return _config_of(read_yaml(path, setting=setting, hint=_HINT))


def _config_of(doc: YamlDocument) -> NotifyConfig:
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{doc.label}: the notification configuration must be a YAML mapping")
    digest = hashlib.sha256(doc.text.encode()).hexdigest()[:12]
    return validate(doc, NotifyConfig, {**doc.data, "digest": digest})
