"""`notifier.planning.plan`: from a recipient's due notices to its messages (rate limit, digest)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.planning import HOUR, DueNotice, Plan, plan

NOW = dt.datetime(2026, 3, 4, 18, 0, tzinfo=dt.UTC)


def nid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def due(n: int, *, urgent: bool = False, minutes_ago: int = 0) -> DueNotice:
    return DueNotice(nid(n), urgent, NOW - dt.timedelta(minutes=minutes_ago))


def ago(minutes: float) -> dt.datetime:
    return NOW - dt.timedelta(minutes=minutes)


# Routine 1..3 (1 is the oldest), urgent 10..11 (11 the oldest).
MIXED = [
    due(2, minutes_ago=5),
    due(10, urgent=True, minutes_ago=1),
    due(1, minutes_ago=9),
    due(3, minutes_ago=5),
    due(11, urgent=True, minutes_ago=2),
]


def test_empty_input() -> None:
    assert plan([], max_per_hour=None, digest=False, sent_in_last_hour=[], now=NOW) == Plan(())
    assert plan([], max_per_hour=1, digest=True, sent_in_last_hour=[ago(1)], now=NOW) == Plan(())


def test_no_limit_urgent_first_then_routine_one_batch_each() -> None:
    got = plan(MIXED, max_per_hour=None, digest=False, sent_in_last_hour=[ago(1)] * 50, now=NOW)
    # Urgent first, then by deliver_after, then by id (2 and 3 are due at the same time).
    assert got == Plan(((nid(11),), (nid(10),), (nid(1),), (nid(2),), (nid(3),)))


def test_digest_routine_notices_go_in_one_batch_urgent_separately() -> None:
    got = plan(MIXED, max_per_hour=None, digest=True, sent_in_last_hour=[], now=NOW)
    assert got == Plan(((nid(11),), (nid(10),), (nid(1), nid(2), nid(3))))


def test_digest_a_single_routine_notice_is_its_own_batch() -> None:
    got = plan([due(1), due(10, urgent=True)], max_per_hour=None, digest=True, sent_in_last_hour=[], now=NOW)
    assert got == Plan(((nid(10),), (nid(1),)))
    assert plan([due(1)], max_per_hour=None, digest=True, sent_in_last_hour=[], now=NOW) == Plan(((nid(1),),))


def test_digest_only_urgent_notices() -> None:
    got = plan(
        [due(10, urgent=True), due(11, urgent=True)], max_per_hour=None, digest=True, sent_in_last_hour=[], now=NOW
    )
    assert got == Plan(((nid(10),), (nid(11),)))


def test_rate_limit_allowance_covers_all_batches() -> None:
    got = plan(MIXED, max_per_hour=8, digest=False, sent_in_last_hour=[ago(10), ago(20), ago(30)], now=NOW)
    assert got == Plan(((nid(11),), (nid(10),), (nid(1),), (nid(2),), (nid(3),)))  # 5 == 8 - 3


def test_rate_limit_allowance_smaller_singles_then_one_batch_of_the_rest() -> None:
    # 6 allowed, 3 sent within the hour: allowance 3 -> two singles and one batch of the other three.
    got = plan(MIXED, max_per_hour=6, digest=False, sent_in_last_hour=[ago(10), ago(20), ago(30)], now=NOW)
    assert got == Plan(((nid(11),), (nid(10),), (nid(1), nid(2), nid(3))))
    assert got.postpone_until is None


def test_rate_limit_allowance_one_is_one_batch_of_everything() -> None:
    got = plan(MIXED, max_per_hour=1, digest=False, sent_in_last_hour=[], now=NOW)
    assert got == Plan(((nid(11), nid(10), nid(1), nid(2), nid(3)),))


def test_rate_limit_with_digest() -> None:
    # Batches before the limit: [11], [10], [1, 2, 3]; allowance 2 -> [11], [10, 1, 2, 3].
    got = plan(MIXED, max_per_hour=2, digest=True, sent_in_last_hour=[], now=NOW)
    assert got == Plan(((nid(11),), (nid(10), nid(1), nid(2), nid(3))))


def test_sends_older_than_an_hour_do_not_count() -> None:
    old = [ago(61), ago(60), ago(120), NOW - HOUR - dt.timedelta(microseconds=1)]
    got = plan(MIXED, max_per_hour=5, digest=False, sent_in_last_hour=[*old, ago(59)], now=NOW)
    # Only ago(59) counts (a send exactly an hour ago has left the window): allowance 4 of 5 batches.
    assert got == Plan(((nid(11),), (nid(10),), (nid(1),), (nid(2), nid(3))))


def test_no_allowance_postpones_until_one_slot_frees() -> None:
    # Limit 3; sends 50, 40, 10 minutes ago count, the ones before an hour do not.
    sent = [ago(10), ago(90), ago(50), ago(60), ago(40), ago(200)]
    got = plan(MIXED, max_per_hour=3, digest=False, sent_in_last_hour=sent, now=NOW)
    assert got.batches == ()
    assert got.postpone_until == ago(50) + HOUR == NOW + dt.timedelta(minutes=10)
    # At that moment one slot is free again.
    later = plan(MIXED, max_per_hour=3, digest=False, sent_in_last_hour=sent, now=got.postpone_until)
    assert len(later.batches) == 1
    assert later.batches[0] == (nid(11), nid(10), nid(1), nid(2), nid(3))


def test_no_allowance_over_the_limit_waits_for_enough_sends_to_leave() -> None:
    # Limit 2 but 4 sends within the hour (the limit was lowered): 3 must leave before one slot is free.
    sent = [ago(5), ago(15), ago(45), ago(30)]
    got = plan([due(1)], max_per_hour=2, digest=False, sent_in_last_hour=sent, now=NOW)
    assert got == Plan((), postpone_until=ago(15) + HOUR)
    assert plan([due(1)], max_per_hour=2, digest=False, sent_in_last_hour=sent, now=ago(15) + HOUR) == Plan(
        ((nid(1),),)
    )
    almost = ago(15) + HOUR - dt.timedelta(seconds=1)
    assert plan([due(1)], max_per_hour=2, digest=False, sent_in_last_hour=sent, now=almost).batches == ()


def test_no_allowance_even_for_urgent_notices() -> None:
    got = plan([due(10, urgent=True)], max_per_hour=1, digest=False, sent_in_last_hour=[ago(30)], now=NOW)
    assert got == Plan((), postpone_until=NOW + dt.timedelta(minutes=30))


# --- property -------------------------------------------------------------------------------


@st.composite
def inputs(draw: st.DrawFn) -> tuple[list[DueNotice], int | None, bool, list[dt.datetime]]:
    count = draw(st.integers(min_value=0, max_value=25))
    ids = draw(st.lists(st.integers(min_value=0, max_value=10_000), min_size=count, max_size=count, unique=True))
    notices = [
        DueNotice(nid(i), draw(st.booleans()), NOW - dt.timedelta(seconds=draw(st.integers(0, 86_400)))) for i in ids
    ]
    max_per_hour = draw(st.none() | st.integers(min_value=1, max_value=12))
    digest = draw(st.booleans())
    sent = draw(st.lists(st.integers(min_value=0, max_value=3 * 3600), max_size=20))
    return notices, max_per_hour, digest, [NOW - dt.timedelta(seconds=s) for s in sent]


@settings(max_examples=400, deadline=None)
@given(inputs())
def test_plan_property(data: tuple[list[DueNotice], int | None, bool, list[dt.datetime]]) -> None:
    notices, max_per_hour, digest, sent = data
    got = plan(notices, max_per_hour=max_per_hour, digest=digest, sent_in_last_hour=sent, now=NOW)
    planned = Counter(n for batch in got.batches for n in batch)
    assert all(batch for batch in got.batches)  # no empty message
    assert all(times == 1 for times in planned.values())  # no notice twice
    if got.postpone_until is None:
        assert set(planned) == {n.notice_id for n in notices}  # nothing lost
    else:
        assert got.batches == ()
        assert got.postpone_until > NOW
        # The earliest moment a slot is free: then something goes, a moment before nothing does.
        at = got.postpone_until
        assert plan(notices, max_per_hour=max_per_hour, digest=digest, sent_in_last_hour=sent, now=at).batches
        before = at - dt.timedelta(microseconds=1)
        assert plan(notices, max_per_hour=max_per_hour, digest=digest, sent_in_last_hour=sent, now=before).batches == ()
    recent = sum(1 for t in sent if t > NOW - HOUR)
    if max_per_hour is not None:
        assert len(got.batches) <= max(0, max_per_hour - recent)
        if notices and recent < max_per_hour:
            assert got.postpone_until is None
    else:
        assert got.postpone_until is None
    # Urgent notices are never behind a routine one.
    order = [n for batch in got.batches for n in batch]
    urgent = {n.notice_id for n in notices if n.urgent}
    flags = [n in urgent for n in order]
    assert flags == sorted(flags, reverse=True)
