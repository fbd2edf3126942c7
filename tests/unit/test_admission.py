"""adt_listener.admission: who gets a slot, as a table of open connections → decision."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from adt_listener.admission import Admit, Evict, Refuse, SlotPolicy, decide


@dataclass(frozen=True)
class Conn:
    name: str
    address: str = "10.0.0.9"
    known: bool = False
    framed: bool = False
    evictable: bool = True
    last_active: float = 0.0


POLICY = SlotPolicy(max_connections=4, reserved=1, per_address=2)
FLOODER, HOSPITAL, OTHER = "10.0.0.9", "10.1.0.1", "10.2.0.1"


def idle(name: str, at: float, **kw: object) -> Conn:
    return Conn(name, last_active=at, **kw)  # type: ignore[arg-type]


def test_room_admits() -> None:
    assert decide(OTHER, False, [], POLICY) == Admit()
    assert decide(OTHER, False, [idle("a", 1)], POLICY) == Admit()


def test_per_address_limit_refuses_unknown_newcomers_only() -> None:
    two = [idle("a", 1), idle("b", 2)]  # both from the flooder
    assert decide(FLOODER, False, two, POLICY) == Refuse("per_address")
    assert decide(OTHER, False, two, POLICY) == Admit()
    assert decide(FLOODER, True, two, POLICY) == Admit()  # a known address is exempt
    # Known connections from that address do not count against it.
    assert decide(FLOODER, False, [idle("a", 1, known=True), idle("b", 2, known=True), idle("c", 3)], POLICY) == Admit()
    assert decide(FLOODER, False, two, SlotPolicy(max_connections=4, per_address=0)) == Admit()  # 0: no limit


def test_reserved_slots_are_for_known_senders() -> None:
    three_unknown = [idle("a", 1, address="x"), idle("b", 2, address="y"), idle("c", 3, address="z")]
    # 4 slots, 1 reserved: a fourth unknown one must evict; a known one just comes in.
    assert decide(HOSPITAL, True, three_unknown, POLICY) == Admit()
    assert decide(OTHER, False, three_unknown, POLICY) == Evict(three_unknown[0], "never_sent")


@pytest.mark.parametrize(
    ("connections", "victim", "reason"),
    [
        # Never-sent first, even when a sender that did send has been idle longer.
        ([idle("sent", 1, framed=True), idle("silent", 5), idle("k", 0, known=True)], "silent", "never_sent"),
        # Among never-sent: the one idle the longest.
        ([idle("new", 9), idle("old", 2), idle("k", 0, known=True)], "old", "never_sent"),
        # Then unknown senders that went idle.
        ([idle("s1", 7, framed=True), idle("s2", 3, framed=True), idle("k", 0, known=True)], "s2", "idle_unknown"),
        # Busy, mid-frame or unflushed ones are never chosen.
        ([idle("busy", 0, evictable=False), idle("s", 3, framed=True), idle("k", 0, known=True)], "s", "idle_unknown"),
    ],
)
def test_victim_order_for_an_unknown_newcomer(connections: list[Conn], victim: str, reason: str) -> None:
    full = [*connections, idle("k2", 0, known=True)]  # 4 of 4
    decision = decide(OTHER, False, full, POLICY)
    assert isinstance(decision, Evict) and (decision.victim.name, decision.reason) == (victim, reason)


def test_an_unknown_newcomer_never_evicts_a_known_sender() -> None:
    full = [idle("busy", 0, evictable=False), idle("k1", 0, known=True), idle("k2", 0, known=True),
            idle("k3", 0, known=True)]
    assert decide(OTHER, False, full, POLICY) == Refuse("max_connections")


def test_a_known_newcomer_evicts_unknown_first_then_the_longest_idle_known() -> None:
    full = [idle("k1", 5, known=True, framed=True), idle("u", 9, framed=True),
            idle("k2", 1, known=True, framed=True), idle("busy", 0, evictable=False)]
    decision = decide(HOSPITAL, True, full, POLICY)
    assert isinstance(decision, Evict) and (decision.victim.name, decision.reason) == ("u", "idle_unknown")
    without_unknown = [c for c in full if c.name != "u"] + [idle("k3", 7, known=True, framed=True)]
    decision = decide(HOSPITAL, True, without_unknown, POLICY)
    assert isinstance(decision, Evict) and (decision.victim.name, decision.reason) == ("k2", "idle_known")


def test_nothing_evictable_refuses() -> None:
    full = [idle(n, 0, evictable=False, address=n) for n in "abcd"]
    assert decide(HOSPITAL, True, full, POLICY) == Refuse("max_connections")
    assert decide(OTHER, False, full, POLICY) == Refuse("max_connections")


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_connections": 0}, "WPC_MLLP_MAX_CONNECTIONS"),
        ({"max_connections": 8, "reserved": 8}, "WPC_MLLP_RESERVED_SLOTS"),
        ({"max_connections": 8, "per_address": -1}, "WPC_MLLP_MAX_CONNECTIONS_PER_ADDRESS"),
    ],
)
def test_impossible_policies_are_refused_naming_the_setting(kwargs: dict[str, int], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        SlotPolicy(**kwargs)
