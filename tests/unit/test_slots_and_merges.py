"""The slot rules (`enrollment_svc.slots`) and the merge rules (`enrollment_svc.merges`), as
tables of inputs and decisions: pure functions, no database."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrollment_svc import merges, slots
from enrollment_svc.status import HOLDS_SLOT, TRANSITIONS

A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


# --- slots ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "used", "placed"),
    [
        (2, 0, "pending"),
        (2, 1, "pending"),
        (2, 2, "queued"),  # the last slot taken: wait
        (2, 3, "queued"),  # over capacity (capacity lowered in the rules since): wait
        (0, 0, "queued"),  # no capacity row: nobody is proposed
    ],
)
def test_a_new_candidate_is_proposed_only_into_a_free_slot(capacity: int, used: int, placed: str) -> None:
    assert slots.placement(slots.Occupancy(capacity, used)) == placed


@pytest.mark.parametrize(("from_status", "action"), sorted(TRANSITIONS))
def test_a_slot_is_released_exactly_when_a_holder_stops_holding_one(from_status: str, action: str) -> None:
    to_status = TRANSITIONS[(from_status, action)]
    expected = action in {"decline", "expire", "disenroll"} or (action == "withdraw" and from_status != "queued")
    assert slots.releases_slot(from_status, to_status) is expected


def test_promotion_and_acceptance_release_nothing() -> None:
    assert not slots.releases_slot("queued", "pending")
    assert not slots.releases_slot("pending", "accepted")
    assert not slots.releases_slot("accepted", "enrolled")


@pytest.mark.parametrize(
    ("capacity", "used", "queued", "chosen"),
    [
        (1, 0, [A, B], A),  # the oldest waiting goes first
        (3, 1, [B, C], B),
        (1, 1, [A, B], None),  # no free slot
        (1, 0, [], None),  # nobody waits
    ],
)
def test_a_refill_proposes_the_oldest_queued_when_a_slot_is_free(
    capacity: int, used: int, queued: list[uuid.UUID], chosen: uuid.UUID | None
) -> None:
    assert slots.next_in_line(slots.Occupancy(capacity, used), queued) == chosen


@given(st.integers(0, 50), st.integers(0, 50))
def test_the_queue_and_the_placement_agree(capacity: int, used: int) -> None:
    """A free slot means both: a new candidate is proposed, and a waiting one would be."""
    occupancy = slots.Occupancy(capacity, used)
    assert (slots.placement(occupancy) == "pending") == (slots.next_in_line(occupancy, [A]) == A) == (used < capacity)


def test_the_slot_holding_statuses_are_the_lifecycle_s() -> None:
    assert HOLDS_SLOT == {"pending", "accepted", "enrolled"}


# --- merges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity_person", "medi_cal_person", "medi_cal_id", "expected"),
    [
        (A, None, None, merges.Resolution("known", A)),
        (A, A, "91234567A", merges.Resolution("known", A)),  # the id is this person's already
        (A, None, "91234567A", merges.Resolution("claim", A)),  # a first Medi-Cal id for this person
        (A, B, "91234567A", merges.Resolution("merge", B, merge_from=A)),  # the same id at two hospitals
        (None, B, "91234567A", merges.Resolution("join", B)),  # a new MRN of a known Medi-Cal person
        (None, None, "91234567A", merges.Resolution("new", None)),
        (None, None, None, merges.Resolution("new", None)),
        (A, None, "", merges.Resolution("known", A)),  # an empty id claims nothing
    ],
)
def test_an_identity_resolves_to_one_person(
    identity_person: uuid.UUID | None, medi_cal_person: uuid.UUID | None, medi_cal_id: str | None,
    expected: merges.Resolution,
) -> None:
    assert merges.resolve(identity_person, medi_cal_person, medi_cal_id) == expected


@pytest.mark.parametrize(
    ("prior_person", "prior_merged_into", "survivor_person", "kind", "other", "regroups"),
    [
        (None, None, A, "early", False, False),  # an A40 before the prior MRN's own events
        (A, "SURV", A, "redelivered", False, False),  # merged into this survivor already
        (B, "SURV", A, "redelivered", False, False),
        (A, None, A, "move", False, True),  # two MRNs of one person
        (B, None, A, "move", True, True),  # another person's MRN: that person's identities follow
        (B, "ELSE", A, "move", True, True),  # merged elsewhere before: now into this survivor
    ],
)
def test_an_a40_merge_of_a_prior_mrn(
    prior_person: uuid.UUID | None, prior_merged_into: str | None, survivor_person: uuid.UUID, kind: str,
    other: bool, regroups: bool,
) -> None:
    merge = merges.identity_merge(prior_person, prior_merged_into, "SURV", survivor_person)
    assert (merge.kind, merge.other_person, merge.regroups) == (kind, other, regroups)


@pytest.mark.parametrize(("left", "follow"), [(0, True), (1, False), (3, False)])
def test_candidates_follow_only_a_person_s_last_identity(left: int, follow: bool) -> None:
    assert merges.candidates_follow(left) is follow


def _visit(n: int, facility: str, number: str) -> merges.Visit:
    return merges.Visit(uuid.UUID(int=n), facility, number)


def test_one_visit_of_one_patient_is_one_encounter() -> None:
    survivors = [_visit(1, "COUNTYGEN", "V1"), _visit(2, "COUNTYGEN", "V2")]
    moving = [
        _visit(10, "COUNTYGEN", "V1"),  # the survivor's visit: folds into it
        _visit(11, "STMARY", "V1"),  # same number, other facility: its own visit
        _visit(12, "COUNTYGEN", "V3"),
    ]
    combined = merges.combine_visits(moving, survivors)
    assert combined.folded == ((uuid.UUID(int=10), uuid.UUID(int=1)),)
    assert combined.moved == (uuid.UUID(int=11), uuid.UUID(int=12))


def test_an_encounter_already_the_survivor_s_moves_as_it_is() -> None:
    """Merging two MRNs of one person: the moving encounters are the person's own already."""
    own = _visit(1, "COUNTYGEN", "V1")
    combined = merges.combine_visits([own], [own])
    assert combined == merges.Combined(folded=(), moved=(own.id,))


@given(
    st.lists(st.tuples(st.sampled_from(["F1", "F2"]), st.sampled_from(["V1", "V2", "V3"])), unique=True),
    st.lists(st.tuples(st.sampled_from(["F1", "F2"]), st.sampled_from(["V1", "V2", "V3"])), unique=True),
)
def test_after_combining_no_visit_is_held_twice(
    survivor_keys: list[tuple[str, str]], moving_keys: list[tuple[str, str]]
) -> None:
    survivors = [_visit(i, f, v) for i, (f, v) in enumerate(survivor_keys)]
    moving = [_visit(100 + i, f, v) for i, (f, v) in enumerate(moving_keys)]
    combined = merges.combine_visits(moving, survivors)
    by_id = {v.id: v for v in (*survivors, *moving)}
    after = [(by_id[i].facility, by_id[i].visit_number) for i in (*(s.id for s in survivors), *combined.moved)]
    assert len(after) == len(set(after)) == len(set(survivor_keys) | set(moving_keys))
    assert len(combined.folded) + len(combined.moved) == len(moving)
    for gone, kept in combined.folded:
        assert (by_id[gone].facility, by_id[gone].visit_number) == (by_id[kept].facility, by_id[kept].visit_number)


@pytest.mark.parametrize(
    ("survivor", "moving", "withdrawn"),
    [(A, B, B), (A, None, None), (None, B, None), (None, None, None)],
)
def test_one_active_candidate_per_person_survives_a_merge(
    survivor: uuid.UUID | None, moving: uuid.UUID | None, withdrawn: uuid.UUID | None
) -> None:
    assert merges.withdrawn_on_merge(survivor, moving) == withdrawn


@pytest.mark.parametrize(
    ("survivor", "other", "kept"),
    [("S", "O", "S"), ("S", None, "S"), (None, "O", "O"), (None, None, None)],
)
def test_the_survivor_s_medi_cal_id_stays(survivor: str | None, other: str | None, kept: str | None) -> None:
    assert merges.medi_cal_after_merge(survivor, other) == kept
