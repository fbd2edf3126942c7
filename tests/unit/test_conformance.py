"""check_message on the public corpus: what hl7apy finds, where, and that no value leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from adt_listener import conformance
from adt_listener.conformance import ConformanceFinding, check_message
from adt_listener.er7 import split_messages
from adt_listener.er7 import text_of as decode
from wpc.tools import validate


def read(samples_dir: Path, name: str) -> bytes:
    return (samples_dir / name).read_bytes()


# Verified clean against hl7apy 1.3.5 (tolerant parse + Validator): no finding at all.
@pytest.mark.parametrize(
    "name",
    ["messages/035_hl7apy_A01.hl7", "messages/045_lfh_A01.hl7", "messages/080_rusthl7_A02.hl7"],
)
def test_clean_messages_have_no_findings(samples_dir: Path, name: str) -> None:
    assert check_message(read(samples_dir, name)) == []


def test_first_segment_not_msh_is_unparseable(samples_dir: Path) -> None:
    findings = check_message(read(samples_dir, "malformed/002_hl7apy_A01.hl7"))
    assert [f.kind for f in findings] == ["unparseable"]


def test_duplicate_encoding_characters_are_unparseable_at_msh2(samples_dir: Path) -> None:
    findings = check_message(read(samples_dir, "malformed/003_hl7apy_A01.hl7"))
    assert findings == [ConformanceFinding("unparseable", "MSH-2", "invalid encoding characters")]


def test_administrative_sex_outside_table_0001_is_found_at_pid8(samples_dir: Path) -> None:
    findings = check_message(read(samples_dir, "malformed/006_santedb_A01.hl7"))
    assert ConformanceFinding("table", "PID-8", "value not in table HL70001") in findings
    # The same message also lacks PV1, which ADT_A01 requires (HL7 v2.3.1 chapter 3).
    assert any(f.kind == "structure" and f.location == "PV1" for f in findings)


def test_missing_segments_are_structure_findings(samples_dir: Path) -> None:
    # 079 declares ADT^A08 but carries only MSH and EVN.
    findings = check_message(read(samples_dir, "messages/079_rusthl7_A08.hl7"))
    assert {(f.kind, f.location) for f in findings} == {("structure", "PID"), ("structure", "PV1")}


def test_missing_required_component_is_located(samples_dir: Path) -> None:
    # 037 is v2.6, where MSH-9.3 (message structure) is required; it sends ADT^A02 only.
    findings = check_message(read(samples_dir, "messages/037_lfh_A02.hl7"))
    assert findings == [ConformanceFinding("required", "MSH-9.3", "required element empty")]


def test_value_in_a_table_warning_never_reaches_the_finding(samples_dir: Path) -> None:
    raw = read(samples_dir, "messages/006_msft_A06.hl7")
    assert b"Atchinson" in raw  # a person's name, sent where OBX-26 expects a table code
    findings = check_message(raw)
    assert ConformanceFinding("table", "OBX-26", "value not in table HL70909") in findings
    for f in findings:
        assert "Atchinson" not in f.detail and "Christopher" not in f.detail
        assert "Atchinson" not in (f.location or "")


def test_patient_name_never_in_findings_of_malformed_message(samples_dir: Path) -> None:
    raw = read(samples_dir, "malformed/006_santedb_A01.hl7")
    assert b"JOHNSTON" in raw
    assert all(
        "JOHNSTON" not in f.detail and "JOHNSTON" not in (f.location or "") for f in check_message(raw)
    )


def test_translation_drops_a_value_that_mimics_the_message_wording() -> None:
    line = "Warning: Value SMITH in element PV1.PV1_2 not in table HL70001 in element PID.PID_8"
    finding = conformance._translate(line, frozenset({"PID", "PV1"}))
    assert finding == ConformanceFinding("table", "PID-8", "value not in table HL70001")


def test_unknown_validator_wording_keeps_nothing_of_the_text() -> None:
    finding = conformance._translate("Error: something new about SMITH", frozenset({"PID"}))
    assert finding == ConformanceFinding("validator_error", None, "unrecognised validator message")


def test_missing_version_is_checked_against_the_default(samples_dir: Path) -> None:
    findings = check_message(read(samples_dir, "messages/084_mpshl7_A34.hl7"))
    assert findings[0] == ConformanceFinding(
        "unsupported_version", "MSH-12", "absent or not an HL7 v2 version; checked against 2.5"
    )


def test_version_hl7apy_lacks_is_mapped_to_the_nearest_older_one(samples_dir: Path) -> None:
    raw = read(samples_dir, "messages/035_hl7apy_A01.hl7").replace(b"|2.6|", b"|2.9|", 1)
    findings = check_message(raw)
    assert findings[0] == ConformanceFinding(
        "version", "MSH-12", "2.9 not known to hl7apy; checked against 2.8.2"
    )


def test_version_older_than_any_supported_maps_to_the_oldest() -> None:
    assert conformance._resolve_version("2.0", ["2.1", "2.2"]) == "2.1"
    assert conformance._resolve_version("2.3.2", ["2.3", "2.3.1", "2.4"]) == "2.3.1"
    assert conformance._resolve_version("2.4", ["2.3", "2.4"]) == "2.4"


def test_structure_comes_from_the_trigger_when_msh9_has_none(samples_dir: Path) -> None:
    # 051 is v2.3.1 ADT^A31 without MSH-9.3: Table 0354 gives ADT_A01 in that version, whose
    # PV1 is required; without the mapping hl7apy would have no structure at all.
    findings = check_message(read(samples_dir, "messages/051_mirth_A31.hl7"))
    assert findings == [
        ConformanceFinding("structure", "PV1", "required segment or group missing in ADT_A01")
    ]


def test_never_raises_on_garbage() -> None:
    for raw in (b"", b"\x00\xff\xfe", b"MSH", b"MSH|", b"MSH|^~\\&|" + b"|" * 30, b"PID|1\rMSH|^~\\&"):
        assert all(isinstance(f, ConformanceFinding) for f in check_message(raw))


def test_decode_bom_line_endings_and_fallbacks() -> None:
    assert decode(b"\xef\xbb\xbfMSH|a\r\nPID|b\nPV1|c") == "MSH|a\rPID|b\rPV1|c"
    assert decode(b"MSH|\xc4") == "MSH|Ä"  # not UTF-8: cp1252
    assert decode(b"MSH|\xc4", "8859/1") == "MSH|Ä"  # MSH-18 name
    assert decode("MSH|é".encode(), "no-such-charset") == "MSH|é"


def test_split_messages_at_msh() -> None:
    # The one split of files (adt_listener.er7), as `wpc send` and `wpc validate` read them:
    # every segment ends with CR, and a batch envelope is no message's part.
    data = b"\xef\xbb\xbfFHS|^~\\&\rMSH|1\nPID|x\n\nMSH|2\r\nEVN|y\nFTS|1\n"
    assert split_messages(data) == [b"MSH|1\rPID|x\r", b"MSH|2\rEVN|y\r"]


def test_validate_command(samples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    clean = tmp_path / "clean.hl7"
    clean.write_bytes(read(samples_dir, "messages/035_hl7apy_A01.hl7"))
    both = tmp_path / "both.hl7"
    both.write_bytes(
        read(samples_dir, "messages/035_hl7apy_A01.hl7")
        + b"\n"
        + read(samples_dir, "messages/079_rusthl7_A08.hl7")
    )
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)

    assert validate.run(parser.parse_args([str(clean)])) == 0
    out = capsys.readouterr().out
    assert "ADT^A01 v2.6: 0 finding(s)" in out
    assert "1 message(s), 0 with findings" in out

    assert validate.run(parser.parse_args([str(both)])) == 1
    out = capsys.readouterr().out
    assert f"{both}#2: ADT^A08 v2.3: 2 finding(s)" in out
    assert "structure" in out and " PV1 " in out
    assert "2 message(s), 1 with findings; findings by kind: structure 2" in out
