"""Who may handle a person's Part 2 consent (services.auth.may_handle_consent), as a table."""

from __future__ import annotations

import pytest

from services.auth import User, may_handle_consent


@pytest.mark.parametrize(
    ("roles", "person_programs", "allowed"),
    [
        ({"care_team:TOC"}, {"SUD-ENS"}, False),  # the issue: TOC team, a SUD-ENS candidate only
        ({"care_team:SUD-ENS"}, {"SUD-ENS"}, True),
        ({"care_team:TOC"}, {"TOC", "SUD-ENS"}, True),  # one shared program is enough
        ({"care_team:*"}, {"ISR"}, True),
        ({"care_team:TOC"}, set(), False),  # not a candidate or enrollee of anything (or unknown)
        ({"ops"}, set(), True),
        ({"ops"}, {"SUD-ENS"}, True),
        ({"partner"}, {"TOC"}, False),
        (set(), {"TOC"}, False),
    ],
)
def test_consent_roles(roles: set[str], person_programs: set[str], allowed: bool) -> None:
    assert may_handle_consent(User("u", frozenset(roles)), person_programs) is allowed
