"""The demo county (`bench.demo_county`): pure, dated relative to now, in hospital order, and
accepted by the listener's intake; what each story should make is checked end to end in
`tests/e2e/test_demo_county.py`."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from adt_listener.intake import IntakePolicy, intake
from bench.demo_county import FHIR_CLINIC, MAIL_CLINIC, demo_scenario, traffic
from wpc.demo_traffic import ack_code

NOW = dt.datetime(2026, 12, 2, 17, 30, tzinfo=dt.UTC)
RULES = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "rules" / "wpc-rules.yaml").read_text())


def _field(message: bytes, segment: str, n: int) -> str:
    for line in message.decode().split("\r"):
        fields = line.split("|")
        if fields[0] == segment:
            return fields[n - 1] if segment == "MSH" else (fields[n] if n < len(fields) else "")
    return ""


def _time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y%m%d%H%M%S%z")


def test_same_arguments_same_messages_other_seed_other_people() -> None:
    assert demo_scenario(NOW, 5).messages == demo_scenario(NOW, 5).messages
    assert demo_scenario(NOW, 5).panels != demo_scenario(NOW, 6).panels


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="zone-aware"):
        demo_scenario(NOW.replace(tzinfo=None), 1)


def test_every_event_is_at_or_before_now_and_each_person_in_order() -> None:
    scenario = demo_scenario(NOW, 7)
    for story in scenario.stories:
        times = [_time(_field(m, "EVN", 2)) for m in story.messages]
        assert times == sorted(times)
        assert all(t <= NOW for t in times)
    # Today's events are within the rules' candidate_max_age_hours, so they can propose.
    latest = max(_time(_field(s.messages[-1], "EVN", 2)) for s in scenario.stories)
    assert NOW - latest < dt.timedelta(hours=RULES["candidate_max_age_hours"])


def test_the_stories_use_the_facilities_of_the_demo_rules() -> None:
    scenario = demo_scenario(NOW, 8)
    facilities = RULES["site"]["facilities"]
    by_kind = {s.kind: {_field(m, "MSH", 4) for m in s.messages} for s in scenario.stories}
    assert set(itertools.chain(*by_kind.values())) <= set(facilities)
    assert by_kind["ISR"] == {"BAYVIEWPSY"} and facilities["BAYVIEWPSY"]["kind"] == "psychiatric"
    assert "DTSOBERING" in by_kind["SUD-ENS"] and facilities["DTSOBERING"]["part2"] is True
    assert all(facilities[f]["participating"] for f in by_kind["TOC"])


def test_panels_and_control_ids() -> None:
    scenario = demo_scenario(NOW, 9)
    panels = scenario.panels
    assert set(panels) == {FHIR_CLINIC, MAIL_CLINIC}
    assert len(panels[MAIL_CLINIC]) == 3 and len(panels[FHIR_CLINIC]) == 2
    ids = [_field(m, "MSH", 10) for m in scenario.messages]
    assert len(ids) == len(set(ids))
    # The FHIR clinic's patients name its PCP in PD1-4, as its configured provider id.
    for story in scenario.stories:
        if story.panel == FHIR_CLINIC:
            assert all(_field(m, "PD1", 4).startswith("1234567893^") for m in story.messages)


def test_every_message_is_accepted_by_the_listener_intake() -> None:
    for message in demo_scenario(NOW, 10).messages:
        result = intake(message, received_at=NOW, policy=IntakePolicy())
        assert result.ack_code == "AA", [f.code for f in result.findings]
        assert result.event is not None and result.event.sending_facility == _field(message, "MSH", 4)


def test_ack_code_reads_msa_1() -> None:
    assert ack_code(b"MSH|^~\\&|WPC|WPC|A|B|20261202||ACK^A01^ACK|1|P|2.5.1\rMSA|CA|X1\r") == "CA"
    assert ack_code(b"MSH|^~\\&|WPC\rMSA|AE|X1|bad\r") == "AE"
    assert ack_code(b"MSH|^~\\&|WPC\r") == ""


def test_traffic_dates_each_story_by_the_clock_and_keeps_going() -> None:
    clock = iter(NOW + dt.timedelta(minutes=n) for n in range(1000))
    messages = list(itertools.islice(traffic(3, lambda: next(clock)), 60))
    programs = {_field(m, "MSH", 4) for m in messages}
    assert {"STMARY", "BAYVIEWPSY", "DTSOBERING"} <= programs  # TOC, ISR and SUD-ENS stories came
    ids = [_field(m, "MSH", 10) for m in messages]
    assert len(ids) == len(set(ids))
    pacific = ZoneInfo("America/Los_Angeles")
    assert all(_time(_field(m, "EVN", 2)) <= NOW + dt.timedelta(minutes=60) for m in messages)
    assert _time(_field(messages[-1], "EVN", 2)).astimezone(pacific).date() >= NOW.astimezone(pacific).date()
