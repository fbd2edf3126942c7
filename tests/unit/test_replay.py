"""The decisions of services.replay: when the broker lost what was published, and what every
consumer group has read (pure functions, tables of cases)."""

from __future__ import annotations

import pytest

from services.bus import Ack
from services.replay import Retention, loss_evidence, regressed, retention_of, trim_points
from services.settings import ServiceSettings

T = "adt.events"


def evidence(**kw: object) -> str | None:
    args: dict[str, object] = {"known_cluster": "c1", "cluster": "c1", "bases": {}, "ends": {}, "seen": {},
                               "committed": {}}
    args.update(kw)
    return loss_evidence(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "kw", "lost"),
    [
        ("nothing known", {}, False),
        ("same cluster, ends past every base", {"bases": {(T, 0): 4}, "ends": {(T, 0): 5}}, False),
        # Tansu reports the end of a partition as its last batch's base + 1.
        ("Tansu's end after a 3-record batch at 4", {"bases": {(T, 0): 4}, "ends": {(T, 0): 5}}, False),
        ("a new cluster", {"cluster": "c2"}, True),
        ("first sight of a cluster", {"known_cluster": None, "cluster": "c2"}, False),
        ("cluster id unknown", {"cluster": None}, False),
        ("a partition ends at its base", {"bases": {(T, 0): 4}, "ends": {(T, 0): 4}}, True),
        ("a restarted log (end 0, base 0)", {"bases": {(T, 1): 0}, "ends": {(T, 1): 0}}, True),
        ("a partition not read", {"bases": {(T, 0): 4}, "ends": {}}, False),
        ("a committed offset went back", {"seen": {"g": {(T, 0): 9}}, "committed": {"g": {(T, 0): 3}}}, True),
        ("a committed offset vanished", {"seen": {"g": {(T, 0): 9}}, "committed": {"g": {}}}, True),
        ("a committed offset moved on", {"seen": {"g": {(T, 0): 9}}, "committed": {"g": {(T, 0): 12}}}, False),
        ("a new committed offset", {"seen": {"g": {}}, "committed": {"g": {(T, 0): 2}}}, False),
    ],
)
def test_loss_evidence(case: str, kw: dict[str, object], lost: bool) -> None:
    why = evidence(**kw)
    assert (why is not None) == lost, (case, why)


def test_loss_evidence_names_ids_and_numbers_only() -> None:
    assert evidence(bases={(T, 2): 7}, ends={(T, 2): 0}) == (
        "adt.events[2] ends at offset 0, but offset 7 was acknowledged there")


@pytest.mark.parametrize(
    ("committed", "points"),
    [
        ({}, {}),  # nobody read anything: keep all
        ({"e": {(T, 0): 5}}, {}),  # one reader has not committed: keep all
        ({"e": {(T, 0): 5}, "n": {(T, 0): 3}}, {(T, 0): 3}),  # the slower reader decides
        ({"e": {(T, 0): 5, (T, 1): 2}, "n": {(T, 0): 8, (T, 1): 9}}, {(T, 0): 5, (T, 1): 2}),
    ],
)
def test_trim_points_wait_for_every_reading_group(
    committed: dict[str, dict[tuple[str, int], int]], points: dict[tuple[str, int], int]
) -> None:
    readers = {T: ("e", "n"), "enrollment.candidates": ("n",)}
    assert trim_points(readers, committed, [(T, 0), (T, 1)]) == {
        tp: o for tp, o in points.items() if tp in {(T, 0), (T, 1)}
    }


def test_a_topic_nobody_reads_is_never_kept() -> None:
    retention = retention_of(ServiceSettings.model_construct())
    assert retention.keeps("adt.events") and retention.keeps("enrollment.candidates")
    assert retention.keeps("enrollment.events")
    assert not retention.keeps("adt.deadletter") and not retention.keeps("notifications.deadletter")
    assert retention.readers["adt.events"] == ("wpc-enrollment", "wpc-notifier")
    assert not Retention({T: ("g",)}, max_rows=0).keeps(T)
    assert trim_points({}, {"g": {("x", 0): 4}}, [("x", 0)]) == {}


def test_an_acknowledgment_below_an_earlier_one_is_a_restarted_log() -> None:
    bases = {(T, 0): 40}
    assert not regressed(bases, [(T, Ack(0, 45, 41))])
    assert not regressed(bases, [(T, Ack(1, 0, 0))])  # a partition not seen before
    assert regressed(bases, [(T, Ack(0, 2, 0))])
