"""The content digest: what makes a resend the same message, and anything else a new one."""

from __future__ import annotations

import datetime as dt
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adt_listener.digest import DIGEST_SIZE, content_digest, normalized
from adt_listener.intake import IntakePolicy, intake

MSH = "MSH|^~\\&|APP|FAC|WPC|WPC|20240102030405-0800||ADT^A01^ADT_A01|CTRL-7|P|2.5.1"
BODY = ("EVN|A01|20240102030000", "PID|1||111^^^HOSP^MR||DOE^JANE", "PV1|1|I|W1^101")
ORIGINAL = "\r".join((MSH, *BODY)).encode() + b"\r"


def message(*segments: str, msh: str = MSH, end: str = "\r", sep: str = "\r") -> bytes:
    return (sep.join((msh, *(segments or BODY))) + end).encode()


def test_normalized_form_of_a_message() -> None:
    assert normalized(ORIGINAL) == (
        b"MSH|^~\\&|APP|FAC|WPC|WPC|||ADT^A01^ADT_A01|CTRL-7|P|2.5.1\r"
        b"EVN|A01|20240102030000\rPID|1||111^^^HOSP^MR||DOE^JANE\rPV1|1|I|W1^101\r"
    )
    assert len(content_digest(ORIGINAL)) == DIGEST_SIZE


@pytest.mark.parametrize(
    "resend",
    [
        pytest.param(ORIGINAL, id="the same bytes"),
        pytest.param(message(msh=MSH.replace("20240102030405-0800", "20240102031500-0800")), id="a new MSH-7"),
        pytest.param(message(msh=MSH.replace("20240102030405-0800", "")), id="MSH-7 left empty"),
        pytest.param(message(end=""), id="no final terminator"),
        pytest.param(message(end="\r\n\r\n"), id="blank lines at the end"),
        pytest.param(message(sep="\r\n", end="\r\n"), id="CRLF"),
        pytest.param(message(sep="\n", end="\n"), id="LF"),
        pytest.param(b"\xef\xbb\xbf \r\n" + ORIGINAL, id="byte order mark and leading whitespace"),
        pytest.param(message(*(s + " \t" for s in BODY), msh=MSH + " "), id="trailing blanks on segment lines"),
        pytest.param(message(BODY[0], "", BODY[1], "   ", BODY[2]), id="empty lines between segments"),
    ],
)
def test_what_a_resend_may_change(resend: bytes) -> None:
    assert content_digest(resend) == content_digest(ORIGINAL)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(message(msh=MSH.replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01")), id="MSH-9 trigger"),
        pytest.param(message(msh=MSH.replace("|WPC|WPC|", "|WPC|OTHER|")), id="MSH-6"),
        pytest.param(message(msh=MSH.replace("|P|2.5.1", "|T|2.5.1")), id="MSH-11"),
        pytest.param(message(msh=MSH + "||||||UNICODE UTF-8"), id="MSH-18 added"),
        pytest.param(message(msh=MSH.replace("030405-0800||", "|030405-0800|")), id="MSH-7 moved to MSH-8"),
        pytest.param(message(BODY[0], "PID|1||111^^^HOSP^MR||DOE^JOAN", BODY[2]), id="a PID value"),
        pytest.param(message(BODY[0], BODY[1] + "|", BODY[2]), id="one more empty field"),
        pytest.param(message(BODY[0], BODY[2], BODY[1]), id="segment order"),
        pytest.param(message(*BODY, "DG1|1||F20.9^^I10"), id="one more segment"),
        pytest.param(message(BODY[0], " " + BODY[1], BODY[2]), id="a leading blank inside"),
        pytest.param(message(BODY[0], BODY[1].replace("PID|", "PID| "), BODY[2]), id="a blank in a field"),
    ],
)
def test_what_makes_another_message(other: bytes) -> None:
    assert content_digest(other) != content_digest(ORIGINAL)


def test_msh7_is_found_with_the_message_own_field_separator() -> None:
    # Sample 021 uses "^" as field separator: MSH-7 is the text between its 6th and 7th "^".
    a = b"MSH^~|\\&^SEND^200M^RECV^200^20120918173931-0500^^ADT~A24^2003582144^T^2.5\rPID^1^^X\r"
    b = a.replace(b"20120918173931-0500", b"20120918180000-0500")
    assert content_digest(a) == content_digest(b)
    assert content_digest(a) != content_digest(a.replace(b"^T^2.5", b"^P^2.5"))


def test_a_double_byte_charset_keeps_msh7_when_the_header_before_it_is_not_ascii() -> None:
    # In Big5 the second byte of a character may be "|" (院 is B0 7C): a byte split before
    # MSH-7 could land inside a character, so MSH-7 is left in the digest there. Split
    # anyway, the field emptied would be MSH-6, and a change there would go unseen.
    big5 = "醫院".encode("big5")
    assert b"|" in big5
    header = b"MSH|^~\\&|APP|" + big5 + b"|WPC|WPC|20240102030405||ADT^A01|C1|P|2.5||||||BIG-5\rPID|1||X\r"
    assert content_digest(header) != content_digest(header.replace(b"|WPC|WPC|", b"|WPC|OTHER|"))
    assert content_digest(header) != content_digest(header.replace(b"20240102030405", b"20240102031500"))
    # An ASCII header before MSH-7 splits exactly, whatever the charset; so does UTF-8.
    ascii_head = header.replace(big5, b"HOSP")
    assert content_digest(ascii_head) == content_digest(ascii_head.replace(b"20240102030405", b"20240102031500"))
    utf8 = header.replace(big5, "Hôpital".encode()).replace(b"BIG-5", b"UNICODE UTF-8")
    assert content_digest(utf8) == content_digest(utf8.replace(b"20240102030405", b"20240102031500"))


def test_every_public_sample_has_its_own_digest(samples_dir: Path) -> None:
    raws = [p.read_bytes() for p in sorted(samples_dir.glob("*/*.hl7"))]
    assert len({content_digest(r) for r in raws}) == len(raws) == 102


def test_samples_sharing_a_control_id_are_different_messages(samples_dir: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    decided = [intake(p.read_bytes(), received_at=now, policy=IntakePolicy())
               for p in sorted((samples_dir / "messages").glob("*.hl7"))]
    under = [d for d in decided if (d.sending_facility, d.control_id) == ("GHHSFacility", "MSG00001")]
    assert len(under) == 10
    for a, b in combinations(under, 2):
        assert a.content_digest != b.content_digest and a.event_id != b.event_id


segment_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30)


@given(st.binary(max_size=300))
def test_never_raises(raw: bytes) -> None:
    assert len(content_digest(raw)) == DIGEST_SIZE


@given(st.lists(segment_text, min_size=1, max_size=6), st.sampled_from(["\r", "\n", "\r\n"]), st.booleans())
def test_segment_terminators_do_not_count(segments: list[str], terminator: str, final: bool) -> None:
    text = "MSH|^~\\&|A|F|B|G|20240101||ADT^A01|C|P|2.5\r" + "\r".join(segments)
    variant = text.replace("\r", terminator) + (terminator if final else "")
    assert content_digest(variant.encode()) == content_digest(text.encode())
