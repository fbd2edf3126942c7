"""The pure parts of `wpc bench pipeline`: CPU accounting per process group, the probes."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from adt_listener.intake import IntakePolicy, intake
from bench.pipeline import CpuGroups, add_arguments, bench_rules, cpu_used, probe_admission, probe_history
from enrollment_svc.rules import load_rules
from enrollment_svc.service import EXAMPLE_RULES

# pid -> (parent, CPU seconds, name): a listener (10) with its two workers and the resource
# tracker, a postmaster (20) with two backends, the enrollment service (30), something else (40).
TABLE = {
    10: (1, 5.0, "python"), 11: (10, 2.0, "wpc-derive"), 12: (10, 1.0, "wpc-conformance"), 13: (10, 0.1, "python"),
    20: (1, 0.5, "postgres"), 21: (20, 3.0, "postgres"), 22: (20, 4.0, "postgres"),
    30: (1, 6.0, "python"), 40: (1, 99.0, "python"),
}


def groups() -> CpuGroups:
    return CpuGroups({"listener": 10, "enrollment": 30}, {"listener": 10, "postgresql": 20},
                     named={"wpc-derive": "derivation", "wpc-conformance": "conformance"})


def test_each_process_counts_once_in_its_group() -> None:
    sample = groups().sample(TABLE)
    assert sample == {"listener": {10: 5.0, 13: 0.1}, "derivation": {11: 2.0}, "conformance": {12: 1.0},
                      "postgresql": {20: 0.5, 21: 3.0, 22: 4.0}, "enrollment": {30: 6.0}}


def test_cpu_used_counts_a_process_started_meanwhile_from_zero() -> None:
    before = groups().sample(TABLE)
    later = {**TABLE, 21: (20, 3.5, "postgres"), 23: (20, 0.25, "postgres"), 11: (10, 2.5, "wpc-derive")}
    del later[22]  # a backend that ended meanwhile: its last interval is not seen
    used = cpu_used(before, groups().sample(later))
    assert used == {"listener": 0.0, "derivation": 0.5, "conformance": 0.0, "postgresql": 0.75, "enrollment": 0.0}


def test_a_probe_patient_history_and_admission_are_accepted_and_linked_by_visit() -> None:
    now = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
    messages = [*probe_history(123456, 7, now), probe_admission(123456, 7, now)[1]]
    decided = [intake(m, received_at=now, policy=IntakePolicy()) for m in messages]
    assert [d.ack_code for d in decided] == ["AA"] * 5
    assert [d.event.visit.visit_number for d in decided if d.event and d.event.visit] == [
        "PB123456P7V1", "PB123456P7V1", "PB123456P7V2", "PB123456P7V2", "PB123456P7V3"]
    assert probe_admission(123456, 7, now)[0] == "PB123456P7V3"
    assert len({d.control_id for d in decided}) == 5  # never taken for a retransmission


def test_the_bench_rules_leave_room_for_every_probe(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "rules.yaml"
    path.write_text(bench_rules(EXAMPLE_RULES), encoding="utf-8")
    rules = load_rules(path)
    assert rules.rule_version.startswith("bench-")
    assert {p: rules.programs[p].capacity for p in ("TOC", "ISR", "SUD-ENS")} == dict.fromkeys(
        ("TOC", "ISR", "SUD-ENS"), 1_000_000)


def test_the_background_is_dated_today_unless_history_is_asked_for() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).background == "current"
    assert parser.parse_args(["--background", "history"]).background == "history"
    with pytest.raises(SystemExit):  # argparse: one line naming the choices, exit 2
        parser.parse_args(["--background", "yesterday"])


def test_the_drain_is_polled_every_50_ms_near_its_end_and_at_most_twice_a_second_before() -> None:
    from bench.pipeline import poll_interval

    assert poll_interval(1) == 0.05
    assert poll_interval(200) == 0.05
    assert 0.05 < poll_interval(1000) < 0.5
    assert poll_interval(6000) == 0.5
    assert poll_interval(10**6) == 0.5
