"""The one 42 CFR Part 2 decision (services/part2.py), as a table, and the notifier using it."""

from __future__ import annotations

import pytest

from services import part2


@pytest.mark.parametrize(
    ("qualified", "scope", "consents", "sud", "why"),
    [
        (True, "care_team", [], True, "part2_program"),
        (True, "pcp", [], True, "part2_program"),
        (False, "care_team", ["care_team"], True, "consent"),
        (False, "pcp", ["pcp"], True, "consent"),
        (False, "pcp", ["care_team"], False, "no_consent"),  # the other kind's consent does not count
        (False, "care_team", ["pcp", "research"], False, "no_consent"),
        (False, "care_team", [], False, "no_consent"),
    ],
)
def test_disclosure_table(qualified: bool, scope: part2.Scope, consents: list[str], sud: bool, why: str) -> None:
    d = part2.disclosure(part2_qualified=qualified, scope=scope, consented_scopes=frozenset(consents))
    assert (d.sud_information, d.why) == (sud, why)


def test_without_consent_sud_facts_are_hidden_and_the_rest_shown() -> None:
    d = part2.disclosure(part2_qualified=False, scope="care_team", consented_scopes=frozenset())
    assert not d.diagnosis(sud=True) and d.diagnosis(sud=False)
    assert not d.program("SUD-ENS") and d.program("TOC") and d.program(None)
    assert not d.facility(part2=True) and d.facility(part2=False)


def test_with_consent_everything_is_shown() -> None:
    d = part2.disclosure(part2_qualified=False, scope="care_team", consented_scopes=frozenset({"care_team"}))
    assert d.diagnosis(sud=True) and d.program("SUD-ENS") and d.facility(part2=True)


@pytest.mark.parametrize(
    ("programs", "part2_programs", "expected"),
    [
        (["SUD-ENS"], ["SUD-ENS"], True),
        (["TOC", "SUD-ENS"], ["SUD-ENS"], True),
        (["TOC"], ["SUD-ENS"], False),
        (["TOC", "ISR"], [], False),
        ([], ["SUD-ENS"], False),  # ops: reads every program, is on no care team
    ],
)
def test_qualified(programs: list[str], part2_programs: list[str], expected: bool) -> None:
    assert part2.qualified(programs, part2_programs) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [("F11.20", True), ("f1120", True), ("T40.1X1A", True), ("Z71.41", True), ("F20.9", False), ("T401", True),
     ("Z59.00", False), ("", False)],
)
def test_is_sud_code_by_prefix_without_dots_or_case(code: str, expected: bool) -> None:
    assert part2.is_sud_code(code, ["F10", "F11", "T40", "Z71.4"]) is expected
