"""`notifier.config`: the notification configuration file, its validation and its look-ups."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from notifier.config import NotifyConfig, config_from_text, endpoints_of, load_config
from notifier.model import Endpoint, EventKind
from services.configfile import ConfigError
from wpc.demo_inbox import demo_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "notify"
EXAMPLE = DEPLOY / "wpc-notify.yaml"

ALL_KINDS: tuple[EventKind, ...] = ("admit", "discharge", "transfer", "admit_discharge", "candidate", "enrolled")
ENCOUNTER_KINDS = {"admit", "discharge", "transfer", "admit_discharge"}


def _email(name: str = "email") -> dict[str, Any]:
    return {"name": name, "channel": "email", "to": ["team@example.org"]}


# The smallest valid configuration: one care team per program, one practice.
MINIMAL: dict[str, Any] = {
    "version": "t-1",
    "portal_url": "https://portal.example.org",
    "part2": {"facilities": ["SOBER"], "sud_code_prefixes": ["F10", "T40"]},
    "care_teams": [
        {"id": "toc", "name": "TOC", "programs": ["TOC"], "endpoints": [_email()]},
        {"id": "isr", "name": "ISR", "programs": ["ISR"], "endpoints": [_email()]},
        {"id": "sud", "name": "SUD", "programs": ["SUD-ENS"], "endpoints": [_email()]},
    ],
    "practices": [{"id": "clinic", "name": "Clinic", "provider_ids": ["111"], "endpoints": [_email()]}],
}


def minimal(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data.update(copy.deepcopy(changes))
    return data


@pytest.fixture(scope="module")
def example() -> NotifyConfig:
    return load_config(EXAMPLE)


# --- the example files ----------------------------------------------------------------------


def test_example_file_loads(example: NotifyConfig) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert example.version == "2026.11-1"
    assert example.digest == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert example.timezone == "America/Los_Angeles"
    assert str(example.zone) == "America/Los_Angeles"
    assert example.bundle_window_s == 120
    assert example.encounter_events == ["admit", "discharge", "transfer"]
    assert example.part2.facilities == ["DTSOBERING"]
    assert example.part2.without_consent == "redact"
    assert [t.id for t in example.care_teams] == ["toc-metro", "toc-valley", "isr-county", "sud-ens"]
    assert [p.id for p in example.practices] == ["eastside-clinic", "harbor-fqhc"]
    assert example.care_teams[0].max_per_hour == 60
    assert example.care_teams[3].part2_qualified is True
    assert example.care_teams[0].part2_qualified is False
    assert example.practices[1].digest_at == dt.time(7, 30)
    assert example.practices[0].endpoints[1].events == ["enrolled"]
    assert example.smtp.starttls is True
    assert example.retry.max_attempts == 8


def test_demo_file_loads() -> None:
    cfg = demo_config("http://127.0.0.1:8099", smtp_port=2525, digest_at=dt.time(9, 15, 30))
    assert cfg.version == "demo-1"
    assert cfg.portal_url == "http://127.0.0.1:8099/"
    assert {t.id for t in cfg.care_teams} == {"toc-team", "isr-team", "sud-ens-team"}
    assert cfg.practice_of_provider("1234567893") is not None
    # The e-mail clinic of the demo county (bench/demo_county.py): a digest at the time given.
    mail = cfg.recipient("eastside-clinic")
    assert mail is not None and mail.digest_at == dt.time(9, 15, 30)
    assert [e.channel for e in mail.endpoints] == ["email"]
    assert cfg.smtp.port == 2525


def test_minimal_config_is_valid() -> None:
    cfg = NotifyConfig.model_validate(minimal())
    assert cfg.timezone == "America/Los_Angeles"
    assert cfg.part2.without_consent == "redact"
    assert cfg.bundle_window_s == 120.0


def test_config_from_text_rejects_a_non_mapping() -> None:
    with pytest.raises(ValueError, match="YAML mapping"):
        config_from_text("- a\n- b\n")


# --- validation errors ----------------------------------------------------------------------


def _with_endpoint(endpoint: dict[str, Any], **recipient: Any) -> dict[str, Any]:
    data = minimal()
    data["practices"][0]["endpoints"] = [endpoint]
    data["practices"][0].update(recipient)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _with_endpoint({"name": "w", "channel": "webhook", "url": "https://x.example.org/h"}),
            "needs secret_env",
        ),
        (_with_endpoint({"name": "e", "channel": "email"}), "needs at least one address in 'to'"),
        (_with_endpoint({"name": "e", "channel": "email", "to": []}), "needs at least one address in 'to'"),
        (_with_endpoint({"name": "f", "channel": "fhir"}), "a fhir endpoint needs a url"),
        (_with_endpoint({"name": "w", "channel": "webhook", "secret_env": "S"}), "a webhook endpoint needs a url"),
        (
            _with_endpoint({"name": "f", "channel": "fhir", "url": "https://fhir.example.org/r4"}, digest_at="07:30"),
            "a FHIR endpoint cannot take a digest",
        ),
        (_with_endpoint(_email("same"), endpoints=[_email("same"), _email("same")]), "endpoint names must be unique"),
    ],
    ids=[
        "webhook-no-secret",
        "email-no-to",
        "email-empty-to",
        "fhir-no-url",
        "webhook-no-url",
        "fhir-with-digest",
        "duplicate-endpoint-names",
    ],
)
def test_invalid_endpoints(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotifyConfig.model_validate(data)


def test_duplicate_recipient_ids_across_teams_and_practices() -> None:
    data = minimal()
    data["practices"][0]["id"] = "toc"
    with pytest.raises(ValidationError, match="recipient ids must be unique"):
        NotifyConfig.model_validate(data)


def test_duplicate_recipient_ids_among_teams() -> None:
    data = minimal()
    data["care_teams"][1]["id"] = "toc"
    with pytest.raises(ValidationError, match="recipient ids must be unique"):
        NotifyConfig.model_validate(data)


@pytest.mark.parametrize("program", ["TOC", "ISR", "SUD-ENS"])
def test_a_program_without_a_care_team(program: str) -> None:
    data = minimal()
    data["care_teams"] = [t for t in data["care_teams"] if program not in t["programs"]]
    with pytest.raises(ValidationError, match=f"no care team serves {program}"):
        NotifyConfig.model_validate(data)


def test_one_team_may_serve_several_programs() -> None:
    data = minimal()
    data["care_teams"] = [{"id": "all", "name": "All", "programs": ["TOC", "ISR", "SUD-ENS"], "endpoints": [_email()]}]
    cfg = NotifyConfig.model_validate(data)
    assert cfg.care_team_for("ISR", None) is not None


@pytest.mark.parametrize("zone", ["Mars/Olympus", "America/Los_Angeles ", "", "../etc/passwd"])
def test_unknown_timezone(zone: str) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        NotifyConfig.model_validate(minimal(timezone=zone))


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_unknown_timezone_in_a_file() -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("timezone: America/Los_Angeles", "timezone: Mars/Olympus")
    with pytest.raises(ConfigError, match="Mars/Olympus") as info:
        config_from_text(text, "notify.yaml")
    assert str(info.value).startswith(f"notify.yaml line {_line_of(text, 'Mars/Olympus')}: timezone: ")


def test_unquoted_digest_time_is_not_read_as_seconds() -> None:
    # YAML 1.1 reads `7:30` as the sexagesimal integer 450; pydantic would take that as 00:07:30.
    text = EXAMPLE.read_text(encoding="utf-8").replace('digest_at: "07:30"', "digest_at: 7:30")
    assert "digest_at: 7:30" in text
    with pytest.raises(ConfigError, match="digest_at") as info:
        config_from_text(text, "notify.yaml")
    assert f"line {_line_of(text, 'digest_at: 7:30')}: practices[1].digest_at: " in str(info.value)


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unexpected_key"):
        NotifyConfig.model_validate(minimal(unexpected_key=1))


@pytest.mark.parametrize("bad_id", ["has space", "slash/id", ""])
def test_recipient_id_pattern(bad_id: str) -> None:
    data = minimal()
    data["practices"][0]["id"] = bad_id
    with pytest.raises(ValidationError):
        NotifyConfig.model_validate(data)


def test_max_per_hour_must_be_positive() -> None:
    data = minimal()
    data["practices"][0]["max_per_hour"] = 0
    with pytest.raises(ValidationError, match="max_per_hour"):
        NotifyConfig.model_validate(data)


# --- look-ups -------------------------------------------------------------------------------


def test_care_team_for_region_match(example: NotifyConfig) -> None:
    team = example.care_team_for("TOC", "STMARY")
    assert team is not None and team.id == "toc-metro"
    team = example.care_team_for("TOC", "COUNTYGEN")
    assert team is not None and team.id == "toc-metro"


def test_care_team_for_falls_back_to_the_region_less_team(example: NotifyConfig) -> None:
    for facility in ("HARBORMED", None):
        team = example.care_team_for("TOC", facility)
        assert team is not None and team.id == "toc-valley"


def test_care_team_for_prefers_a_region_match_listed_after_the_fallback() -> None:
    data = minimal()
    data["care_teams"] = [
        {"id": "toc-all", "name": "TOC", "programs": ["TOC"], "endpoints": [_email()]},
        {"id": "toc-south", "name": "TOC S", "programs": ["TOC"], "facilities": ["SOUTH"], "endpoints": [_email()]},
        *data["care_teams"][1:],
    ]
    cfg = NotifyConfig.model_validate(data)
    assert cfg.care_team_for("TOC", "SOUTH").id == "toc-south"  # type: ignore[union-attr]
    assert cfg.care_team_for("TOC", "NORTH").id == "toc-all"  # type: ignore[union-attr]


def test_care_team_for_program_without_a_match() -> None:
    data = minimal()
    data["care_teams"][0]["facilities"] = ["STMARY"]  # TOC only in one region, no fallback
    cfg = NotifyConfig.model_validate(data)
    assert cfg.care_team_for("TOC", "STMARY").id == "toc"  # type: ignore[union-attr]
    assert cfg.care_team_for("TOC", "ELSEWHERE") is None
    assert cfg.care_team_for("TOC", None) is None
    assert cfg.care_team_for("RE-ENTRY", "STMARY") is None


def test_care_team_for_other_programs(example: NotifyConfig) -> None:
    assert example.care_team_for("ISR", "STMARY").id == "isr-county"  # type: ignore[union-attr]
    assert example.care_team_for("SUD-ENS", "DTSOBERING").id == "sud-ens"  # type: ignore[union-attr]


def test_practice_of_provider(example: NotifyConfig) -> None:
    assert example.practice_of_provider("1234567893").id == "eastside-clinic"  # type: ignore[union-attr]
    assert example.practice_of_provider("1245319599").id == "eastside-clinic"  # type: ignore[union-attr]
    assert example.practice_of_provider("1679576722").id == "harbor-fqhc"  # type: ignore[union-attr]
    assert example.practice_of_provider("9999999999") is None
    assert example.practice_of_provider("") is None


def test_recipient(example: NotifyConfig) -> None:
    assert example.recipient("sud-ens").name == "SUD-ENS navigators"  # type: ignore[union-attr]
    assert example.recipient("harbor-fqhc").name == "Harbor FQHC"  # type: ignore[union-attr]
    assert example.recipient("nobody") is None


@pytest.mark.parametrize(
    ("code", "sud"),
    [
        ("F11.20", True),
        ("f1020", True),
        ("F10.20", True),
        ("F19.99", True),
        ("T40.1X1A", True),
        ("T401X1A", True),
        ("T43.621", True),
        ("T43.621A", True),
        ("Z71.41", True),
        ("Z71.51", True),
        ("O99.320", True),
        ("F32.2", False),
        ("T42.4", False),
        ("T42.4X1A", False),
        ("T43.591", False),
        ("Z71.3", False),
        ("F20.9", False),
        ("I50.23", False),
        ("F1", False),
    ],
)
def test_is_sud_code(example: NotifyConfig, code: str, sud: bool) -> None:
    assert example.is_sud_code(code) is sud


# --- endpoints ------------------------------------------------------------------------------

SECRETS = {
    "WPC_SECRET_TOC_METRO": "toc-hmac-key-Z1",
    "WPC_SECRET_ISR": "isr-hmac-key-Z2",
    "WPC_TOKEN_EASTSIDE": "eastside-bearer-Z3",
}


def test_endpoints_of_resolves_secrets(example: NotifyConfig) -> None:
    team = example.recipient("toc-metro")
    assert team is not None
    endpoints = endpoints_of(team, SECRETS)
    assert endpoints == {
        "webhook": Endpoint(
            name="webhook", kind="webhook", url="https://care.example.org/hooks/wpc", secret="toc-hmac-key-Z1"
        ),
        "email": Endpoint(name="email", kind="email", to=("toc-metro@example.org",)),
    }
    assert endpoints["webhook"].secret == "toc-hmac-key-Z1"
    assert endpoints["email"].secret is None
    assert "toc-hmac-key-Z1" not in repr(endpoints["webhook"])


def test_endpoints_of_keeps_event_lists(example: NotifyConfig) -> None:
    practice = example.recipient("eastside-clinic")
    assert practice is not None
    endpoints = endpoints_of(practice, SECRETS)
    assert endpoints["fhir"].kind == "fhir"
    assert endpoints["fhir"].url == "https://fhir.eastside.example.org/r4"
    assert endpoints["fhir"].secret == "eastside-bearer-Z3"
    assert endpoints["fhir"].events is None
    assert endpoints["email"].events == ("enrolled",)


@pytest.mark.parametrize("secrets", [{}, {"WPC_SECRET_TOC_METRO": ""}], ids=["absent", "empty"])
def test_endpoints_of_missing_secret(example: NotifyConfig, secrets: dict[str, str]) -> None:
    team = example.recipient("toc-metro")
    assert team is not None
    present = {"WPC_SECRET_ISR": "isr-hmac-key-Z2", "WPC_TOKEN_EASTSIDE": "eastside-bearer-Z3", **secrets}
    with pytest.raises(ValueError, match="WPC_SECRET_TOC_METRO") as info:
        endpoints_of(team, present)
    message = str(info.value)
    assert "toc-metro" in message and "webhook" in message
    for value in SECRETS.values():
        assert value not in message


def test_endpoint_without_secret_env_needs_no_secret(example: NotifyConfig) -> None:
    harbor = example.recipient("harbor-fqhc")
    assert harbor is not None
    assert endpoints_of(harbor, {}) == {
        "email": Endpoint(name="email", kind="email", to=("referrals@harbor-fqhc.example.org",)),
    }


def test_an_empty_events_list_means_every_kind() -> None:
    # EndpointConfig.events: "empty: every kind its channel can carry".
    data = minimal()
    data["practices"][0]["endpoints"] = [_email() | {"events": []}]
    cfg = NotifyConfig.model_validate(data)
    endpoint = endpoints_of(cfg.practices[0], {})["email"]
    assert all(endpoint.takes(kind) for kind in ALL_KINDS)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_endpoint_takes(kind: EventKind) -> None:
    fhir = Endpoint(name="fhir", kind="fhir", url="https://fhir.example.org")
    webhook = Endpoint(name="webhook", kind="webhook", url="https://h.example.org", secret="s")
    email = Endpoint(name="email", kind="email", to=("a@example.org",))
    enrolled_only = Endpoint(name="email", kind="email", to=("a@example.org",), events=("enrolled",))
    fhir_discharges = Endpoint(
        name="fhir", kind="fhir", url="https://f.example.org", events=("discharge", "admit_discharge", "enrolled")
    )
    assert fhir.takes(kind) is (kind in ENCOUNTER_KINDS)
    assert webhook.takes(kind) is True
    assert email.takes(kind) is True
    assert enrolled_only.takes(kind) is (kind == "enrolled")
    # An events list cannot widen what FHIR carries: "enrolled" stays out.
    assert fhir_discharges.takes(kind) is (kind in ("discharge", "admit_discharge"))
