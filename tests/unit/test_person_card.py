"""The person card's pure parts (enrollment_svc/card.py): what an event states, where it puts the
person, and when the card says "no fixed address"."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from enrollment_svc import card
from tests.adt_builder import adt, event

NOW = dt.datetime(2026, 12, 2, 18, 0, tzinfo=dt.UTC)


def test_stated_keys_only_what_the_event_says() -> None:
    full = card.stated(event(adt("A01", at=NOW, admit=NOW, phone="(213)555-0101")))
    assert full == {"name": {"family": "DOE", "given": "ALEX"}, "phone": "(213)555-0101",
                    "address": {"street": "1 MAIN ST", "city": "LOS ANGELES", "state": "CA", "zip": "90012",
                                "country": "USA", "county_code": "06037"}}
    assert "phone" not in card.stated(event(adt("A08", at=NOW, admit=NOW)))  # no PID-13: the phone stays as it was


def test_whereabouts_of_a_transfer_and_a_discharge() -> None:
    moved = card.whereabouts(event(adt("A02", at=NOW, admit=NOW, point_of_care="5E", room="512")))
    assert moved is not None
    assert {k: v for k, v in json.loads(moved).items() if k != "building_facility"} == {
        "facility": "COUNTYGEN", "unit": "5E", "room": "512", "bed": "A", "patient_class": "I", "trigger": "A02",
        "discharged": False}
    gone = card.whereabouts(event(adt("A03", at=NOW, admit=NOW, discharge=NOW)))
    assert gone is not None and json.loads(gone)["discharged"] is True
    assert card.whereabouts(event(adt("A08", at=NOW, visit=None))) is None


@pytest.mark.parametrize(
    ("street", "expected"),
    [("1 MAIN ST", False), (None, True), ("HOMELESS", True), ("Homeless shelter, 5th St", True),
     ("NO FIXED ADDRESS", True), ("NFA", True), ("General Delivery", True), ("1 NFAX WAY", False)],
)
def test_no_fixed_address(street: str | None, expected: bool) -> None:
    address = {"street": street, "city": "LOS ANGELES"} if street else None
    assert card.housing(address, [], [], NOW)["no_fixed_address"] is expected


def test_homelessness_flags_in_effect_only() -> None:
    flags = [{"kind": "homelessness", "until": None}, {"kind": "homelessness", "until": NOW - dt.timedelta(days=1)},
             {"kind": "homelessness", "until": NOW + dt.timedelta(days=1)}]
    assert len(card.housing({"street": "1 MAIN ST"}, [], flags, NOW)["homelessness_flags"]) == 2
