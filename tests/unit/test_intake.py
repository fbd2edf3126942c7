"""intake: one hand-built message per rule of the decision table, enhanced mode, ids,
the internal-error ACK, and fuzzing (it must never raise)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adt_listener.digest import content_digest
from adt_listener.er7 import Message
from adt_listener.intake import Finding, IntakePolicy, intake, internal_error_ack, with_rejection
from adt_listener.normalize import patient_key
from schemas.adt_event import event_id_for

NOW = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
POLICY = IntakePolicy()
PID = "PID|1||MRN-1^^^HOSP^MR||SECRETNAME^JANE||19800102|F"
PV1 = "PV1|1|I|W1^1^A"


def msg(
    msh9: str = "ADT^A01",
    msh10: str = "C1",
    msh11: str = "P",
    msh12: str = "2.5",
    msh15: str = "",
    *segments: str,
    default: tuple[str, ...] = (PID, PV1),
) -> bytes:
    msh = f"MSH|^~\\&|APP|FAC|WPC|WPC|20240102030405||{msh9}|{msh10}|{msh11}|{msh12}|||{msh15}"
    return "\r".join((msh, "EVN|A01|20240102030405", *(segments or default))).encode()


def decide(raw: bytes, policy: IntakePolicy = POLICY) -> tuple[str, list[tuple[str, int, str]]]:
    r = intake(raw, received_at=NOW, policy=policy)
    return r.ack_code, [(f.severity, f.code, f.location) for f in r.findings]


def test_accepted_message() -> None:
    r = intake(msg(), received_at=NOW, policy=POLICY)
    assert (r.ack_code, r.findings, r.send_ack) == ("AA", (), True)
    assert (r.sending_facility, r.sending_application, r.control_id) == ("FAC", "APP", "C1")
    assert (r.message_type, r.trigger_event, r.hl7_version, r.charset) == ("ADT", "A01", "2.5", "utf-8")
    assert r.event_id == event_id_for("FAC", "C1", content_digest(msg()))
    assert r.content_digest == content_digest(msg())
    assert r.patient_key == patient_key("HOSP", "MRN-1")
    assert r.event is not None and r.event.message_id == r.message_id and r.event.event_id == r.event_id
    assert r.message_id.version == 4
    assert r.raw == msg()
    ack = Message.parse(r.ack)
    assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AA", "C1")


@pytest.mark.parametrize(
    ("raw", "findings"),
    [
        (b"", [("E", 100, "MSH")]),
        (b"PID|1||X\r", [("E", 100, "MSH")]),
        (b"MSH|^&&^|A|B|C|D|1||ADT^A01|C1|P|2.5\r", [("E", 102, "MSH-2")]),
        (msg(msh9=""), [("E", 101, "MSH-9")]),
        (msg(msh9="ORU^R01"), [("E", 200, "MSH-9")]),
        (msg(msh9="ACK^A01"), [("E", 200, "MSH-9")]),
        (msg(msh10=""), [("E", 101, "MSH-10")]),
        (msg(msh10="   "), [("E", 101, "MSH-10")]),
        (msg(msh11=""), [("E", 202, "MSH-11")]),
        (msg(msh11="X"), [("E", 202, "MSH-11")]),
        (msg(msh12=""), [("E", 203, "MSH-12")]),
        (msg(msh12="3.0"), [("E", 203, "MSH-12")]),
        (msg(msh12="2.9"), [("E", 203, "MSH-12")]),
        (msg(msh9="ORU^R01", msh10="", msh11="", msh12=""),
         [("E", 200, "MSH-9"), ("E", 101, "MSH-10"), ("E", 202, "MSH-11"), ("E", 203, "MSH-12")]),
    ],
)  # fmt: skip
def test_rejections(raw: bytes, findings: list[tuple[str, int, str]]) -> None:
    assert decide(raw) == ("AR", findings)


@pytest.mark.parametrize(
    ("raw", "findings"),
    [
        (msg("ADT"), [("E", 201, "MSH-9")]),
        (msg("ADT^O01"), [("E", 201, "MSH-9")]),
        (msg("ADT^A63"), [("E", 201, "MSH-9")]),
        (msg("ADT^A00"), [("E", 201, "MSH-9")]),
        (msg("ADT^A01", "C1", "P", "2.5", "", PV1), [("E", 100, "PID")]),
        (msg("ADT^A01", "C1", "P", "2.5", "", "PID|1||", PV1), [("E", 101, "PID-3")]),
        (msg("ADT^A01", "C1", "P", "2.5", "", 'PID|1||""~^^^HOSP^MR~ ', PV1), [("E", 101, "PID-3")]),
        (msg("ADT^A03", "C1", "P", "2.5", "", PID), [("E", 100, "PV1")]),
        (msg("ADT^A13", "C1", "P", "2.5", "", PID), [("E", 100, "PV1")]),
        (msg("ADT^O01", "C1", "P", "2.5", "", "NK1|1"), [("E", 201, "MSH-9"), ("E", 100, "PID")]),
    ],
)
def test_errors(raw: bytes, findings: list[tuple[str, int, str]]) -> None:
    assert decide(raw) == ("AE", findings)


@pytest.mark.parametrize("trigger", ["A08", "A28", "A31", "A40", "A34", "A47", "A24", "A62"])
def test_person_level_events_need_no_pv1(trigger: str) -> None:
    assert decide(msg(f"ADT^{trigger}", "C1", "P", "2.5", "", PID)) == ("AA", [])


@pytest.mark.parametrize(
    ("raw", "findings"),
    [
        (msg("ADT^A01", "C1", "P", "2.5", "", PID.replace("|F", "|female"), PV1), [("W", 103, "PID-8")]),
        (msg("ADT^A01", "C1", "P", "2.5", "", PID, "PV1|1|INPATIENT"), [("W", 103, "PV1-2")]),
        (
            msg("ADT^A01", "C1", "P", "2.5", "", PID.replace("19800102", "19801399"), PV1),
            [("W", 102, "PID-7")],
        ),
        (msg("ADT^A01", "C1", "P", "2.5", "", PID.replace("|F", '|""'), PV1), []),
    ],
)
def test_warnings_keep_aa(raw: bytes, findings: list[tuple[str, int, str]]) -> None:
    assert decide(raw) == ("AA", findings)


def test_components_in_processing_id_and_version() -> None:
    assert decide(msg(msh11="T^", msh12="2.5^^")) == ("AA", [])
    assert decide(msg(msh11="D^default", msh12="2.3.1")) == ("AA", [])


def test_processing_ids_come_from_policy() -> None:
    assert decide(msg(msh11="D"), IntakePolicy(accepted_processing_ids=frozenset({"P"})))[0] == "AR"


def test_error_texts_and_ack_carry_no_field_values() -> None:
    raw = msg("ADT^A01", "C1", "P", "2.5", "", PID.replace("|F", "|SECRETSEX"))
    r = intake(raw, received_at=NOW, policy=POLICY)
    assert b"SECRET" not in r.ack
    assert not any("SECRET" in f.text for f in r.findings)


@pytest.mark.parametrize(
    ("msh15", "code", "send"),
    [("AL", "AA", True), ("NE", "AA", False), ("ER", "AA", False), ("SU", "AA", True)],
)
def test_enhanced_mode_send_ack(msh15: str, code: str, send: bool) -> None:
    r = intake(msg(msh15=msh15), received_at=NOW, policy=POLICY)
    assert (r.ack_code, r.send_ack) == (code, send)
    assert Message.parse(r.ack).get("MSA-1") == "CA"


def test_enhanced_mode_on_error() -> None:
    r = intake(msg("ADT^A01", "C1", "P", "2.5", "ER", PV1), received_at=NOW, policy=POLICY)
    assert (r.ack_code, r.send_ack) == ("AE", True)
    assert Message.parse(r.ack).get("MSA-1") == "CE"


def test_unparseable_keeps_salvaged_control_id() -> None:
    r = intake(b"MSH|^&&^|A|B|C|D|1||ADT^A01|C-77|P|2.5\r", received_at=NOW, policy=POLICY)
    assert (r.ack_code, r.control_id, r.event_id, r.event, r.charset) == ("AR", "C-77", None, None, None)
    assert Message.parse(r.ack).get("MSA-2") == "C-77"


def test_internal_error_ack() -> None:
    ack = Message.parse(internal_error_ack(msg(), now=NOW, policy=POLICY))
    assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3")) == ("AR", "C1", "207")
    ack = Message.parse(internal_error_ack(b"\x00garbage", now=NOW, policy=POLICY))
    assert ack.get("MSA-1") == "AR"


def test_with_rejection() -> None:
    decided = intake(msg(msh15="AL"), received_at=NOW, policy=POLICY)
    extra = Finding("E", 204, "MSH-4", "sending facility is not registered")
    rejected = with_rejection(decided, extra, now=NOW, policy=POLICY)
    assert (rejected.ack_code, rejected.event, rejected.findings[-1]) == ("AR", None, extra)
    assert rejected.message_id == decided.message_id and rejected.event_id == decided.event_id
    ack = Message.parse(rejected.ack)
    assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3")) == ("CR", "C1", "204")


def test_ids_are_new_per_call() -> None:
    a, b = (intake(msg(), received_at=NOW, policy=POLICY) for _ in range(2))
    assert a.message_id != b.message_id and a.event_id == b.event_id
    assert Message.parse(a.ack).get("MSH-10") != Message.parse(b.ack).get("MSH-10")
    assert isinstance(a.message_id, uuid.UUID)


_FRAGMENTS = [
    *(b"MSH", b"|", b"^~\\&", b"^", b"~", b"&", b"\\", b"\r", b"\n", b"ADT^A01", b"PID", b"PV1", b"2.5"),
    *(b"P", b'""', b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf", b"20240101", b"\\X41\\"),
]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(_FRAGMENTS), max_size=60).map(b"".join)))
def test_never_raises(raw: bytes) -> None:
    r = intake(raw, received_at=NOW, policy=POLICY)
    assert r.ack_code in ("AA", "AE", "AR")
    assert Message.parse(r.ack).get("MSA-1") in ("AA", "AE", "AR", "CA", "CE", "CR")
    assert not any(f.code == 207 for f in r.findings), "a reader bug surfaced as 207"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60).map(b"".join))
def test_never_raises_behind_a_valid_header(tail: bytes) -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|C1|P|2.5\r" + tail
    r = intake(raw, received_at=NOW, policy=POLICY)
    assert r.ack_code in ("AA", "AE", "AR")
    assert not any(f.code == 207 for f in r.findings)
