"""normalize: one hand-built message per branch, plus checks on the sample corpus."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adt_listener.digest import content_digest
from adt_listener.er7 import Message
from adt_listener.intake import IntakePolicy
from adt_listener.normalize import normalize, parse_dtm
from schemas.adt_event import AdtEventV1, event_id_for

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
POLICY = IntakePolicy()
RECEIVED = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
MSH = "MSH|^~\\&|APP^1.2^ISO|FAC|WPC|WPC|20240102030405-0800||ADT^A01^ADT_A01| CTRL-7 |P|2.5.1"


def run(*segments: str, msh: str = MSH) -> tuple[AdtEventV1, list[tuple[str, int, str]]]:
    raw = "\r".join((msh, *segments)).encode()
    event, findings = normalize(
        Message.parse(raw), message_id=uuid.uuid4(), received_at=RECEIVED, policy=POLICY,
        content_digest=content_digest(raw),
    )
    return event, [(f.severity, f.code, f.location) for f in findings]


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment line with the given fields set (1-based), the rest empty."""
    values = [fields.get(n, "") for n in range(1, max(fields) + 1)]
    return "|".join([name, *values])


def key(authority: str, value: str) -> str:
    return hashlib.sha256(f"{authority}|{value}".encode()).hexdigest()[:32]


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", dt.datetime(2024, 1, 1)),
        ("202402", dt.datetime(2024, 2, 1)),
        ("20240229", dt.datetime(2024, 2, 29)),
        ("2024022913", dt.datetime(2024, 2, 29, 13)),
        ("202402291305", dt.datetime(2024, 2, 29, 13, 5)),
        ("20240229130559", dt.datetime(2024, 2, 29, 13, 5, 59)),
        ("20240229130559.1", dt.datetime(2024, 2, 29, 13, 5, 59, 100000)),
        ("20240229130559.1234", dt.datetime(2024, 2, 29, 13, 5, 59, 123400)),
        ("20240229130559123", dt.datetime(2024, 2, 29, 13, 5, 59, 123000)),  # 17 digits: ms
        (
            "20240229130559-0500",
            dt.datetime(2024, 2, 29, 13, 5, 59, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        ),
        ("202402291305+0530", dt.datetime(2024, 2, 29, 13, 5, tzinfo=dt.timezone(dt.timedelta(minutes=330)))),
        ("20240229130559123+0000", dt.datetime(2024, 2, 29, 13, 5, 59, 123000, tzinfo=dt.UTC)),
        (" 20240229 ", dt.datetime(2024, 2, 29)),
    ],
)
def test_parse_dtm(text: str, expected: dt.datetime) -> None:
    value = parse_dtm(text)
    assert value == expected
    assert value is not None and (value.tzinfo is None) == (expected.tzinfo is None)
    assert parse_dtm(text) is value  # read once, then kept by its text


@pytest.mark.parametrize(
    "text", ["", "24", "20240230", "2024131", "202413", "20240229250000", "2024.5", "20240229-05",
             "20240229130559+2400", "yesterday", "20140912220", "2024022913055912345"]
)  # fmt: skip
def test_parse_dtm_rejects(text: str) -> None:
    assert parse_dtm(text) is None
    assert parse_dtm(text) is None  # the kept answer too


# --- header, patient, visit ------------------------------------------------------------------


def test_event_id_names_the_facility_the_control_id_and_the_content() -> None:
    pid = "PID|1||111^^^HOSP^MR"
    event, _ = run(pid)
    resent, _ = run(pid, msh=MSH.replace("20240102030405-0800", "20240102041500-0800"))  # new MSH-7 only
    other, _ = run("PID|1||222^^^HOSP^MR")  # a different message under the same MSH-10
    assert event.event_id == event_id_for("FAC", "CTRL-7", content_digest("\r".join((MSH, pid)).encode()))
    assert resent.event_id == event.event_id
    assert other.event_id != event.event_id
    assert event.event_id != event_id_for("FAC", "CTRL-7")  # the id of (MSH-4, MSH-10) alone, before 0006


def test_full_message() -> None:
    event, findings = run(
        "EVN|A01|20240102030000||||20240102025900",
        'PID|1||111^^^HOSP^MR~M123^^^MEDI-CAL^XX~""^^^X||DOE^JANE^Q~ALIAS^A||19800102|F|||'
        "1 MAIN ST^^LOS ANGELES^CA^90012^USA^H^^06037~2 SIDE^^X|||||||||||||||||||N",
        "PD1||||1234^WELBY^MARCUS~^^",
        "ROL|1|AD|PP^Primary care^HL70443|55^CARE^PRIM",
        "ROL|2|AD|AT|66^ATTENDING^DOC",
        seg(
            "PV1",
            {
                1: "1",
                2: "I",
                3: "W1^101^A^HOSP&1.2.3&ISO",
                4: "E",
                10: "MED",
                19: "V77",
                20: "MC^20240101",
                36: "01",
                44: "20240102030000",
                45: "20240105",
            },
        ),
        "DG1|1||F20.9^Schizophrenia^I10||20240102|A",
        "DG1|2|I9|29590|||W",
        "DG1|3||^^I10|only text",
        seg("IN1", {1: "1", 2: "MEDI^Medi-Cal plan", 3: "MCAL01", 4: "MEDI-CAL", 15: "HMO", 36: "POL-9"}),
        "IN1|2|||||",
        "ZFA|1|x",
        "AIL|1",
    )
    assert (event.message_type, event.trigger_event, event.message_structure) == ("ADT", "A01", "ADT_A01")
    assert (event.hl7_version, event.processing_id, event.control_id) == ("2.5.1", "P", "CTRL-7")
    assert (event.sending_application, event.sending_facility) == ("APP", "FAC")
    assert event.message_time == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
    assert event.event_time == dt.datetime(2024, 1, 2, 3, 0)
    assert event.event_occurred == dt.datetime(2024, 1, 2, 2, 59)
    assert event.received_at == RECEIVED

    p = event.patient
    assert p.patient_key == key("HOSP", "111")
    assert [(i.value, i.assigning_authority, i.type_code) for i in p.identifiers] == [
        ("111", "HOSP", "MR"),
        ("M123", "MEDI-CAL", "XX"),
    ]
    assert p.medi_cal_id == "M123"  # by authority
    assert p.name is not None and (p.name.family, p.name.given, p.name.middle) == ("DOE", "JANE", "Q")
    assert p.birth_date == dt.date(1980, 1, 2)
    assert p.sex == "F"
    assert p.address is not None
    assert (p.address.street, p.address.city, p.address.zip, p.address.county_code) == (
        "1 MAIN ST",
        "LOS ANGELES",
        "90012",
        "06037",
    )
    assert p.death_indicator is False

    v = event.visit
    assert v is not None
    assert v.patient_class == "I"
    assert v.location is not None and (v.location.point_of_care, v.location.bed, v.location.facility) == (
        "W1",
        "A",
        "HOSP",
    )
    assert v.prior_location is None
    assert (v.admission_type, v.hospital_service, v.visit_number, v.financial_class) == (
        "E",
        "MED",
        "V77",
        "MC",
    )
    assert v.discharge_disposition == "01"
    assert v.admit_time == dt.datetime(2024, 1, 2, 3, 0)
    assert v.discharge_time == dt.datetime(2024, 1, 5)

    assert [(d.code, d.coding_system, d.description, d.diagnosis_type) for d in event.diagnoses] == [
        ("F20.9", "I10", "Schizophrenia", "A"),
        ("29590", "I9", None, "W"),  # v2.2 style: coding method in DG1-2
    ]  # the third DG1 has no code
    assert [(x.id, x.family, x.given, x.source) for x in event.primary_care] == [
        ("1234", "WELBY", "MARCUS", "PD1-4"),
        ("55", "CARE", "PRIM", "ROL"),
    ]
    assert len(event.insurance) == 1
    ins = event.insurance[0]
    assert (ins.plan_id, ins.company_id, ins.company_name, ins.plan_type, ins.policy_number) == (
        "MEDI",
        "MCAL01",
        "MEDI-CAL",
        "HMO",
        "POL-9",
    )
    assert event.extra_segments == ["ZFA", "AIL"]
    assert findings == []


def test_medi_cal_by_identifier_type_ma() -> None:
    event, _ = run("PID|1||1^^^H^MR~999^^^STATE^MA")
    assert event.patient.medi_cal_id == "999"


def test_medi_cal_by_universal_id_and_case() -> None:
    event, _ = run("PID|1||1^^^H^MR~42^^^&medicaid&L")
    assert event.patient.medi_cal_id == "42"
    event, _ = run("PID|1||1^^^H^MR")
    assert event.patient.medi_cal_id is None


def test_patient_key_falls_back_to_sending_facility_and_skips_empty_ids() -> None:
    event, _ = run('PID|1||~""^^^X~ 77 ^^^&2.16.1&ISO')
    assert event.patient.patient_key == key("2.16.1", "77")
    event, _ = run("PID|1||88")
    assert event.patient.patient_key == key("FAC", "88")


def test_msh4_universal_id_when_namespace_is_empty() -> None:
    event, _ = run("PID|1||1", msh=MSH.replace("|FAC|", "|^2.16.840.1^ISO|"))
    assert event.sending_facility == "2.16.840.1"


def test_explicit_nulls_and_blanks_become_none() -> None:
    event, _ = run('PID|1||1||""^ ^""||""|  |||""^^""', 'PV1|1|""|   ')
    p = event.patient
    assert p.name is None and p.birth_date is None and p.sex is None and p.address is None
    assert event.visit is None  # a PV1 that says nothing


def test_partial_birth_dates() -> None:
    assert run("PID|1||1||||198401")[0].patient.birth_date == dt.date(1984, 1, 1)
    assert run("PID|1||1||||1984")[0].patient.birth_date == dt.date(1984, 1, 1)
    assert run("PID|1||1||||19840105123000")[0].patient.birth_date == dt.date(1984, 1, 5)


def test_bad_times_become_none_with_warnings() -> None:
    event, findings = run(
        "EVN|A01|yesterday||||2024-01-01", "PID|1||1||||19841341", "PV1|1|I" + "|" * 42 + "4386589|x"
    )
    assert event.event_time == event.message_time  # EVN-2 unreadable: MSH-7
    assert event.event_occurred is None
    assert event.patient.birth_date is None
    assert event.visit is not None and event.visit.admit_time is None and event.visit.discharge_time is None
    assert findings == [
        ("W", 102, "PID-7"),
        ("W", 102, "EVN-2"),
        ("W", 102, "EVN-6"),
        ("W", 102, "PV1-44"),
        ("W", 102, "PV1-45"),
    ]


def test_sad_street_and_first_non_empty_address() -> None:
    event, _ = run("PID|1||1" + "|" * 8 + "~&HOME STREET&2^^TOWN")
    assert event.patient.address is not None
    assert (event.patient.address.street, event.patient.address.city) == ("2 HOME STREET", "TOWN")


def test_death_indicator_and_escaped_values() -> None:
    event, _ = run("PID|1||1||O\\T\\BRIEN^ANN|||||||||||||||||||||||||Y")
    assert event.patient.name is not None and event.patient.name.family == "O&BRIEN"
    assert event.patient.death_indicator is True


def test_merge_prior_identifiers() -> None:
    event, _ = run(
        "PID|1||1", "MRG|305010~720^^^BBB&2.16.1&ISO^MR", "PID|2||2", "MRG|999", msh=MSH.replace("A01", "A40")
    )
    assert [(i.value, i.assigning_authority) for i in event.prior_identifiers] == [
        ("305010", None),
        ("720", "BBB"),
        ("999", None),
    ]


# --- corpus ----------------------------------------------------------------------------------


def corpus(name: str) -> AdtEventV1:
    raw = (SAMPLES / "messages" / name).read_bytes()
    event, _ = normalize(
        Message.parse(raw), message_id=uuid.uuid4(), received_at=RECEIVED, policy=POLICY,
        content_digest=content_digest(raw),
    )
    return event


def test_corpus_001_primary_care_from_pd1_and_rol() -> None:
    sources = {p.source for p in corpus("001_msft_A01.hl7").primary_care}
    assert sources == {"PD1-4", "ROL"}


def test_corpus_022_three_identifiers_offsets_and_z_segment() -> None:
    event = corpus("022_hapi_A01.hl7")
    assert len(event.patient.identifiers) == 3
    assert event.extra_segments == ["ZFA"]
    assert event.message_time is not None and event.message_time.tzinfo is not None
    assert len(event.insurance) == 3


def test_corpus_057_utf8_umlauts() -> None:
    name = corpus("057_ipf_A01.hl7").patient.name
    assert name is not None and "ä" in (name.family or "") and "ö" in (name.given or "")


def test_corpus_066_latin1_bytes_decoded() -> None:
    msg = Message.parse((SAMPLES / "messages" / "066_ipf_A40.hl7").read_bytes())
    assert "Ä" in msg.get("MSH-5") and "Ö" in msg.segments[0].field(6)
    assert len(corpus("066_ipf_A40.hl7").prior_identifiers) == 2  # MRG-1 repeats


def test_corpus_068_right_single_quote_preserved() -> None:
    assert corpus("068_elixirhl7_A01.hl7").message_time == dt.datetime(
        2006, 5, 29, 9, 1, 31, tzinfo=dt.timezone(dt.timedelta(hours=-5))
    )
    msg = Message.parse((SAMPLES / "messages" / "068_elixirhl7_A01.hl7").read_bytes())
    assert msg.get("PID-11[2].1") == "NICKELL\u2019S PICKLES"


def test_corpus_021_unusual_delimiters() -> None:
    event = corpus("021_hapi_A24.hl7")
    assert event.trigger_event == "A24"
    assert event.patient.identifiers[0].value == "11111"


def test_corpus_050_seventeen_digit_timestamp() -> None:
    event = corpus("050_mirth_A40.hl7")
    assert event.message_time is not None and event.message_time.microsecond % 1000 == 0


def test_corpus_091_year_month_birth_date() -> None:
    assert corpus("091_santedb_A40.hl7").patient.birth_date == dt.date(1984, 1, 1)


# --- the fast path of parse_dtm and the one-call validation ----------------------------------


_REF_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:([+-])(\d{2})(\d{2}))?")


def _reference_dtm(text: str) -> dt.datetime | None:
    """DTM read with one regular expression only (what parse_dtm did before its fast path)."""
    text = text.strip()
    if len(text) in (17, 22) and text[:17].isdigit() and text.isascii():  # 17 digits: milliseconds
        text = f"{text[:14]}.{text[14:17]}{text[17:]}"
    m = _REF_DTM.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    if frac is not None and second is None:
        return None
    tz = None
    if sign is not None:
        offset = dt.timedelta(hours=int(oh), minutes=int(om))
        if offset >= dt.timedelta(hours=24):
            return None
        tz = dt.timezone(-offset if sign == "-" else offset)
    try:
        return dt.datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                           int(second or 0), int((frac or "0").ljust(6, "0")), tzinfo=tz)
    except ValueError:
        return None


@given(
    body=st.text(alphabet="0123456789", min_size=6, max_size=17),
    offset=st.one_of(st.just(""), st.from_regex(r"[+-][0-9]{4}", fullmatch=True)),
    pad=st.sampled_from(["", " "]),
)
def test_parse_dtm_fast_path_reads_like_the_regular_expression(body: str, offset: str, pad: str) -> None:
    text = f"{pad}{body}{offset}{pad}"
    value, expected = parse_dtm(text), _reference_dtm(text)
    assert value == expected
    assert value is None or expected is None or value.utcoffset() == expected.utcoffset()


def test_parse_dtm_keeps_unicode_digits_on_the_slow_path() -> None:
    assert parse_dtm("２０２４０２２９") == _reference_dtm("２０２４０２２９")


def test_every_synthetic_and_corpus_event_revalidates_to_itself() -> None:
    """normalize assembles the event as plain data and validates it once: the result is the
    model its JSON describes (no field lost, coerced or defaulted differently)."""
    from adt_listener.intake import intake
    from bench.synthetic import synthetic_feed

    inputs = list(synthetic_feed(400, seed=7))
    inputs += [p.read_bytes() for p in sorted((SAMPLES / "messages").glob("*.hl7"))]
    events = 0
    for raw in inputs:
        event = intake(raw, received_at=RECEIVED, policy=POLICY).event
        if event is None:
            continue
        events += 1
        assert AdtEventV1.model_validate_json(event.model_dump_json()) == event
        assert AdtEventV1.model_validate(event.model_dump()).model_dump_json() == event.model_dump_json()
    assert events > 400


# --- PID-13 phone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid13", "expected"),
    [
        ("(212)555-1212^HOM", "(212)555-1212"),  # XTN-1, as most feeds send it
        ("^PRN^PH^^^712^7670867", "(712) 767-0867"),  # only the unformatted parts
        ("^PRN^PH^^1^416^2525252^12", "+1 (416) 252-5252 ext. 12"),
        ("^PRN^PH^^^^5551234", "555-1234"),
        ("^PRN^Internet^someone@example.org~(555) 555-2004", "(555) 555-2004"),  # an e-mail is no phone
        ("^^^someone@example.org", None),  # XTN-4 alone: an e-mail address
        ("3472444150^HOME~(000)000-0000^ALTERNATE", "3472444150"),  # the first repetition
        ('""', None),
        ("", None),
    ],
)
def test_phone_from_pid_13(pid13: str, expected: str | None) -> None:
    event, findings = run(seg("PID", {1: "1", 3: "111^^^HOSP^MR", 13: pid13}))
    assert event.patient.phone == expected
    assert findings == []
