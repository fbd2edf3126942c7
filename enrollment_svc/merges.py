"""Merge rules: what becomes of identities, encounters, candidates and person facts when two
identities or two persons become one. Pure.

    what happens                                    what is decided (function)
    an event's identity and Medi-Cal id             known identity, the Medi-Cal id another
                                                    person's: the two persons become one, into
                                                    the Medi-Cal id's person; known, the id new:
                                                    the person takes it; new identity: it joins
                                                    the Medi-Cal id's person, else a new person
                                                    (`resolve`)
    an A40 / A34 / A47 (or A18 with MRG) names a    already merged into this survivor: nothing (a
    prior MRN                                       redelivery); never seen: recorded as merged
                                                    (an early merge: its later events join the
                                                    survivor), nothing to decide again; known:
                                                    its history moves, and when it was another
                                                    person's, that person's identities follow
                                                    (`identity_merge`)
    the prior MRN was its person's last identity    that person's candidates follow it
                                                    (`candidates_follow`)
    two encounters of one facility and visit        one encounter, the survivor's: the other's
    number end up under one person                  events join it (`combine_visits`)
    both persons have an active candidate           the survivor's stays, the other's is
                                                    withdrawn (`decide.MERGED`) (`withdrawn_on_merge`)
    both persons have a Medi-Cal id                 the survivor's stays (`medi_cal_after_merge`)

The repository (`enrollment_svc.persons`, `enrollment_svc.candidates`) loads what these
read, under the persons' row locks, and writes what they decide.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "Combined",
    "IdentityMerge",
    "Resolution",
    "Visit",
    "candidates_follow",
    "combine_visits",
    "identity_merge",
    "medi_cal_after_merge",
    "resolve",
    "withdrawn_on_merge",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """Whose an event's identity is, and what that changes.

    ``kind``: ``known`` (nothing changes), ``claim`` (the person takes the Medi-Cal id),
    ``merge`` (the identity's person ``merge_from`` becomes ``person``, the Medi-Cal id's),
    ``join`` (a new identity of the Medi-Cal id's person), ``new`` (a new identity of a new
    person, ``person`` None: the repository makes it).
    """

    kind: Literal["known", "claim", "merge", "join", "new"]
    person: uuid.UUID | None
    merge_from: uuid.UUID | None = None


def resolve(
    identity_person: uuid.UUID | None, medi_cal_person: uuid.UUID | None, medi_cal_id: str | None
) -> Resolution:
    """The person of an event's identity (``identity_person``: its person, None when the identity is
    new) given the person holding its Medi-Cal id (programs.md: one person across hospitals)."""
    if identity_person is None:
        if medi_cal_person is not None:
            return Resolution("join", medi_cal_person)
        return Resolution("new", None)
    if medi_cal_person is not None and medi_cal_person != identity_person:
        return Resolution("merge", medi_cal_person, merge_from=identity_person)
    if medi_cal_person is None and medi_cal_id:
        return Resolution("claim", identity_person)
    return Resolution("known", identity_person)


@dataclasses.dataclass(frozen=True, slots=True)
class IdentityMerge:
    """What an A40-family merge of a prior MRN does.

    ``kind``: ``redelivered`` (merged into this survivor already: nothing), ``early`` (never
    seen: record it merged, nothing of it stored to move), ``move`` (its history moves).
    ``other_person``: the prior MRN was another person's, whose identities then follow
    (and whose row is locked first).
    """

    kind: Literal["redelivered", "early", "move"]
    other_person: bool = False

    @property
    def regroups(self) -> bool:
        """Whether the survivor's history changed, so its triggers are decided again."""
        return self.kind == "move"


def identity_merge(
    prior_person: uuid.UUID | None, prior_merged_into: str | None, survivor_key: str, survivor_person: uuid.UUID
) -> IdentityMerge:
    """The merge of a prior MRN (``prior_person`` None: never seen) into ``survivor_key``."""
    if prior_person is None:
        return IdentityMerge("early")
    if prior_merged_into == survivor_key:
        return IdentityMerge("redelivered")
    return IdentityMerge("move", other_person=prior_person != survivor_person)


def candidates_follow(identities_left: int) -> bool:
    """Whether a person's candidates follow a merged MRN: only when it was the person's last
    identity of its own (a person with other MRNs stays a person, with its candidates)."""
    return identities_left == 0


@dataclasses.dataclass(frozen=True, slots=True)
class Visit:
    """An encounter's key: one visit (facility, visit number) of one patient is one encounter."""

    id: uuid.UUID
    facility: str
    visit_number: str


@dataclasses.dataclass(frozen=True, slots=True)
class Combined:
    folded: tuple[tuple[uuid.UUID, uuid.UUID], ...]  # (gone, kept): gone's events join kept, gone is deleted
    moved: tuple[uuid.UUID, ...]  # encounters that move to the survivor as they are


def combine_visits(moving: Sequence[Visit], survivors: Sequence[Visit]) -> Combined:
    """Of the encounters ``moving`` to a person, those whose visit the person has already
    (``survivors``: the person's encounters) fold into that encounter; the others move."""
    kept = {(v.facility, v.visit_number): v.id for v in survivors}
    folded: list[tuple[uuid.UUID, uuid.UUID]] = []
    moved: list[uuid.UUID] = []
    for visit in moving:
        into = kept.get((visit.facility, visit.visit_number))
        if into is not None and into != visit.id:
            folded.append((visit.id, into))
        else:
            moved.append(visit.id)
    return Combined(tuple(folded), tuple(moved))


def withdrawn_on_merge(survivor_active: uuid.UUID | None, moving_active: uuid.UUID | None) -> uuid.UUID | None:
    """One active candidate per person: the survivor's stays; the moving one is withdrawn when
    the survivor has one (else it becomes the survivor's)."""
    return moving_active if survivor_active is not None else None


def medi_cal_after_merge(survivor: str | None, other: str | None) -> str | None:
    """The merged person's Medi-Cal id: the survivor's, else the other's."""
    return survivor if survivor is not None else other
