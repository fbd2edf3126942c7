"""Every sample of the corpus through `intake`: the expected decision of each, derived
from the rules in `adt_listener.intake` and the file's content (SOURCES.tsv notes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adt_listener.ack import salvage_header
from adt_listener.er7 import Message
from adt_listener.intake import IntakePolicy, intake

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
NOW = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

EXPECTED: dict[str, str] = {
    # FHIR-Converter v2.8 set: complete messages; A28/A31 carry PV1, A40 needs none
    "messages/001_msft_A01.hl7": "AA",
    "messages/002_msft_A02.hl7": "AA",
    "messages/003_msft_A03.hl7": "AA",
    "messages/004_msft_A04.hl7": "AA",
    "messages/005_msft_A05.hl7": "AA",
    "messages/006_msft_A06.hl7": "AA",
    "messages/007_msft_A07.hl7": "AA",
    "messages/008_msft_A08.hl7": "AA",
    "messages/009_msft_A11.hl7": "AA",
    "messages/010_msft_A13.hl7": "AA",
    "messages/011_msft_A28.hl7": "AA",
    "messages/012_msft_A31.hl7": "AA",
    "messages/013_msft_A40.hl7": "AA",  # merge without PV1 is allowed; MSH-15 NE (no ACK sent)
    "messages/014_msft_A01.hl7": "AA",  # BOM and trailing spaces are not errors
    "messages/015_msft_A01.hl7": "AA",  # BOM
    "messages/016_msft_A04.hl7": "AA",  # "MSH" as a field value inside PID/PV1 is data
    "messages/017_msft_A04.hl7": "AA",  # no EVN: not required by our rules
    "messages/018_msft_A04.hl7": "AA",  # free text in coded fields we do not check
    "messages/019_hapi_A03.hl7": "AA",
    "messages/020_hapi_A01.hl7": "AA",
    "messages/021_hapi_A24.hl7": "AA",  # "^" field separator, ADT~A24; A24 is a link event, no PV1 needed
    "messages/022_hapi_A01.hl7": "AA",  # MSH-11 D accepted; Z-segment
    "messages/023_hapi_A04.hl7": "AA",  # AIL and an empty IN1 do not matter
    "messages/024_hapi_A45.hl7": "AA",  # MSH-11 "T^", MSH-12 "2.5^^": first components count
    "messages/025_hapi_A06.hl7": "AE",  # no PID (100) and no PV1 for the visit event A06 (100)
    "messages/026_hapi_A17.hl7": "AA",
    "messages/027_hapi_A14.hl7": "AA",  # v2.2 A14 (pending admit) is not a visit event in our list
    "messages/028_hapi_A05.hl7": "AA",
    "messages/029_hapi_A31.hl7": "AA",  # empty PD1 is fine
    "messages/030_hapi_A03.hl7": "AA",  # PV1 present though empty; MSH-11 "P^T"
    "messages/031_hapi_A01.hl7": "AA",  # ZPI between PID and PV1
    "messages/032_hapi_A31.hl7": "AA",  # first PID-3 repetition has an id; "" in the second is ignored
    "messages/033_pyhl7_A01.hl7": "AA",  # quoted nulls elsewhere; no EVN
    "messages/034_pyhl7_A04.hl7": "AA",
    "messages/035_hl7apy_A01.hl7": "AA",
    "messages/036_hl7apy_A01.hl7": "AA",
    "messages/037_lfh_A02.hl7": "AA",  # EVN-1 disagreeing with MSH-9 is not checked
    "messages/038_lfh_A34.hl7": "AR",  # empty MSH-10 (101)
    "messages/039_lfh_A40.hl7": "AA",
    "messages/040_lfh_A01.hl7": "AR",  # empty MSH-11 (202); PID-8 "female" would only warn
    "messages/041_lfh_A01.hl7": "AE",  # A01 without PV1 (100)
    "messages/042_lfh_A01.hl7": "AR",  # empty MSH-10 (101)
    "messages/043_lfh_A01.hl7": "AA",  # PV1-2 "ff" only warns (103)
    "messages/044_lfh_A18.hl7": "AA",  # PV1 glued to PID, but a second PV1 follows; A18 needs none anyway
    "messages/045_lfh_A01.hl7": "AA",
    "messages/046_lfh_A01.hl7": "AE",  # no PID (100)
    "messages/047_mirth_A01.hl7": "AA",
    "messages/048_mirth_A04.hl7": "AA",
    "messages/049_mirth_A08.hl7": "AA",
    "messages/050_mirth_A40.hl7": "AA",  # 17-digit MSH-7 is read as milliseconds
    "messages/051_mirth_A31.hl7": "AA",  # MSH-11 D; A31 without PV1
    "messages/052_mirth_A01.hl7": "AA",
    "messages/053_mirth_A04.hl7": "AA",
    "messages/054_mirth_A01.hl7": "AA",
    "messages/055_mirth_A01.hl7": "AA",
    "messages/056_ipf_A01.hl7": "AA",  # v2.2, MSH-11 T; MSH-15 ER (no ACK on success)
    "messages/057_ipf_A01.hl7": "AA",  # UTF-8 without MSH-18
    "messages/058_ipf_A08.hl7": "AA",
    "messages/059_ipf_A01.hl7": "AA",
    "messages/060_ipf_A40.hl7": "AA",
    "messages/061_ipf_A08.hl7": "AA",  # one PID-3 repetition is "", another has an id
    "messages/062_ipf_A10.hl7": "AA",
    "messages/063_ipf_A31.hl7": "AA",  # PID-5 a single space: not a rule of ours
    "messages/064_ipf_A31.hl7": "AA",
    "messages/065_ipf_A40.hl7": "AA",
    "messages/066_ipf_A40.hl7": "AA",  # latin-1 bytes without MSH-18: decoded, not rejected
    "messages/067_ipf_A01.hl7": "AA",
    "messages/068_elixirhl7_A01.hl7": "AA",
    "messages/069_elixirhl7_A03.hl7": "AA",
    "messages/070_cdcti_A01.hl7": "AA",  # MSH-11 D
    "messages/071_cdcti_A01.hl7": "AA",
    "messages/072_gwhistle_A01.hl7": "AA",  # PID-8 "2" and PV1-2 "INPATIENT" only warn; MSH-11.1 T
    "messages/073_gwhistle_A01.hl7": "AA",
    "messages/074_gwhistle_A04.hl7": "AA",  # v2.1 is supported
    "messages/075_gwhistle_A08.hl7": "AA",
    "messages/076_simhosp_A01.hl7": "AA",
    "messages/077_simhosp_A34.hl7": "AA",  # A34 without PV1
    "messages/078_rusthl7_A01.hl7": "AA",  # NK1 glued into PID is just PID text
    "messages/079_rusthl7_A08.hl7": "AE",  # only MSH and EVN: no PID (100)
    "messages/080_rusthl7_A02.hl7": "AA",
    "messages/081_rusthl7_A03.hl7": "AA",
    "messages/082_rusthl7_A04.hl7": "AA",  # PID-8 "M-" only warns
    "messages/083_mpshl7_A01.hl7": "AA",  # MSH-11 "P^default"; unknown segment LOL is kept as extra
    "messages/084_mpshl7_A34.hl7": "AR",  # no MSH-11 (202) and no MSH-12 (203)
    "messages/085_dcm4che_A31.hl7": "AA",  # veterinary, but a valid A31 without PV1
    "messages/086_dcm4che_A40.hl7": "AA",
    "messages/087_dcm4che_A47.hl7": "AA",
    "messages/088_santedb_A01.hl7": "AE",  # A01 without PV1 (100)
    "messages/089_santedb_A01.hl7": "AE",  # A01 without PV1 (100)
    "messages/090_santedb_A08.hl7": "AA",  # A08 may come without PV1
    "messages/091_santedb_A40.hl7": "AA",
    "messages/092_efferent_O01.hl7": "AE",  # O01 is not an ADT trigger event (201)
    # negative tests of other projects
    "malformed/001_pyhl7_A04.hl7": "AR",  # starts with BHS, not MSH (100)
    "malformed/002_hl7apy_A01.hl7": "AR",  # starts with PID (100)
    "malformed/003_hl7apy_A01.hl7": "AR",  # MSH-2 "^&&^" repeats characters (102)
    "malformed/004_lfh_A01.hl7": "AR",  # MSH-2 "^~\\&" has the escape character twice (102)
    "malformed/005_ipf_A01.hl7": "AE",  # A01 without PID (100)
    "malformed/006_santedb_A01.hl7": "AE",  # A01 without PV1 (100); PID-8 "X" only warns
    "malformed/007_nhapi_A40.hl7": "AR",  # MSH-2 is one character (102)
    "malformed/008_nhapi_A40.hl7": "AR",  # MSH-2 holds a space and a letter (102)
    "malformed/009_nhapi_A01.hl7": "AR",  # MSH-2 holds digits (102)
    "malformed/010_nhapi_A07.hl7": "AR",  # MSH-11 "0" is not a processing id (202)
}

# MSA-2 of ACKs to input we could not parse, salvaged from the raw MSH line
SALVAGED_CONTROL_IDS = {
    "malformed/003_hl7apy_A01.hl7": "0123456789",
    "malformed/004_lfh_A01.hl7": "102",
}


def test_table_covers_the_whole_corpus() -> None:
    files = {f"{p.parent.name}/{p.name}" for p in SAMPLES.glob("*/*.hl7")}
    assert len([f for f in files if f.startswith("messages/")]) == 92
    assert len([f for f in files if f.startswith("malformed/")]) == 10
    assert files == set(EXPECTED)


@pytest.mark.parametrize(("name", "code"), sorted(EXPECTED.items()))
def test_corpus_decision(name: str, code: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    result = intake(raw, received_at=NOW, policy=IntakePolicy())
    assert result.ack_code == code, [(f.code, f.location) for f in result.findings]
    ack = Message.parse(result.ack)
    try:
        original: Message | None = Message.parse(raw)
    except Exception:
        original = None
    # MSH-15 decides the mode; for unreadable input the salvaged MSH line is all we have
    enhanced = (original.get("MSH-15").strip() if original else salvage_header(raw).accept_ack_type) != ""
    commit = {"AA": "CA", "AE": "CE", "AR": "CR"}
    assert ack.get("MSA-1") == (commit[code] if enhanced else code)
    if original is not None and original.get("MSH-10").strip():
        assert ack.segments[1].field(2) == original.segments[0].field(10).strip()
        assert result.control_id == original.get("MSH-10").strip()
    elif name in SALVAGED_CONTROL_IDS:
        assert ack.get("MSA-2") == SALVAGED_CONTROL_IDS[name] == result.control_id
    if code != "AA":
        assert ack.all("ERR"), "AE/AR must say why"
        assert result.event is None
        assert any(f.severity == "E" for f in result.findings)
    else:
        assert result.event is not None and result.patient_key == result.event.patient.patient_key
        assert result.event_id == result.event.event_id
        assert not any(f.severity == "E" for f in result.findings)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("cut", [0, 1, 3, 4, 7, 8, 9, 50, 120])
def test_intake_never_raises_on_truncated_corpus(name: str, cut: int) -> None:
    raw = (SAMPLES / name).read_bytes()
    result = intake(raw[:cut] + raw[cut * 2 :], received_at=NOW, policy=IntakePolicy())
    assert result.ack_code in ("AA", "AE", "AR")
    assert Message.parse(result.ack).get("MSA-1")
