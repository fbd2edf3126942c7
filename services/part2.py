"""42 CFR Part 2: what a viewer (a care team on screen) or a recipient (a notice) may be
shown of a person's substance use disorder (SUD) information. One pure decision, called by
the notifier's `minimum_necessary` and by the web app's person page, so that what a screen
shows and what a notice says cannot drift apart.

The rule (§ 2.12, § 2.13, § 2.31 consent; the county's reading of it):

============================  =====================================================
who                           sees SUD information
============================  =====================================================
a Part 2 program              yes: it is itself the program the law protects
  (``part2_qualified``)
anyone else                   only with the patient's consent recorded for their kind
                              (scope ``pcp`` for a primary care practice,
                              ``care_team`` for a care team)
============================  =====================================================

SUD information, when it may not be shown:

- anything *at* a Part 2 facility (an encounter, a notice about it): the facility's name
  alone discloses SUD treatment;
- SUD diagnoses (which codes are SUD is the caller's fact: its configuration says);
- the name of the SUD program (SUD-ENS): being its candidate says the person has an SUD.

Who counts as a Part 2 program is configuration: the notification file marks recipients
``part2_qualified``; the rules file marks programs ``part2`` and a viewer is qualified when
one of the programs whose care team they are on is (`qualified`). The caller works out
those facts; this module decides, with no I/O.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

__all__ = ["SUD_PROGRAM", "Disclosure", "Scope", "disclosure", "is_sud_code", "qualified"]

Scope = Literal["pcp", "care_team"]

SUD_PROGRAM = "SUD-ENS"  # programs.md: the program whose name alone is SUD information


@dataclass(frozen=True)
class Disclosure:
    """What one viewer or recipient may be shown of one person's SUD information."""

    sud_information: bool
    why: Literal["part2_program", "consent", "no_consent"]

    def diagnosis(self, *, sud: bool) -> bool:
        """Whether a diagnosis (``sud``: its code is SUD information) may be shown."""
        return self.sud_information or not sud

    def program(self, program: str | None) -> bool:
        """Whether the program's name may be shown."""
        return self.sud_information or program != SUD_PROGRAM

    def facility(self, *, part2: bool) -> bool:
        """Whether anything at a facility (``part2``: it is a Part 2 program) may be shown."""
        return self.sud_information or not part2


def disclosure(*, part2_qualified: bool, scope: Scope, consented_scopes: Collection[str]) -> Disclosure:
    """The decision for a viewer or recipient of kind ``scope`` (Part 2 program or not),
    given the scopes the patient has consented to (active consents only)."""
    if part2_qualified:
        return Disclosure(True, "part2_program")
    if scope in consented_scopes:
        return Disclosure(True, "consent")
    return Disclosure(False, "no_consent")


def qualified(viewer_programs: Collection[str], part2_programs: Collection[str]) -> bool:
    """A viewer is a Part 2 program's staff when one of their care team's programs is one."""
    return any(p in part2_programs for p in viewer_programs)


def is_sud_code(code: str, prefixes: Collection[str]) -> bool:
    """Whether an ICD-10-CM code is SUD information by the configured prefixes (the notification
    file's ``part2.sud_code_prefixes``), compared upper case and without dots."""
    compact = code.replace(".", "").upper()
    return any(compact.startswith(p.replace(".", "").upper()) for p in prefixes)
