"""ER7 reader: tables of bytes → values, escape round trips, and a differential test
against hl7apy (the reference parser) over the sample corpus."""

from __future__ import annotations

import warnings
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adt_listener.er7 import Delimiters, Message, Segment, decode, encode, escape, unescape
from adt_listener.errors import Er7Error, ListenerError

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
D = Delimiters("|", "^", "~", "\\", "&", None)

ADT = (
    b"MSH|^~\\&|APP|FAC|WPC|WPC|20240102030405||ADT^A01^ADT_A01|CTRL1|P|2.5\r"
    b"EVN|A01|20240102030405\r"
    b"PID|1||111^^^AUTH^MR~222^^^MEDI-CAL^MA||DOE^JANE^Q||19800102|F\r"
    b"PV1|1|I|W1^101^A^HOSP\r"
)


# --- segmentation and line endings ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        ADT,
        ADT.replace(b"\r", b"\n"),
        ADT.replace(b"\r", b"\r\n"),
        ADT.rstrip(b"\r"),  # no final terminator
        b"\xef\xbb\xbf" + ADT,  # UTF-8 BOM
        b"\r\n \n" + ADT,  # leading blank lines
        ADT.replace(b"\r", b"\r\r\n \r"),  # empty and blank lines in between
        ADT.replace(b"\r", b"   \r"),  # trailing spaces on every line
    ],
    ids=["cr", "lf", "crlf", "no-final", "bom", "leading-ws", "empty-lines", "trailing-spaces"],
)
def test_segmentation_variants_give_the_same_message(raw: bytes) -> None:
    msg = Message.parse(raw)
    assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert msg.get("PV1-3.4") == "HOSP"
    assert msg.get("MSH-12") == "2.5"
    assert msg.get("PID-8") == "F"


def test_msh_numbering_and_raw_fields() -> None:
    msg = Message.parse(ADT)
    msh = msg.segments[0]
    assert msh.field(0) == "MSH"
    assert msh.field(1) == "|"
    assert msh.field(2) == "^~\\&"
    assert msh.get(2) == "^~\\&"  # MSH-2 is never split or unescaped
    assert msh.field(9) == "ADT^A01^ADT_A01"
    assert msh.get(9, comp=2) == "A01"
    assert msh.field(99) == ""
    assert msg.delimiters == D


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("PID-3", "111"),
        ("PID-3.1", "111"),
        ("PID-3[2]", "222"),
        ("PID-3[2].4", "MEDI-CAL"),
        ("PID-3[2].5", "MA"),
        ("PID-3[3].1", ""),
        ("PID-5.2", "JANE"),
        ("PID-5.9", ""),
        ("PID-99", ""),
        ("MSH-9.2", "A01"),
        ("ZZZ-1", ""),
        ("PV1-3.4.1", "HOSP"),
        ("PV1-3.4.2", ""),
    ],
)
def test_paths(path: str, expected: str) -> None:
    assert Message.parse(ADT).get(path) == expected


def test_bad_path_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="HL7 field path"):
        Message.parse(ADT).get("PID.3")


def test_repetitions_segment_lookup_and_all() -> None:
    msg = Message.parse(ADT + b"PID|2||333\r")
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.repetitions(3) == ["111^^^AUTH^MR", "222^^^MEDI-CAL^MA"]
    assert pid.repetitions(4) == []
    assert [p.get(1) for p in msg.all("PID")] == ["1", "2"]
    second = msg.segment("PID", 1)
    assert second is not None and second.get(3) == "333"
    assert msg.segment("PID", 2) is None
    assert msg.segment("NK1") is None
    assert msg.all("NK1") == []


def test_subcomponents_and_unusual_delimiters() -> None:
    raw = (
        b"MSH^~|\\&^S^F^R^R^20120918^^ADT~A24^1^T^2.4\rPID^1^^11111~~~FOO&&0363~NI|22222~~~BAR^^SMITH~JOHN\r"
    )
    msg = Message.parse(raw)
    assert msg.delimiters == Delimiters("^", "~", "|", "\\", "&", None)
    assert msg.get("MSH-9.2") == "A24"
    assert msg.get("PID-3.4.3") == "0363"
    assert msg.get("PID-3[2].1") == "22222"
    assert msg.get("PID-5.2") == "JOHN"


def test_truncation_character_of_v27() -> None:
    msg = Message.parse(b"MSH|^~\\&#|A|B|C|D|20240101||ADT^A01|1|P|2.7\rPID|1||X\\P\\Y\r")
    assert msg.delimiters.truncation == "#"
    assert msg.get("PID-3") == "X#Y"


def test_second_msh_keeps_msh_numbering() -> None:
    msg = Message.parse(ADT + b"MSH|^~\\&|X|Y\r")
    second = msg.segment("MSH", 1)
    assert second is not None and second.field(3) == "X"


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "location"),
    [
        (b"", 100, "MSH"),
        (b"   \r\n", 100, "MSH"),
        (b"PID|^~\\&|A\r", 100, "MSH"),
        (b"EVN|A01\rMSH|^~\\&|A\r", 100, "MSH"),
        (b"MSH", 102, "MSH-1"),
        (b"MSH\r", 102, "MSH-1"),
        (b"MSHA^~\\&A", 102, "MSH-1"),
        (b"MSH ^~\\& ", 102, "MSH-1"),
        (b"MSH\xc3\xa9^~\\&", 102, "MSH-1"),
        (b"MSH|^|A|B", 102, "MSH-2"),
        (b"MSH|^~\\|A", 102, "MSH-2"),  # three characters
        (b"MSH|^~\\&#!|A", 102, "MSH-2"),  # six
        (b"MSH|^&&^|A", 102, "MSH-2"),  # repeated
        (b"MSH|^~\\\\&|A", 102, "MSH-2"),  # doubled backslash (Java artefact)
        (b"MSH|^~00|A", 102, "MSH-2"),  # digits
        (b"MSH|^ \\E|A", 102, "MSH-2"),  # space and a letter
        (b"MSH|^~\x01&|A", 102, "MSH-2"),  # control character
    ],
)
def test_unreadable_input_raises_er7_error(raw: bytes, code: int, location: str) -> None:
    with pytest.raises(Er7Error) as info:
        Message.parse(raw)
    assert (info.value.code, info.value.location) == (code, location)
    assert isinstance(info.value, ListenerError)


def test_error_text_never_echoes_input() -> None:
    with pytest.raises(Er7Error) as info:
        Message.parse(b"MSH|SECRET|DOE^JANE")
    assert "SECRET" not in str(info.value) and "DOE" not in repr(info.value)


# --- charsets --------------------------------------------------------------------------------


def _with_charset(body: bytes, msh18: bytes) -> bytes:
    return b"MSH|^~\\&|A|" + body + b"|C|D|20240101||ADT^A01|1|P|2.5||||||" + msh18 + b"\rPID|1||X\r"


@pytest.mark.parametrize(
    ("raw", "charset", "value"),
    [
        (_with_charset("Blöh".encode(), b""), "utf-8", "Blöh"),
        (_with_charset("Blöh".encode("latin-1"), b""), "windows-1252", "Blöh"),
        (_with_charset(b"\x93q\x94", b""), "windows-1252", "\u201cq\u201d"),  # cp1252 quotes
        (_with_charset(b"a\x81b", b""), "windows-1252", "a\x81b"),  # cp1252 hole → latin-1
        (_with_charset("Blöh".encode("latin-1"), b"8859/1"), "latin-1", "Blöh"),
        (_with_charset("Blöh".encode(), b"UNICODE UTF-8"), "utf-8", "Blöh"),
        (_with_charset("€".encode("iso8859-15"), b"8859/15"), "iso8859-15", "€"),
        (_with_charset(b"plain", b"ASCII"), "ascii", "plain"),
        (_with_charset("Blöh".encode("latin-1"), b"ASCII"), "windows-1252", "Blöh"),  # label lies
        (_with_charset("Blöh".encode(), b"KLINGON"), "utf-8", "Blöh"),  # unknown label
        (_with_charset("Blöh".encode("latin-1"), b"8859/1~UNICODE UTF-8"), "latin-1", "Blöh"),
    ],
)
def test_charset(raw: bytes, charset: str, value: str) -> None:
    msg = Message.parse(raw)
    assert msg.charset == charset
    assert msg.get("MSH-4") == value


@given(st.binary(max_size=200))
def test_decode_never_raises_and_encode_round_trips(data: bytes) -> None:
    text, charset = decode(data)
    assert encode(text, charset) == data


# --- escapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\", "bold"),
        ("\\X41C3A9\\", "AÃ©"),  # no charset: latin-1
        ("\\.sp\\x", "\\.sp\\x"),  # unknown: kept
        ("\\Zabc\\", "\\Zabc\\"),
        ("\\XZZ\\", "\\XZZ\\"),  # bad hex: kept
        ("C:\\temp", "C:\\temp"),  # unterminated: kept
        ("\\P\\", "\\P\\"),  # no truncation character before v2.7
    ],
)
def test_unescape(text: str, expected: str) -> None:
    assert unescape(text, D) == expected


def test_hex_escape_uses_the_message_charset() -> None:
    assert unescape("\\XC3A9\\", D, charset="utf-8") == "é"
    assert unescape("\\XE9\\", D, charset="utf-8") == "é"  # not UTF-8: latin-1


def test_get_unescapes_with_the_message_charset() -> None:
    msg = Message.parse(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rNTE|1||caf\\XC3A9\\ \\T\\ bar\r")
    assert msg.get("NTE-3") == "café & bar"


@pytest.mark.parametrize(
    "d", [D, Delimiters("^", "~", "|", "\\", "&", None), Delimiters("|", "^", "~", "\\", "&", "#")]
)
@given(text=st.text(max_size=60))
def test_escape_round_trips(d: Delimiters, text: str) -> None:
    escaped = escape(text, d)
    for ch in (d.field, d.component, d.repetition, d.subcomponent, "\r", "\n"):
        assert ch not in escaped
    assert unescape(escaped, d) == text


def test_escape_inside_a_message_round_trips() -> None:
    value = "A|B^C~D&E\\F"
    raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rNTE|1||" + escape(value, D).encode() + b"\r"
    assert Message.parse(raw).get("NTE-3") == value


# --- corpus ----------------------------------------------------------------------------------


def test_corpus_charsets_and_non_ascii_text() -> None:
    def parse(name: str) -> Message:
        return Message.parse((SAMPLES / "messages" / name).read_bytes())

    assert parse("057_ipf_A01.hl7").charset == "utf-8"
    assert "ä" in parse("057_ipf_A01.hl7").get("PID-5")
    m066 = parse("066_ipf_A40.hl7")
    assert m066.charset == "windows-1252"
    assert "Ä" in m066.get("MSH-5") + m066.get("MSH-6")
    assert parse("068_elixirhl7_A01.hl7").get("PID-11[2].1") == "NICKELL\u2019S PICKLES"
    assert parse("024_hapi_A45.hl7").charset == "latin-1"  # MSH-18 8859/1
    assert parse("021_hapi_A24.hl7").get("MSH-9.2") == "A24"


# --- differential test against hl7apy --------------------------------------------------------

# hl7apy refuses these; each with the reason. A new refusal fails the test.
HL7APY_REFUSES = {
    "083_mpshl7_A01.hl7": "non-standard segment LOL (hl7apy only knows HL7 and Z segments)",
    "088_santedb_A01.hl7": "SFT segment in a v2.3.1 message (SFT exists from v2.5)",
    "089_santedb_A01.hl7": "SFT segment in a v2.3.1 message",
    "090_santedb_A08.hl7": "SFT segment in a v2.3.1 message",
    "091_santedb_A40.hl7": "SFT segment in a v2.3.1 message",
}

# Fields where hl7apy re-renders the text from its typed tree instead of echoing it. For
# these the comparison is on the data, not the layout: the same non-empty leaves
# (subcomponent values) in the same order, numbers compared as numbers. Each entry says
# why hl7apy moves things.
HL7APY_RERENDERS = {
    # components past the end of the data type in that version get no position in
    # hl7apy's tree, so to_er7() drops the empty ones in between (XCN/XPN/CE/XAD/PL/CX
    # sent with more components than the version defines)
    "EVN-5", "PID-3", "PID-5", "PID-6", "PID-9", "PID-11", "PD1-3", "PD1-4",
    "PV1-7", "PV1-8", "PV1-9", "PV1-17", "PV1-52",
    # XTN: v2.6+ hl7apy drops the withdrawn XTN-1 slot or moves a bare number to XTN-12
    "NK1-5", "NK1-6", "GT1-6", "GT1-7", "PID-13",
    # SI/NM (set ids, amounts, phone-number parts typed NM) are rendered as numbers:
    # "0001" → "1", ".00" → "0.00", "00677.00" → "677.00"
    "PID-1", "PV1-1", "OBX-1", "GT1-1", "GT1-2", "IN1-1", "DG1-1", "DG1-13",
    "PV1-46", "PV1-47", "PV1-48", "PV1-49", "IN2-28",
}  # fmt: skip


def _trim(parts: list[str]) -> list[str]:
    while len(parts) > 1 and parts[-1] == "":
        parts = parts[:-1]
    return parts


def _canonical(field: str, d: Delimiters) -> str:
    """hl7apy drops trailing empty components and subcomponents (``A^B^^`` → ``A^B``)."""
    reps = []
    for rep in field.split(d.repetition):
        comps = [d.subcomponent.join(_trim(c.split(d.subcomponent))) for c in rep.split(d.component)]
        reps.append(d.component.join(_trim(comps)))
    return d.repetition.join(reps)


def _leaves(field: str, d: Delimiters) -> list[str]:
    return [
        s
        for rep in field.split(d.repetition)
        for c in rep.split(d.component)
        for s in c.split(d.subcomponent)
        if s
    ]


def _same_leaf(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


def _hl7apy_parse(raw: bytes, charset: str) -> object:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = raw.decode("cp1252" if charset == "windows-1252" else charset).lstrip("\ufeff")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)


MESSAGES = sorted(p.name for p in (SAMPLES / "messages").glob("*.hl7"))


@pytest.mark.parametrize("name", MESSAGES)
def test_fields_match_hl7apy(name: str) -> None:
    raw = (SAMPLES / "messages" / name).read_bytes()
    ours = Message.parse(raw)
    d = ours.delimiters
    try:
        theirs = _hl7apy_parse(raw, ours.charset)
    except Exception as exc:
        assert name in HL7APY_REFUSES, f"hl7apy newly refuses {name}: {exc!r}"
        return
    assert name not in HL7APY_REFUSES, f"hl7apy now accepts {name}: drop it from HL7APY_REFUSES"

    their_segments = theirs.children  # type: ignore[attr-defined]
    assert [s.name for s in their_segments] == [s.name for s in ours.segments]
    for ts, seg in zip(their_segments, ours.segments, strict=True):
        named: dict[int, list[str]] = {}
        unnamed: list[str] = []
        for fld in ts.children:
            if fld.name is None:  # a field the version does not define: position lost
                unnamed.append(fld.to_er7())
            else:
                named.setdefault(int(fld.name.rsplit("_", 1)[1]), []).append(fld.to_er7())
        assert max(named, default=0) < max(len(seg.fields), 3)
        ours_unnamed: list[str] = []
        for n in range(3 if seg.name == "MSH" else 1, len(seg.fields)):
            field = seg.field(n)
            if n not in named and f"{seg.name}_{n}" not in ts.structure_by_name:
                if field.strip():
                    ours_unnamed += field.split(d.repetition)
                continue
            their_text = d.repetition.join(named.get(n, []))
            if not field.strip() and not their_text:
                continue  # hl7apy drops fields of only blanks (092 PV1-17 " ")
            if _canonical(field, d) == _canonical(their_text, d):
                continue
            where = f"{seg.name}-{n}"
            assert where in HL7APY_RERENDERS, f"{name} {where}: ours and hl7apy's text differ"
            ours_leaves, their_leaves = _leaves(field, d), _leaves(their_text, d)
            assert len(ours_leaves) == len(their_leaves), f"{name} {where}: data lost or added"
            assert all(map(_same_leaf, ours_leaves, their_leaves)), f"{name} {where}: values differ"
        assert [_canonical(u, d) for u in unnamed] == [_canonical(u, d) for u in ours_unnamed]
        if seg.name == "MSH":
            assert ts.children[0].to_er7() == d.field
            assert ts.children[1].to_er7() == d.encoding_characters


KEY_FIELDS = [("PID", 3), ("PID", 5), ("PV1", 3), ("MSH", 9)]


@pytest.mark.parametrize("name", [n for n in MESSAGES if n not in HL7APY_REFUSES])
def test_key_components_match_hl7apy(name: str) -> None:
    """Component and subcomponent values of PID-3, PID-5, PV1-3 and MSH-9, by position."""
    raw = (SAMPLES / "messages" / name).read_bytes()
    ours = Message.parse(raw)
    d = ours.delimiters
    theirs = _hl7apy_parse(raw, ours.charset)
    checked = 0
    for seg_name, n in KEY_FIELDS:
        for index, (ts, seg) in enumerate(
            zip(
                [s for s in theirs.children if s.name == seg_name],  # type: ignore[attr-defined]
                ours.all(seg_name),
                strict=True,
            )
        ):
            reps = [f for f in ts.children if f.name == f"{seg_name}_{n}"]
            for rep_no, rep in enumerate(reps, start=1):
                for comp in rep.children:
                    if comp.name is None or "_" not in comp.name:
                        continue  # base type (whole field is one value) or beyond the type
                    comp_no = int(comp.name.rsplit("_", 1)[1])
                    subs = [s for s in comp.children if s.name and "_" in s.name]
                    if not subs:
                        expected = unescape(comp.to_er7().split(d.subcomponent)[0], d, charset=ours.charset)
                        assert seg.get(n, rep_no, comp_no) == expected, (name, index, n, rep_no, comp_no)
                        checked += 1
                    for sub in subs:
                        sub_no = int(sub.name.rsplit("_", 1)[1])
                        expected = unescape(sub.to_er7(), d, charset=ours.charset)
                        assert seg.get(n, rep_no, comp_no, sub_no) == expected, (
                            name,
                            n,
                            rep_no,
                            comp_no,
                            sub_no,
                        )
                        checked += 1
    assert checked > 0 or ours.segment("PID") is None


# --- the split cache behind get / value ------------------------------------------------------


def _reference_get(seg: Segment, n: int, rep: int, comp: int, sub: int) -> str:
    """`Segment.get` written the plain way (split the field text again on every read)."""
    f = seg.field(n)
    if not f:
        return ""
    if seg.name == "MSH" and n <= 2:
        return f if rep == comp == sub == 1 else ""
    d = seg.delimiters
    for sep, index in ((d.repetition, rep), (d.component, comp), (d.subcomponent, sub)):
        parts = f.split(sep)
        f = parts[index - 1] if 0 < index <= len(parts) else ""
        if not f:
            return ""
    return unescape(f, d, charset=seg.charset)


_FIELD_TEXT = st.text(alphabet="ab ~^&\\\"FSTRE.", max_size=14)


@given(fields=st.lists(_FIELD_TEXT, min_size=1, max_size=5), name=st.sampled_from(["PID", "MSH"]))
def test_get_and_value_match_a_plain_reading_of_the_field(fields: list[str], name: str) -> None:
    d = Delimiters()
    values = ["|", "^~\\&", *fields] if name == "MSH" else fields
    seg = Segment(name, [name, *values], d, "utf-8")
    for n in range(0, len(values) + 2):
        reps = _reference_repetitions(seg, n)
        assert seg.repetition_count(n) == len(reps)
        for rep in range(0, 4):
            for comp in range(0, 4):
                for sub in range(0, 3):
                    expected = _reference_get(seg, n, rep, comp, sub)
                    # Twice: the first read splits the field, the second reads the cache.
                    assert seg.get(n, rep, comp, sub) == expected == seg.get(n, rep, comp, sub)
                    stripped = expected.strip()
                    assert seg.value(n, rep, comp, sub) == (None if stripped in ("", '""') else stripped)


def _reference_repetitions(seg: Segment, n: int) -> list[str]:
    f = seg.field(n)
    if not f:
        return []
    return [f] if seg.name == "MSH" and n <= 2 else f.split(seg.delimiters.repetition)


def test_value_of_msh_delimiter_fields_is_not_unescaped() -> None:
    msh = Message.parse(b"MSH|^~\\&|A|B\rPID|1").segments[0]
    assert (msh.value(1), msh.value(2), msh.value(2, 1, 2)) == ("|", "^~\\&", None)
    assert msh.repetition_count(2) == 1


def test_msh1_msh2_pairs_are_validated_once_and_refused_every_time() -> None:
    ok = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r"
    assert Message.parse(ok).delimiters is Message.parse(ok.replace(b"|1|", b"|2|")).delimiters
    for _ in range(2):  # a refused pair is not kept: it raises again
        with pytest.raises(Er7Error) as exc:
            Message.parse(b"MSH|^^\\&|A|B\r")
        assert exc.value.location == "MSH-2"
