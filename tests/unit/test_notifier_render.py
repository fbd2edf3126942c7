"""`notifier.render`: webhook JSON, PHI-free e-mail text, FHIR outbound, delivery ids."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import pytest

from notifier import render
from notifier.config import NotifyConfig, RecipientConfig, config_from_text
from notifier.model import Content, Diagnosis, Encounter, Endpoint, EventKind, Patient, PatientId, Practitioner
from schemas.notification import NotificationV1

NOW = dt.datetime(2026, 3, 4, 18, 30, tzinfo=dt.UTC)
OCCURRED = dt.datetime(2026, 3, 4, 18, 0, tzinfo=dt.UTC)  # 10:00 PST
PST = dt.timezone(dt.timedelta(hours=-8))
PERSON = uuid.UUID("00000000-0000-4000-8000-00000000a001")
CANDIDATE = uuid.UUID("00000000-0000-4000-8000-00000000c001")
N1 = uuid.UUID("5d1e0c2a-0000-4000-8000-000000000001")
N2 = uuid.UUID("9a7b3f10-0000-4000-8000-000000000002")
N3 = uuid.UUID("c3d4e5f6-0000-4000-8000-000000000003")
ALL_KINDS: tuple[EventKind, ...] = ("admit", "discharge", "transfer", "admit_discharge", "candidate", "enrolled")

CFG: NotifyConfig = config_from_text("""
version: "render-test-1"
timezone: America/Los_Angeles
sender: "urn:wpc:test:notifier"
portal_url: "https://wpc.example.org/care-team"
part2: {sud_code_prefixes: [F10, F11]}
care_teams:
  - {id: toc-metro, name: TOC, programs: [TOC, ISR, SUD-ENS],
     endpoints: [{name: email, channel: email, to: [toc@example.org]},
                 {name: webhook, channel: webhook, url: "https://care.example.org/hooks", secret_env: S},
                 {name: fhir, channel: fhir, url: "https://fhir.example.org/r4"}]}
""")
TEAM: RecipientConfig = CFG.care_teams[0]
EMAIL = Endpoint(name="email", kind="email", to=("toc@example.org",))
WEBHOOK = Endpoint(name="webhook", kind="webhook", url="https://care.example.org/hooks", secret="k")
FHIR = Endpoint(name="fhir", kind="fhir", url="https://fhir.example.org/r4")

# Every value is made up, and distinctive enough that finding it in a text is no accident.
FAMILY, GIVEN = "QUINTANILLA", "MARISOL"
BIRTH = dt.date(1971, 5, 2)
MRNS = ("MRN-784512", "X99-4411")
MEDI_CAL = "91234567A"
FACILITY = "STMARYMED"
VISIT = "V2025-0042"
DX = ("I50.23", "F11.20", "Z59.01")
PCP_NAME, PCP_NPI = "OKAFORIDU", "1234567893"
REASON = "3 inpatient admissions in 6 months; homelessness"

PATIENT = Patient(
    ids=(PatientId(MRNS[0], "STMARYMED", "MR"), PatientId(MRNS[1], None, None)),
    medi_cal_id=MEDI_CAL,
    family=FAMILY,
    given=GIVEN,
    birth_date=BIRTH,
    sex="F",
)
ENCOUNTER = Encounter(
    facility=FACILITY,
    visit_number=VISIT,
    patient_class="I",
    location="ICU7",
    hospital_service="MED",
    admit_time=dt.datetime(2026, 3, 1, 8, 15, tzinfo=PST),
    discharge_time=None,
    diagnoses=tuple(Diagnosis(code, "I10", f"description of {code}") for code in DX),
)


def content(event: EventKind = "admit", **changes: Any) -> Content:
    encounter = ENCOUNTER
    if event in ("discharge", "admit_discharge"):
        encounter = dataclasses.replace(
            encounter, discharge_time=dt.datetime(2026, 3, 4, 9, 45, tzinfo=PST), discharge_disposition="01"
        )
    base = Content(
        event=event,
        occurred_at=OCCURRED,
        patient=PATIENT,
        person_id=PERSON,
        program="TOC",
        candidate_id=CANDIDATE if event in ("candidate", "enrolled") else None,
        encounter=encounter,
        pcp=Practitioner(PCP_NPI, PCP_NAME, "CHIDI"),
        reason=REASON if event == "candidate" else None,
    )
    return dataclasses.replace(base, **changes)


def nulls(node: Any, path: str = "$") -> list[str]:
    if node is None:
        return [path]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in nulls(v, f"{path}[{i}]")]
    return []


# --- webhook --------------------------------------------------------------------------------


def test_webhook_single_notice() -> None:
    delivery = render.delivery_id("toc-metro", "webhook", [N1])
    out = render.outbound(delivery, TEAM, WEBHOOK, [(N1, content("admit"))], CFG, NOW)
    assert out.delivery_id == delivery
    assert out.idempotency_key == str(delivery)
    assert out.content_type == "application/json"
    assert out.endpoint == WEBHOOK
    assert out.subject == f"WPC notification {str(delivery)[:8]}"
    model = NotificationV1.model_validate_json(out.body)
    assert model.delivery_id == delivery
    assert model.recipient_id == "toc-metro"
    assert model.digest is False
    [notice] = model.notices
    assert notice.notice_id == N1
    assert notice.event == "admit"
    assert notice.program == "TOC"
    assert notice.patient.family == FAMILY
    assert notice.patient.birth_date == BIRTH
    assert [i.value for i in notice.patient.ids] == list(MRNS)
    assert notice.encounter is not None
    assert [d.code for d in notice.encounter.diagnoses] == list(DX)
    assert notice.encounter.admit_time == dt.datetime(2026, 3, 1, 16, 15, tzinfo=dt.UTC)
    doc = json.loads(out.body)
    assert doc["schema_name"] == "wpc.notification" and doc["schema_version"] == 1
    assert nulls(doc) == []
    assert "reason" not in doc["notices"][0]  # None fields are left out, not sent as null
    assert "discharge_time" not in doc["notices"][0]["encounter"]


def test_webhook_digest_of_several_notices() -> None:
    notices = [(N1, content("admit")), (N2, content("discharge")), (N3, content("candidate"))]
    delivery = render.delivery_id("toc-metro", "webhook", [n for n, _ in notices])
    body = render.webhook_body(delivery, "toc-metro", notices)
    model = NotificationV1.model_validate_json(body)
    assert model.digest is True
    assert [n.notice_id for n in model.notices] == [N1, N2, N3]
    assert [n.event for n in model.notices] == ["admit", "discharge", "candidate"]
    assert model.notices[2].reason == REASON
    assert model.notices[2].candidate_id == CANDIDATE
    assert nulls(json.loads(body)) == []


def test_webhook_carries_what_was_withheld() -> None:
    redacted = content(
        "admit",
        program=None,
        withheld=("sud_diagnoses", "program"),
        encounter=dataclasses.replace(ENCOUNTER, diagnoses=(Diagnosis("I50.23", "I10"),)),
    )
    doc = json.loads(render.webhook_body(uuid.uuid4(), "toc-metro", [(N1, redacted)]))
    notice = doc["notices"][0]
    assert notice["withheld"] == ["sud_diagnoses", "program"]
    assert "program" not in notice
    assert [d["code"] for d in notice["encounter"]["diagnoses"]] == ["I50.23"]
    assert "F11" not in json.dumps(doc)


def test_webhook_minimal_content_has_no_nulls() -> None:
    bare = Content(event="enrolled", occurred_at=OCCURRED, patient=Patient(ids=(PatientId("M1"),)))
    doc = json.loads(render.webhook_body(uuid.uuid4(), "toc-metro", [(N1, bare)]))
    assert nulls(doc) == []
    assert doc["notices"][0] == {
        "notice_id": str(N1),
        "event": "enrolled",
        "occurred_at": "2026-03-04T18:00:00Z",
        "patient": {"ids": [{"value": "M1"}]},
        "withheld": [],
    }


# --- e-mail ---------------------------------------------------------------------------------

PHI = [
    FAMILY,
    GIVEN,
    *MRNS,
    MEDI_CAL,
    FACILITY,
    VISIT,
    "ICU7",
    PCP_NAME,
    PCP_NPI,
    REASON,
    "homeless",
    "1971-05-02",
    "19710502",
    "05/02/1971",
    "5/2/1971",
    "1971",
    *DX,
    *(code.replace(".", "") for code in DX),
    "description of",
]


def _assert_no_phi(*texts: str) -> None:
    for text in texts:
        for value in PHI:
            assert value.lower() not in text.lower(), f"{value!r} in {text!r}"


@pytest.mark.parametrize("event", ALL_KINDS)
def test_email_single_notice_has_no_phi(event: EventKind) -> None:
    c = content(event)
    delivery = render.delivery_id("toc-metro", "email", [N1])
    out = render.outbound(delivery, TEAM, EMAIL, [(N1, c)], CFG, NOW)
    assert out.content_type == "text/plain; charset=utf-8"
    body = out.body.decode()
    _assert_no_phi(out.subject, body)
    word = {
        "admit": "admission",
        "discharge": "discharge",
        "transfer": "transfer",
        "admit_discharge": "admission and discharge",
        "candidate": "new enrollment candidate",
        "enrolled": "enrollment",
    }[event]
    assert out.subject == f"WPC: {word} (TOC), ref 5d1e0c2a"
    assert f"- {word} - TOC, reference 5d1e0c2a\n" in body
    assert "https://wpc.example.org/care-team" in body
    assert out.idempotency_key == str(delivery)


def test_email_digest_has_no_phi_and_lists_every_reference() -> None:
    notices = [(N1, content("admit")), (N2, content("admit_discharge", program=None)), (N3, content("candidate"))]
    subject, body = render.email_text(notices, CFG)
    _assert_no_phi(subject, body)
    assert subject == "WPC: 3 notifications"
    assert body.splitlines()[2:5] == [
        "- admission - TOC, reference 5d1e0c2a",
        "- admission and discharge, reference 9a7b3f10",
        "- new enrollment candidate - TOC, reference c3d4e5f6",
    ]
    assert "Open the details (login required): https://wpc.example.org/care-team" in body


def test_email_without_program_when_withheld() -> None:
    subject, body = render.email_text([(N1, content("enrolled", program=None, withheld=("program",)))], CFG)
    assert subject == "WPC: enrollment, ref 5d1e0c2a"
    assert "SUD" not in subject + body
    assert "TOC" not in subject + body


def test_email_carries_no_event_time() -> None:
    summer = content("discharge", occurred_at=dt.datetime(2026, 7, 1, 15, 5, tzinfo=dt.UTC))
    subject, body = render.email_text([(N1, summer)], CFG)
    assert "- discharge - TOC, reference 5d1e0c2a" in body
    for text in (subject, body):
        assert "2026" not in text and "08:05" not in text and "15:05" not in text


# --- delivery ids ---------------------------------------------------------------------------


def test_delivery_id_is_order_independent_and_per_endpoint() -> None:
    one = render.delivery_id("toc-metro", "email", [N1, N2, N3])
    assert one == render.delivery_id("toc-metro", "email", [N3, N1, N2])
    assert one == render.delivery_id("toc-metro", "email", (N2, N3, N1))
    assert one != render.delivery_id("toc-metro", "webhook", [N1, N2, N3])
    assert one != render.delivery_id("isr-county", "email", [N1, N2, N3])
    assert one != render.delivery_id("toc-metro", "email", [N1, N2])
    assert render.delivery_id("toc-metro", "email", [N1]) != render.delivery_id("toc-metro", "email", [N2])
    assert one.version == 5
    assert one == uuid.uuid5(render.DELIVERY_NAMESPACE, f"toc-metro\x1femail\x1f{N1},{N2},{N3}")


# --- content JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_KINDS)
def test_content_json_round_trip(event: EventKind) -> None:
    c = content(event, withheld=("sud_diagnoses",))
    data = render.content_to_json(c)
    assert data["event"] == event
    assert data["patient"]["birth_date"] == "1971-05-02"
    assert data["withheld"] == ["sud_diagnoses"]
    # As the store keeps it: JSON text in a jsonb column.
    back = render.content_from_json(json.loads(json.dumps(data)))
    assert back == c
    assert isinstance(back.patient.ids, tuple) and isinstance(back.withheld, tuple)
    assert back.encounter is not None and isinstance(back.encounter.diagnoses, tuple)
    assert back.encounter.admit_time == ENCOUNTER.admit_time
    assert back.encounter.admit_time is not None and back.encounter.admit_time.utcoffset() == dt.timedelta(hours=-8)


def test_content_json_round_trip_minimal() -> None:
    bare = Content(event="candidate", occurred_at=OCCURRED, patient=Patient(ids=()))
    assert render.content_from_json(json.loads(json.dumps(render.content_to_json(bare)))) == bare


def test_content_from_json_rejects_an_unknown_event() -> None:
    data = render.content_to_json(content("admit"))
    data["event"] = "readmit"
    with pytest.raises(ValueError, match="event"):
        render.content_from_json(data)


# --- FHIR -----------------------------------------------------------------------------------


def test_fhir_outbound_with_two_notices_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="exactly one notice"):
        render.outbound(uuid.uuid4(), TEAM, FHIR, [(N1, content("admit")), (N2, content("discharge"))], CFG, NOW)


def test_fhir_outbound_one_notice() -> None:
    delivery = render.delivery_id("toc-metro", "fhir", [N1])
    out = render.outbound(delivery, TEAM, FHIR, [(N1, content("admit"))], CFG, NOW)
    assert out.content_type == "application/fhir+json"
    assert out.idempotency_key == str(delivery)
    assert out.subject == f"WPC notification {str(delivery)[:8]}"
    _assert_no_phi(out.subject)
    bundle = json.loads(out.body)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "message"
    assert bundle["identifier"]["value"] == str(delivery)
    header = bundle["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "notification-admit"
    # Rendering again gives the very same bytes: a re-send is the same document.
    assert render.outbound(delivery, TEAM, FHIR, [(N1, content("admit"))], CFG, NOW).body == out.body
