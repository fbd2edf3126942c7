"""A stored message segment by segment with hl7apy's field names (adt_listener.message_view)."""

from __future__ import annotations

import datetime as dt

from adt_listener.message_view import FieldView, field_names, readable, segments
from tests.adt_builder import adt

AT = dt.datetime(2026, 12, 2, 8, 30, tzinfo=dt.UTC)


def test_readable_names() -> None:
    assert readable("PATIENT_IDENTIFIER_LIST") == "Patient identifier list"
    assert readable("SET_ID_PID", "PID") == "Set ID PID"
    assert readable("MOTHER_S_MAIDEN_NAME") == "Mother's maiden name"
    assert readable("SSN_NUMBER_PATIENT") == "SSN number patient"


def test_fields_are_named_for_the_declared_version() -> None:
    view = segments(adt("A01", at=AT, control_id="C1"))
    assert [s.name for s in view] == ["MSH", "EVN", "PID", "PV1", "IN1"]
    msh = {f.n: f for f in view[0].fields}
    assert msh[1] == FieldView(1, "Field separator", "ST", "|")
    assert msh[10].name == "Message control ID" and msh[10].value == "C1"
    pid = {f.n: f for f in view[2].fields}
    assert pid[3].name == "Patient identifier list" and pid[3].datatype == "CX"
    assert pid[3].value.startswith("MRN0001^^^COUNTYGEN^MR")  # as received, still escaped
    assert 2 not in pid  # empty fields are left out
    # v2.1 has no datatype CX for PID-3 and names PV1-3 the same: another version, other definitions
    assert field_names("2.1", "PV1")[3] == ("Assigned patient location", "ID")


def test_unknown_segments_and_versions() -> None:
    raw = adt("A01", at=AT).replace(b"IN1|", b"ZPI|")
    zpi = segments(raw)[-1]
    assert zpi.name == "ZPI" and all(f.name is None for f in zpi.fields) and zpi.fields
    assert field_names("9.9", "PID")[5][0] == "Patient name"  # hl7apy's default version


def test_a_message_the_reader_cannot_split_is_shown_line_by_line() -> None:
    view = segments(b"HELLO|a|b\rPID|1||X\r")
    assert [(s.name, [(f.n, f.name, f.value) for f in s.fields]) for s in view] == [
        ("HEL", [(1, None, "a"), (2, None, "b")]),
        ("PID", [(1, None, "1"), (3, None, "X")]),
    ]
