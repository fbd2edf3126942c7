"""`fhir_bundle.notification_bundle`: Da Vinci notification bundles, checked field by field."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from notifier.fhir_bundle import bundle_bytes, content_type, notification_bundle
from notifier.model import Content, Diagnosis, Encounter, EventKind, Patient, PatientId, Practitioner

IG = "http://hl7.org/fhir/us/davinci-alerts"
NOW = dt.datetime(2025, 3, 4, 18, 30, 5, tzinfo=dt.UTC)
ADMIT = dt.datetime(2025, 3, 1, 8, 15, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
DISCHARGE = dt.datetime(2025, 3, 4, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
KEY = "notice-7d1e0c2a.fhir"

PATIENT = Patient(
    ids=(PatientId("MRN001", authority="STMARY", type_code="MR"), PatientId("X-9", authority=None)),
    medi_cal_id="91234567A",
    family="RIVERA",
    given="ANA",
    birth_date=dt.date(1971, 5, 2),
    sex="F",
)
ENCOUNTER = Encounter(
    facility="STMARY",
    visit_number="V2025-0042",
    patient_class="I",
    location="4W",
    hospital_service="MED",
    admit_time=ADMIT,
    discharge_time=None,
    discharge_disposition=None,
    diagnoses=(
        Diagnosis("I5023", system="I10", description="Acute on chronic systolic heart failure"),
        Diagnosis("Z59.01", system="ICD-10-CM"),
        Diagnosis("LOCAL7", system="99LOCAL", description="local code"),
    ),
)
PCP = Practitioner(id="1234567893", family="OKAFOR", given="CHIDI")


def content(event: EventKind = "admit", **changes: Any) -> Content:
    encounter = ENCOUNTER
    if event in ("discharge", "admit_discharge"):
        encounter = dataclasses.replace(encounter, discharge_time=DISCHARGE, discharge_disposition="01")
    encounter = dataclasses.replace(encounter, **changes.pop("encounter", {}))
    base = Content(event=event, occurred_at=NOW, patient=PATIENT, encounter=encounter, pcp=PCP)
    return dataclasses.replace(base, **changes)


def build(c: Content, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "bundle_id": KEY,
        "sender": "urn:wpc:la-county:notifier",
        "recipient_id": "toc-south",
        "recipient_endpoint": "https://fhir.toc-south.example/r4",
        "now": NOW,
    }
    args.update(kwargs)
    return notification_bundle(c, **args)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def one(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    found = resources(bundle, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference":
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def ref(resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": f"urn:uuid:{resource['id']}"}


@pytest.mark.parametrize(
    ("event", "code", "profile", "status", "period"),
    [
        ("admit", "notification-admit", "admit-notification-messageheader", "in-progress", {"start": ADMIT}),
        (
            "discharge",
            "notification-discharge",
            "discharge-notification-messageheader",
            "finished",
            {"start": ADMIT, "end": DISCHARGE},
        ),
        ("transfer", "notification-transfer", "transfer-notification-messageheader", "in-progress", {"start": ADMIT}),
        (
            "admit_discharge",
            "notification-discharge",
            "discharge-notification-messageheader",
            "finished",
            {"start": ADMIT, "end": DISCHARGE},
        ),
    ],
)
def test_event_bundles(event: EventKind, code: str, profile: str, status: str, period: dict[str, dt.datetime]) -> None:
    bundle = build(content(event))

    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "message"
    assert bundle["timestamp"] == "2025-03-04T18:30:05+00:00"
    assert bundle["identifier"] == {"system": "urn:wpc:notifier:idempotency-key", "value": KEY}
    assert bundle["meta"] == {"profile": [f"{IG}/StructureDefinition/notifications-bundle"]}
    uuid.UUID(bundle["id"])

    header = bundle["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["system"] == f"{IG}/CodeSystem/notification-event"
    assert header["eventCoding"]["code"] == code
    assert header["meta"]["profile"] == [
        f"{IG}/StructureDefinition/notifications-messageheader",
        f"{IG}/StructureDefinition/{profile}",
    ]

    encounter = one(bundle, "Encounter")
    assert header["focus"] == [ref(encounter)]
    assert encounter["status"] == status
    assert encounter["period"] == {k: v.isoformat() for k, v in period.items()}
    if status == "finished":
        assert encounter["hospitalization"] == {"dischargeDisposition": {"coding": [{"code": "01"}]}}
    else:
        assert "hospitalization" not in encounter


def test_message_header_fields() -> None:
    bundle = build(content("admit", reason="3 admissions in 6 months"))
    header = bundle["entry"][0]["resource"]
    sender = next(r for r in resources(bundle, "Organization") if r["name"] == "urn:wpc:la-county:notifier")

    assert header["destination"] == [{"name": "toc-south", "endpoint": "https://fhir.toc-south.example/r4"}]
    assert header["source"] == {
        "name": "wpc-notifier",
        "software": "wpc-notifier",
        "endpoint": "urn:wpc:la-county:notifier",
    }
    assert header["sender"] == {**ref(sender), "display": "urn:wpc:la-county:notifier"}
    assert header["responsible"] == header["sender"]
    assert header["reason"] == {"text": "3 admissions in 6 months"}
    assert sender["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": "urn:wpc:la-county:notifier"}]
    assert "reason" not in build(content("admit"))["entry"][0]["resource"]


def test_sender_by_name_and_source_endpoint() -> None:
    bundle = build(content(), sender="LA County WPC", source_endpoint="https://wpc.example/fhir")
    header = bundle["entry"][0]["resource"]
    assert header["source"]["endpoint"] == "https://wpc.example/fhir"
    sender = next(r for r in resources(bundle, "Organization") if r["name"] == "LA County WPC")
    assert "identifier" not in sender
    assert header["sender"] == {**ref(sender), "display": "LA County WPC"}


def test_encounter_fields() -> None:
    bundle = build(content("discharge"))
    encounter = one(bundle, "Encounter")
    patient = one(bundle, "Patient")
    facility = next(r for r in resources(bundle, "Organization") if r["name"] == "STMARY")
    conditions = resources(bundle, "Condition")

    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }
    assert encounter["identifier"] == [{"system": "urn:wpc:facility:STMARY:visit", "value": "V2025-0042"}]
    assert encounter["subject"] == ref(patient)
    assert encounter["serviceProvider"] == ref(facility)
    assert encounter["diagnosis"] == [{"condition": ref(c), "rank": i} for i, c in enumerate(conditions, start=1)]
    assert facility["identifier"] == [{"system": "urn:wpc:facility", "value": "STMARY"}]


def test_patient_fields() -> None:
    bundle = build(content("admit"))
    patient = one(bundle, "Patient")
    practitioner = one(bundle, "Practitioner")

    assert patient["identifier"] == [
        {
            "system": "urn:wpc:authority:STMARY",
            "value": "MRN001",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        },
        {"value": "X-9"},
        {"system": "urn:wpc:medi-cal", "value": "91234567A"},
    ]
    assert patient["name"] == [{"family": "RIVERA", "given": ["ANA"]}]
    assert patient["birthDate"] == "1971-05-02"
    assert patient["gender"] == "female"
    assert patient["generalPractitioner"] == [ref(practitioner)]
    assert practitioner["identifier"] == [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]
    assert practitioner["name"] == [{"family": "OKAFOR", "given": ["CHIDI"]}]


def test_conditions() -> None:
    bundle = build(content("admit"))
    patient, encounter = one(bundle, "Patient"), one(bundle, "Encounter")
    conditions = resources(bundle, "Condition")

    assert [c["code"] for c in conditions] == [
        {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I50.23"}],
            "text": "Acute on chronic systolic heart failure",
        },
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "Z59.01"}]},
        {"coding": [{"code": "LOCAL7"}], "text": "local code"},
    ]
    for condition in conditions:
        assert condition["subject"] == ref(patient)
        assert condition["encounter"] == ref(encounter)
        assert condition["clinicalStatus"] == {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        }
        assert condition["category"] == [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ]


@pytest.mark.parametrize("system", ["I10", "ICD10", "ICD10CM", "I10C", "i10", "ICD-10-CM"])
def test_icd10cm_system_names(system: str) -> None:
    bundle = build(content(encounter={"diagnoses": (Diagnosis("F209", system=system),)}))
    assert one(bundle, "Condition")["code"] == {
        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F20.9"}]
    }


def test_entries_and_references() -> None:
    bundle = build(content("discharge"))
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]

    assert kinds == [
        "MessageHeader",
        "Encounter",
        "Patient",
        "Organization",
        "Organization",
        "Practitioner",
        "Condition",
        "Condition",
        "Condition",
    ]
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
        assert uuid.UUID(entry["resource"]["id"]).version == 5
    assert len(set(full_urls)) == len(full_urls)
    assert set(references(bundle)) <= set(full_urls)  # every reference resolves inside the bundle
    assert bundle["id"] != bundle["entry"][0]["resource"]["id"]


def test_same_content_same_bytes() -> None:
    first = bundle_bytes(build(content("discharge")))
    # Equal values, built separately: nothing depends on object identity, dict order or randomness.
    again = bundle_bytes(build(dataclasses.replace(content("discharge"))))
    assert first == again
    assert json.loads(first) == build(content("discharge"))
    canonical = json.dumps(json.loads(first), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first == canonical.encode()  # compact, keys sorted at every level


def test_ids_follow_the_key() -> None:
    a, b = build(content()), build(content(), bundle_id="notice-other.fhir")
    assert a["id"] != b["id"]
    assert a["entry"][0]["resource"]["id"] != b["entry"][0]["resource"]["id"]
    assert a["entry"][0]["resource"]["id"] == build(content("discharge"))["entry"][0]["resource"]["id"]


def test_no_condition_without_diagnoses() -> None:
    bundle = build(content("admit", encounter={"diagnoses": ()}))
    assert resources(bundle, "Condition") == []
    assert "diagnosis" not in one(bundle, "Encounter")


@pytest.mark.parametrize("event", ["candidate", "enrolled"])
def test_enrollment_notices_have_no_bundle(event: EventKind) -> None:
    with pytest.raises(ValueError, match="webhook or e-mail"):
        build(content(event))


def test_encounter_required() -> None:
    with pytest.raises(ValueError, match="needs an encounter"):
        build(Content(event="admit", occurred_at=NOW, patient=PATIENT))


@pytest.mark.parametrize(
    ("patient_class", "expected"),
    [
        ("E", {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER", "display": "emergency"}),
        ("O", {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"}),
        ("P", {"code": "P"}),
        ("R", {"code": "R"}),
        (None, {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"}),
    ],
)
def test_encounter_class(patient_class: str | None, expected: dict[str, str]) -> None:
    bundle = build(content(encounter={"patient_class": patient_class}))
    assert one(bundle, "Encounter")["class"] == expected


@pytest.mark.parametrize(
    ("sex", "gender"),
    [
        ("M", "male"),
        ("F", "female"),
        ("f", "female"),
        ("O", "other"),
        ("U", "unknown"),
        ("A", None),
        ("X", None),
        (None, None),
    ],
)
def test_gender(sex: str | None, gender: str | None) -> None:
    patient = one(build(content(patient=dataclasses.replace(PATIENT, sex=sex))), "Patient")
    assert patient.get("gender") == gender


def test_minimal_patient_and_no_pcp() -> None:
    bare = Patient(ids=(PatientId("MRN001", authority="St Mary #2"),))
    bundle = build(content(patient=bare, pcp=None))
    patient = one(bundle, "Patient")
    assert patient == {
        "resourceType": "Patient",
        "id": patient["id"],
        "identifier": [{"system": "urn:wpc:authority:St%20Mary%20%232", "value": "MRN001"}],
    }
    assert resources(bundle, "Practitioner") == []


def test_local_provider_id_and_empty_pcp() -> None:
    bundle = build(content(pcp=Practitioner(id="D4471")))
    assert one(bundle, "Practitioner") == {
        "resourceType": "Practitioner",
        "id": one(bundle, "Practitioner")["id"],
        "identifier": [{"system": "urn:wpc:provider", "value": "D4471"}],
    }
    empty = build(content(pcp=Practitioner()))
    assert resources(empty, "Practitioner") == []
    assert "generalPractitioner" not in one(empty, "Patient")


def test_naive_times_get_a_zone() -> None:
    naive = dt.datetime(2025, 3, 1, 8, 15)
    c = content(encounter={"admit_time": naive})
    assert one(build(c), "Encounter")["period"] == {"start": "2025-03-01T08:15:00+00:00"}
    la = one(build(c, naive_tz=ZoneInfo("America/Los_Angeles")), "Encounter")
    assert la["period"] == {"start": "2025-03-01T08:15:00-08:00"}


def test_no_visit_number_no_identifier() -> None:
    encounter = one(build(content(encounter={"visit_number": None, "admit_time": None})), "Encounter")
    assert "identifier" not in encounter
    assert "period" not in encounter


def test_content_type() -> None:
    assert content_type == "application/fhir+json"
