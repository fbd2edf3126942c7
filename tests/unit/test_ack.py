"""ACK builder: original and enhanced mode, ERR by version, delimiters and charset echo."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from adt_listener.ack import (
    RETRANSMISSION_TEXT,
    AckHeader,
    Finding,
    build_ack,
    mark_retransmission,
    salvage_header,
    should_send,
)
from adt_listener.er7 import Message

NOW = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
MISSING_PID3 = Finding("E", 101, "PID-3", "PID-3 holds no patient identifier")
BAD_SEX = Finding("W", 103, "PID-8", "PID-8 is not a table 0001 value")
NO_PV1 = Finding("E", 100, "PV1", "PV1 segment is missing for a visit event")


def message(version: str = "2.5", msh15: str = "", sep: bytes = b"|", enc: bytes = b"^~\\&") -> Message:
    fields = [b"MSH", enc, b"SENDAPP", b"SENDFAC^1.2.3^ISO", b"RECAPP", b"RECFAC", b"20240101", b"",
              b"ADT^A01^ADT_A01", b"CTRL-1", b"P", version.encode(), b"", b"", msh15.encode()]  # fmt: skip
    if sep != b"|":
        fields = [f.replace(b"^", enc[:1]) for f in fields]
    return Message.parse(sep.join(fields) + b"\rPID|1\r".replace(b"|", sep))


def ack_of(msg: Message, code: str = "AE", findings: list[Finding] | None = None, **kw: str) -> Message:
    data = build_ack(
        AckHeader.from_message(msg),
        code,  # type: ignore[arg-type]
        findings if findings is not None else [MISSING_PID3, BAD_SEX],
        control_id="ACK1",
        now=NOW,
        **kw,
    )
    assert data.endswith(b"\r") and b"\n" not in data
    return Message.parse(data)


def test_original_mode_ack_v25() -> None:
    ack = ack_of(message("2.5"))
    assert [s.name for s in ack.segments] == ["MSH", "MSA", "ERR", "ERR"]
    assert ack.get("MSH-3") == "RECAPP" and ack.get("MSH-4") == "RECFAC"
    assert ack.get("MSH-5") == "SENDAPP"
    assert ack.segments[0].field(6) == "SENDFAC^1.2.3^ISO"  # echoed whole, raw
    assert ack.get("MSH-7") == "20240506070809-0700"
    assert ack.segments[0].field(9) == "ACK^A01^ACK"
    assert ack.get("MSH-10") == "ACK1"
    assert ack.get("MSH-11") == "P" and ack.get("MSH-12") == "2.5"
    assert ack.get("MSA-1") == "AE" and ack.get("MSA-2") == "CTRL-1"
    err1, err2 = ack.all("ERR")
    assert err1.field(2) == "PID^1^3"
    assert err1.field(3) == "101^Required field missing^HL70357"
    assert err1.get(4) == "E"
    assert err1.get(8) == "PID-3 holds no patient identifier"
    assert err2.field(2) == "PID^1^8" and err2.get(4) == "W"


def test_segment_location_and_no_location() -> None:
    ack = ack_of(message("2.5.1"), findings=[NO_PV1, Finding("E", 207, "", "internal")])
    err1, err2 = ack.all("ERR")
    assert err1.field(2) == "PV1^1"
    assert err2.field(2) == "" and err2.get(3) == "207"


def test_v23_uses_err1_and_drops_warnings() -> None:
    ack = ack_of(message("2.3"))
    assert ack.segments[0].field(9) == "ACK^A01"
    assert ack.get("MSA-3") == "PID-3 holds no patient identifier"  # MSA-3 still exists before v2.4
    (err,) = ack.all("ERR")  # the W finding cannot be told apart from an error in ELD
    assert err.field(1) == "PID^1^3^101&Required field missing&HL70357"


def test_v24_message_type_and_err1() -> None:
    ack = ack_of(message("2.4"))
    assert ack.segments[0].field(9) == "ACK^A01^ACK"
    assert ack.get("MSA-3") == ""
    assert [e.get(1, comp=4) for e in ack.all("ERR")] == ["101"]


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_old_versions_answer_plain_ack(version: str) -> None:
    assert ack_of(message(version)).segments[0].field(9) == "ACK"


def test_aa_without_findings_has_no_err() -> None:
    ack = ack_of(message(), "AA", [])
    assert [s.name for s in ack.segments] == ["MSH", "MSA"]
    assert ack.get("MSA-1") == "AA"


def test_empty_receiver_fields_are_filled_from_policy() -> None:
    raw = b"MSH|^~\\&|SENDAPP|SENDFAC|||20240101||ADT^A01|C1|P|2.5\r"
    ack = ack_of(Message.parse(raw), "AA", [], receiving_application="US", receiving_facility="HERE")
    assert (ack.get("MSH-3"), ack.get("MSH-4")) == ("US", "HERE")


def test_sender_delimiters_are_used() -> None:
    ack = ack_of(message("2.4", sep=b"^", enc=b"~|\\&"))
    assert ack.delimiters.field == "^" and ack.delimiters.component == "~"
    assert ack.segments[0].field(9) == "ACK~A01~ACK"
    assert ack.get("MSA-2") == "CTRL-1"


@pytest.mark.parametrize(
    ("msh15", "code", "msa1", "sent"),
    [
        ("", "AA", "AA", True),
        ("", "AR", "AR", True),
        ("AL", "AA", "CA", True),
        ("AL", "AE", "CE", True),
        ("AL", "AR", "CR", True),
        ("NE", "AA", "CA", False),
        ("NE", "AR", "CR", False),
        ("ER", "AA", "CA", False),
        ("ER", "AE", "CE", True),
        ("SU", "AA", "CA", True),
        ("SU", "AR", "CR", False),
        ("XX", "AA", "CA", True),  # unknown condition: answer
    ],
)
def test_enhanced_mode(msh15: str, code: str, msa1: str, sent: bool) -> None:
    msg = message("2.5", msh15=msh15)
    assert ack_of(msg, code).get("MSA-1") == msa1
    assert should_send(code, AckHeader.from_message(msg)) is sent


def test_ack_is_encoded_in_the_message_charset() -> None:
    raw = "MSH|^~\\&|A|B|KLINIK|BLÖH|20240101||ADT^A01|C1|P|2.5||||||8859/1\r".encode("latin-1")
    msg = Message.parse(raw)
    data = build_ack(AckHeader.from_message(msg), "AA", [], control_id="X", now=NOW)
    assert "BLÖH".encode("latin-1") in data
    assert Message.parse(data).get("MSH-18") == "8859/1"


def test_finding_text_is_escaped() -> None:
    ack = ack_of(message(), "AE", [Finding("E", 102, "PV1-44", "a|b^c")])
    assert ack.get("ERR-8") == "a|b^c"


# --- salvage for unparseable input -----------------------------------------------------------


def test_salvage_keeps_usable_delimiters_and_control_id() -> None:
    h = salvage_header(b"MSH|^~\\&|APP|FAC|R|RF|20240101||ADT^A01|C-9|P|2.3|||AL\rgarbage")
    assert (h.control_id, h.trigger, h.version, h.accept_ack_type) == ("C-9", "A01", "2.3", "AL")
    assert h.delimiters.field == "|"


def test_salvage_bad_msh2_falls_back_to_default_delimiters() -> None:
    h = salvage_header(b"MSH|^&&^|SEND APP|F|R|RF|2008||ADT^A01^ADT_A01|0123456789|P|2.6|||AL\r")
    assert h.delimiters.encoding_characters == "^~\\&"
    assert h.control_id == "0123456789"
    ack = Message.parse(build_ack(h, "AR", [Finding("E", 102, "MSH-2", "bad")], control_id="Z", now=NOW))
    assert ack.get("MSA-1") == "CR"  # MSH-15 AL: enhanced mode
    assert ack.get("MSA-2") == "0123456789"
    assert ack.segments[0].field(9) == "ACK^A01^ACK"


@pytest.mark.parametrize("raw", [b"", b"PID|1|2", b"\x00\x01\x02", b"MSH", b"MSH\x00\x01|x", b"\xff" * 50])
def test_salvage_of_garbage_still_builds_a_parseable_ar(raw: bytes) -> None:
    h = salvage_header(raw)
    data = build_ack(h, "AR", [Finding("E", 100, "MSH", "no MSH")], control_id="Z", now=NOW)
    ack = Message.parse(data)
    assert ack.get("MSA-1") == "AR"
    assert ack.all("ERR")


# --- the stored ACK of a retransmission ------------------------------------------------------


def _build(msg: Message, code: str = "AA", findings: list[Finding] | None = None) -> bytes:
    return build_ack(AckHeader.from_message(msg), code, findings or [], control_id="ACK1", now=NOW)  # type: ignore[arg-type]


def test_a_retransmission_ack_differs_from_the_stored_one_in_msa3_alone() -> None:
    stored = _build(message("2.5"), findings=[BAD_SEX])
    marked = mark_retransmission(stored)
    assert marked != stored
    before, after = stored.split(b"\r"), marked.split(b"\r")
    assert [n for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [1]  # the MSA line
    assert after[1] == b"MSA|AA|CTRL-1|retransmission: stored acknowledgement"
    ack = Message.parse(marked)
    assert ack.get("MSA-3").startswith("retransmission")


def test_existing_msa3_text_is_kept_after_the_note() -> None:
    stored = _build(message("2.3"), code="AE", findings=[MISSING_PID3])  # before v2.4 MSA-3 holds the error
    assert Message.parse(stored).get("MSA-3") == "PID-3 holds no patient identifier"
    marked = Message.parse(mark_retransmission(stored))
    assert marked.get("MSA-3") == f"{RETRANSMISSION_TEXT}; PID-3 holds no patient identifier"
    assert marked.get("MSA-1") == "AE" and marked.get("MSA-2") == "CTRL-1"


def test_the_note_is_escaped_for_the_senders_delimiters_and_charset_is_kept() -> None:
    # ":" as component separator: the note's colon must be escaped (\S\), not split the field.
    odd = message("2.5", enc=b":~\\&")
    marked = Message.parse(mark_retransmission(_build(odd)))
    assert marked.delimiters.component == ":" and marked.get("MSA-3") == RETRANSMISSION_TEXT
    raw = "MSH|^~\\&|A|B|KLINIK|BLÖH|20240101||ADT^A01|C1|P|2.5||||||8859/1\r".encode("latin-1")
    stored = _build(Message.parse(raw))
    data = mark_retransmission(stored)
    assert data.split(b"\r")[0] == stored.split(b"\r")[0] and "BLÖH".encode("latin-1") in data


def test_input_without_an_msa_comes_back_unchanged() -> None:
    for data in (b"", b"not hl7", b"MSH|^~\\&|A|B|C|D|20240101||ACK|1|P|2.5\r"):
        assert mark_retransmission(data) == data


def test_a_kept_template_takes_each_acks_own_time_control_id_and_msa2() -> None:
    # The second ACK of the same header and decision comes from the kept template: only
    # MSH-7, MSH-10 and MSA-2 may differ from the first, and each is this ACK's own.
    first_msg = message("2.5.1", msh15="AL")
    second_msg = Message.parse(b"MSH|^~\\&|SENDAPP|SENDFAC^1.2.3^ISO|RECAPP|"
                               b"RECFAC|20240101||ADT^A01^ADT_A01|CTRL-2|P|2.5.1|||AL\rPID|1\r")
    later = NOW + dt.timedelta(seconds=61)
    first = Message.parse(build_ack(AckHeader.from_message(first_msg), "AA", [BAD_SEX], control_id="A1", now=NOW))
    second = Message.parse(build_ack(AckHeader.from_message(second_msg), "AA", [BAD_SEX], control_id="A2", now=later))
    assert (first.get("MSH-7"), first.get("MSH-10"), first.get("MSA-2")) == ("20240506070809-0700", "A1", "CTRL-1")
    assert (second.get("MSH-7"), second.get("MSH-10"), second.get("MSA-2")) == ("20240506070910-0700", "A2", "CTRL-2")
    assert [s.fields for s in first.segments if s.name != "MSH" and s.name != "MSA"] == \
           [s.fields for s in second.segments if s.name != "MSH" and s.name != "MSA"]
    assert first.get("MSA-1") == second.get("MSA-1") == "CA"


def test_msh7_of_one_instant_follows_the_time_zone_it_is_given_in() -> None:
    # MSH-7 is kept per second and time zone: the same instant in another zone is another text.
    header = AckHeader.from_message(message("2.5"))
    utc = NOW.astimezone(dt.UTC)
    texts = [Message.parse(build_ack(header, "AA", [], control_id="X", now=t)).get("MSH-7")
             for t in (NOW, utc, NOW, utc.replace(tzinfo=None))]
    assert texts == ["20240506070809-0700", "20240506140809+0000", "20240506070809-0700", "20240506140809"]


def test_msh7_of_two_wall_times_that_share_an_instant_in_a_dst_gap() -> None:
    # 02:30 does not exist on 2024-03-10 in Los Angeles: it names the instant of 03:30 PDT.
    # Each is written as given, whichever came first (no MSH-7 kept for such zones).
    la = zoneinfo.ZoneInfo("America/Los_Angeles")
    header = AckHeader.from_message(message("2.5"))
    gap, after = dt.datetime(2024, 3, 10, 2, 30, tzinfo=la), dt.datetime(2024, 3, 10, 3, 30, tzinfo=la)
    assert gap.timestamp() == after.timestamp()
    texts = [Message.parse(build_ack(header, "AA", [], control_id="X", now=t)).get("MSH-7") for t in (gap, after)]
    assert texts == ["20240310023000-0800", "20240310033000-0700"]
