"""The bulk path's pure parts (enrollment_svc.bulk): which events go in bulk, and person rows."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

from enrollment_svc.bulk import Item, KnownIdentity, KnownPerson, item_of, person_rows, route
from enrollment_svc.rules import load_rules
from enrollment_svc.service import EXAMPLE_RULES
from tests.adt_builder import adt, event

NOW = dt.datetime(2026, 11, 20, 20, 0, tzinfo=dt.UTC)
CUTOFF = NOW - dt.timedelta(hours=72)
RULES = load_rules(EXAMPLE_RULES)
P1, P2 = uuid.UUID(int=1), uuid.UUID(int=2)


def item(trigger: str = "A08", *, mrn: str = "M1", days_ago: float = 30, medi_cal_id: str | None = None,
         processing_id: str = "P") -> Item:
    at = NOW - dt.timedelta(days=days_ago)
    return item_of(event(adt(trigger, mrn=mrn, at=at, admit=at, medi_cal_id=medi_cal_id, prior_mrn="OLD" if
                             trigger == "A40" else None, processing_id=processing_id)), RULES)


def ids() -> itertools.count[int]:
    return itertools.count(100)


def fresh(counter: itertools.count[int]) -> uuid.UUID:
    return uuid.UUID(int=next(counter))


def test_history_of_a_known_person_with_nothing_current_goes_in_bulk() -> None:
    items = [item(mrn="M1"), item(mrn="M1", days_ago=20)]
    key = items[0].key
    routing = route(items, CUTOFF, {key: KnownIdentity(P1, None)}, {P1: KnownPerson(None, False)}, {})
    assert routing.bulk == [0, 1] and routing.person_of == {0: P1, 1: P1} and not routing.new_persons


def test_a_persons_one_event_in_order_goes_in_the_set_and_is_decided_there() -> None:
    items = [item(mrn="M1", days_ago=0.5), item(mrn="M2")]
    known = {items[0].key: KnownIdentity(P1, None), items[1].key: KnownIdentity(P2, None)}
    through = NOW - dt.timedelta(days=1)
    routing = route(items, CUTOFF, known, {P1: KnownPerson(None, True, through), P2: KnownPerson(None, True)}, {})
    assert routing.bulk == [0, 1] and routing.deciding == {0, 1}  # something current: both decide their own


def test_a_late_event_or_several_of_a_person_with_something_current_go_one_at_a_time() -> None:
    late, two = item(mrn="M1", days_ago=2), [item(mrn="M2", days_ago=1), item(mrn="M2", days_ago=0.5)]
    known = {late.key: KnownIdentity(P1, None), two[0].key: KnownIdentity(P2, None)}
    persons = {P1: KnownPerson(None, True, NOW - dt.timedelta(days=1)), P2: KnownPerson(None, False)}
    routing = route([late, *two], CUTOFF, known, persons, {})
    assert routing.bulk == [] and not routing.deciding


def test_a_new_persons_current_event_is_decided_in_the_set() -> None:
    counter = ids()
    items = [item(mrn="N1", days_ago=0.1, medi_cal_id="9N")]
    routing = route(items, CUTOFF, {}, {}, {}, lambda: fresh(counter))
    assert routing.bulk == [0] and routing.deciding == {0} and routing.new_persons == {routing.person_of[0]: "9N"}


def test_one_current_event_leaves_all_of_its_persons_events_to_the_per_event_path() -> None:
    items = [item(mrn="M1"), item(mrn="M2", medi_cal_id="9X"), item(mrn="M1", days_ago=0.5)]
    known = {items[0].key: KnownIdentity(P1, None), items[1].key: KnownIdentity(P2, None)}
    routing = route(items, CUTOFF, known, {P1: KnownPerson(None, False), P2: KnownPerson("9X", False)}, {"9X": P2})
    assert routing.bulk == [1] and routing.person_of == {1: P2}


def test_merges_merged_identities_and_a_new_medi_cal_id_of_a_known_person_are_left_out() -> None:
    merge, merged, new_id = item("A40", mrn="M1"), item(mrn="M2"), item(mrn="M3", medi_cal_id="9NEW")
    known = {merge.key: KnownIdentity(P1, None), merged.key: KnownIdentity(P1, "SURVIVOR"),
             new_id.key: KnownIdentity(P2, None)}
    routing = route([merge, merged, new_id], CUTOFF, known,
                    {P1: KnownPerson(None, False), P2: KnownPerson(None, False)}, {})
    assert routing.bulk == []


def test_new_identities_of_one_medi_cal_id_make_one_person_or_join_the_known_one() -> None:
    counter = ids()
    items = [item(mrn="A", medi_cal_id="9A"), item(mrn="B", medi_cal_id="9A"), item(mrn="C", medi_cal_id="9K"),
             item(mrn="D")]
    routing = route(items, CUTOFF, {}, {P1: KnownPerson("9K", False)}, {"9K": P1}, lambda: fresh(counter))
    made = routing.person_of[0]
    assert routing.bulk == [0, 1, 2, 3]
    assert routing.person_of[1] == made and routing.person_of[2] == P1 and routing.person_of[3] not in (made, P1)
    assert routing.new_persons == {made: "9A", routing.person_of[3]: None}
    assert routing.new_identities == {items[0].key: 0, items[1].key: 1, items[2].key: 2, items[3].key: 3}


def test_a_new_identity_stating_its_medi_cal_id_in_some_events_only_is_left_out() -> None:
    items = [item(mrn="A"), item(mrn="A", medi_cal_id="9A", days_ago=20)]
    assert route(items, CUTOFF, {}, {}, {}).bulk == []


def test_training_messages_are_only_marked_whatever_their_time() -> None:
    items = [item(mrn="A", days_ago=0.1, processing_id="T")]
    routing = route(items, CUTOFF, {}, {}, {})
    assert routing.bulk == [0] and routing.person_of == {}


def test_person_rows_join_a_persons_run_of_the_same_facts_at_its_latest_times() -> None:
    t = [NOW - dt.timedelta(days=d) for d in range(5)]
    same = {"b": None, "card": "{}"}
    other = {"b": None, "card": '{"phone": "x"}'}
    rows = person_rows([
        (P1, same, t[3], None), (P2, same, t[4], t[4]), (P1, same, t[1], t[1]), (P1, same, t[2], None),
        (P1, other, t[4], None), (P1, same, t[0], None),
    ])
    assert rows == [
        {**same, "t": t[1], "et": t[1], "p": P1},
        {**same, "t": t[4], "et": t[4], "p": P2},
        {**other, "t": t[4], "et": None, "p": P1},
        {**same, "t": t[0], "et": None, "p": P1},
    ]


def test_history_is_told_from_current_events_and_merges_by_its_own_times() -> None:
    old, current, merge = item(days_ago=30), item(days_ago=0.5), item("A40", days_ago=30)
    assert old.historical(CUTOFF) and not current.historical(CUTOFF) and not merge.historical(CUTOFF)
