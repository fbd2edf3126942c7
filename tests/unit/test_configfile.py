"""Configuration mistakes in one line with the file and the line: the YAML loader, the rules,
notification and users files, ICD-10-CM codes, and the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from adt_listener.settings import ListenerSettings
from enrollment_svc.rules import load_rules, rules_from_text
from notifier.config import config_from_text
from services import icd10
from services.auth import load_users
from services.configfile import ConfigError, parse_yaml, read_yaml, validate
from services.settings import ServiceSettings, load_settings
from wpc.check_config import misspelt_settings

ROOT = Path(__file__).resolve().parents[2]
RULES_TEXT = (ROOT / "deploy" / "rules" / "wpc-rules.yaml").read_text(encoding="utf-8")
NOTIFY_TEXT = (ROOT / "deploy" / "notify" / "wpc-notify.yaml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def one_problem(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    assert len(exc.value.problems) == 1, exc.value.problems
    assert "\n" not in str(exc.value)
    return exc.value.problems[0]


# --- the loader -------------------------------------------------------------------------------


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int
    name: str = ""


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Inner]


DOC = """\
# a comment
items:
  - port: 1
  - port: 2
    name: x
  - port: two
"""


def test_syntax_error_names_file_line_and_column() -> None:
    text = "a: 1\nb: [1, 2\nc: 3\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "x.yaml")
    message = one_problem(info)
    assert message.startswith("x.yaml line 3, column 2: YAML syntax error: ")
    assert "at line 2" in message  # where the unclosed sequence started


def test_mapping_value_in_the_wrong_place() -> None:
    with pytest.raises(ConfigError, match=r"^x\.yaml line 2, column 5: YAML syntax error: mapping values"):
        parse_yaml("a: 1\nb: c: d\n", "x.yaml")


def test_schema_error_points_at_the_line_of_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        validate(parse_yaml(DOC, "x.yaml"), Outer)
    assert one_problem(info).startswith(f"x.yaml line {line_of(DOC, 'port: two')}: items[2].port: ")
    assert "(found 'two')" in str(info.value)


def test_unknown_and_missing_keys() -> None:
    text = DOC.replace("name: x", "nmae: x").replace("port: two", "name: y")
    with pytest.raises(ConfigError) as info:
        validate(parse_yaml(text, "x.yaml"), Outer)
    assert info.value.problems == (
        f"x.yaml line {line_of(text, 'nmae')}: items[1].nmae: unknown key (not allowed here; check its spelling "
        "and indentation)",
        f"x.yaml line {line_of(text, 'name: y')}: items[2].port: required, but missing",
    )
    assert str(info.value).endswith("(and 1 more problem)")


def test_a_key_written_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^x\.yaml line 3: key 'port' is written twice \(first at line 2\)"):
        parse_yaml("items:\n  - port: 1\n    port: 2\n", "x.yaml")


def test_missing_file_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^WPC_RULES_FILE={path}: no such file; do this$"):
        read_yaml(path, setting="WPC_RULES_FILE", hint="do this")
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml(tmp_path, setting="WPC_RULES_FILE")


# --- the rules file ---------------------------------------------------------------------------


def test_rules_code_typo_is_refused_with_a_suggestion() -> None:
    text = RULES_TEXT.replace("include: [F20, F21,", "include: [F20, F2l,", 1)
    with pytest.raises(ConfigError) as info:
        rules_from_text(text, "rules.yaml")
    assert one_problem(info) == (
        f"rules.yaml line {line_of(text, 'F2l')}: value_sets.smi.include[1]: 'F2l' is not an ICD-10-CM code "
        "(a letter, a digit, a digit, then up to 4 letters or digits after the dot); did you mean F21?"
    )


def test_rules_missing_value_set_points_at_value_sets() -> None:
    start = RULES_TEXT.index("\n  overdose:")
    end = RULES_TEXT.index("\n  homelessness:")
    text = RULES_TEXT[:start] + RULES_TEXT[end:]
    with pytest.raises(ConfigError) as info:
        rules_from_text(text, "rules.yaml")
    assert one_problem(info).startswith(f"rules.yaml line {line_of(text, 'value_sets:')}: value_sets: lacks overdose")


def test_rules_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"WPC_RULES_FILE=.*nope\.yaml: no such file; set WPC_RULES_FILE"):
        load_rules(tmp_path / "nope.yaml", setting="WPC_RULES_FILE")


# --- the notification configuration -----------------------------------------------------------


def test_notify_without_a_team_for_a_program_names_the_care_teams_line() -> None:
    text = NOTIFY_TEXT.replace("programs: [ISR]", "programs: [TOC]")
    assert text != NOTIFY_TEXT
    with pytest.raises(ConfigError) as info:
        config_from_text(text, "notify.yaml")
    assert one_problem(info).startswith(
        f"notify.yaml line {line_of(text, 'care_teams:')}: care_teams: no care team serves ISR: add a team"
    )


def test_notify_sud_prefix_typo() -> None:
    text = NOTIFY_TEXT.replace("[F10, F11,", "[F1O, F11,")
    with pytest.raises(ConfigError) as info:
        config_from_text(text, "notify.yaml")
    assert one_problem(info).startswith(f"notify.yaml line {line_of(text, 'F1O')}: part2.sud_code_prefixes[0]: 'F1O'")
    assert str(info.value).endswith("did you mean F10?")


# --- the users file ---------------------------------------------------------------------------

USERS = """\
- name: a
  token_sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
  roles: [ops]
- name: b
  token_sha256: 6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b
  roles: [care_team:TOC, care_team:TOX]
"""


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t, "line 6: [1].roles: unknown roles ['care_team:TOX']; use ops, partner"),
        (lambda t: t.replace("care_team:TOX", "partner").replace("  token_sha256: 6b", "  tokn: 6b"),
         "line 5: [1].tokn: unknown key"),
        (lambda t: t.replace("6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
                             "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8")
         .replace("care_team:TOX", "partner"), "line 5: [1].token_sha256: the same token as user 'a'"),
        (lambda t: "name: a\n", "the users file must be a YAML list"),
    ],
    ids=["unknown role", "misspelt key", "same token twice", "not a list"],
)
def test_users_file_mistakes(edit: object, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    assert callable(edit)
    path.write_text(edit(USERS))
    with pytest.raises(ConfigError) as info:
        load_users(path, setting="WPC_USERS_FILE")
    assert all(p.startswith(f"{path}") for p in info.value.problems)
    assert any(expected in p for p in info.value.problems), info.value.problems


# --- ICD-10-CM codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "suggestion"),
    [("F2l", "F21"), ("F2L", "F21"), ("F1O", "F10"), ("FI0", "F10"), ("1I0", "I10"), ("5O6", "S06"),
     ("E1O.1", "E10.1"), ("F10.l", "F10.1"), ("0A1", None), ("F10.2.1", None), ("F1-0", None), ("", None)],
)
def test_codes_that_cannot_be_icd10(code: str, suggestion: str | None) -> None:
    problem = icd10.problem(code)
    assert problem is not None and "ICD-10-CM" in problem
    if suggestion:
        assert problem.endswith(f"did you mean {suggestion}?")
    else:
        assert "did you mean" not in problem


@pytest.mark.parametrize(
    "code", ["F", "F1", "F21", "f21", "F32.A", "M1A.0", "C4A", "Z3A.01", "S06.0X1A", "T40.1", "Z59.0", "F1021"]
)
def test_codes_of_icd10_shape(code: str) -> None:
    assert icd10.problem(code) is None


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WPC_MLLP_PORT", "abc", "WPC_MLLP_PORT='abc': not an integer (e.g. WPC_MLLP_PORT=2575)"),
        ("WPC_LOG_LEVEL", "verbose",
         "WPC_LOG_LEVEL='verbose': not a log level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("WPC_LISTENER_HTTP_PORT", "70000", "WPC_LISTENER_HTTP_PORT='70000': not a TCP port"),
        ("WPC_LOG_JSON", "maybe", "WPC_LOG_JSON='maybe': not true or false"),
        ("WPC_KAFKA_TIMEOUT_S", "soon", "WPC_KAFKA_TIMEOUT_S='soon': not a number (e.g. WPC_KAFKA_TIMEOUT_S=10.0)"),
    ],
)
def test_a_wrong_setting_names_its_variable(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(ListenerSettings)
    assert one_problem(info).startswith(expected)


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WPC_LOG_LEVEL", "debug")
    assert load_settings(ServiceSettings).log_level == "DEBUG"


def test_a_wrong_override_names_its_option() -> None:
    with pytest.raises(ConfigError, match=r"^--mllp-port 99999: not a TCP port"):
        load_settings(ListenerSettings, {"mllp_port": 99999}, flags={"mllp_port": "--mllp-port"})


def test_misspelt_setting_names_are_warned_of() -> None:
    env = {"WPC_MLLP_PROT": "1", "WPC_MLLP_PORT": "2", "WPC_SECRET_TOC_METRO": "s", "PATH": "/bin"}
    assert misspelt_settings(env) == ["warning: WPC_MLLP_PROT is not a setting (ignored); did you mean WPC_MLLP_PORT?"]
