"""Da Vinci Unsolicited Notifications (HL7 FHIR R4) message bundles: a pure builder, no I/O.

Reference: http://hl7.org/fhir/us/davinci-alerts/ (STU 1.1). What we send, per profile:

- Bundle (Notifications Bundle profile): type ``message``, an id, a timestamp; first entry the
  MessageHeader, then the resource in MessageHeader.focus and everything it references.
  All references point inside the bundle (``urn:uuid:`` fullUrls): the IG forbids logical
  (identifier-only) references for sender, responsible, focus and Encounter.subject.
- MessageHeader (Notifications MessageHeader + the event's own profile): eventCoding from the
  IG's ``notification-event`` code system, source, destination, sender and responsible (our
  Organization), focus = the Encounter, reason (optional, free text).
- Encounter (ADT Notification Encounter): status, class (v3 ActCode), period, subject,
  serviceProvider, diagnosis, hospitalization.dischargeDisposition, the visit identifier.
- Patient, Organization (the facility and us), Practitioner (the PCP, as
  Patient.generalPractitioner) and one Condition per diagnosis (ADT Notification Condition:
  Condition.encounter is mandatory).

Only encounter events have a bundle: ``candidate`` and ``enrolled`` notices are about our
enrollment decisions, not about an encounter, have no event code in the IG and go by webhook
or e-mail only; asking for their bundle is a ValueError.

Determinism: every id is a uuid5 of ``bundle_id`` (the Outbound's idempotency key) and the
resource's role, and `bundle_bytes` writes compact, sorted-key JSON. The same Content, key
and time always give the same bytes, so a re-render after a crash sends the very document
(same Bundle.id, same MessageHeader.id) the receiver may already have processed.

Identifier systems of our own are URNs with the value percent-encoded where RFC 8141 would
not allow it (``urn:wpc:authority:{authority}``, ``urn:wpc:facility``,
``urn:wpc:facility:{facility}:visit``, ``urn:wpc:medi-cal``, ``urn:wpc:provider``).

Times: FHIR dateTime values with a time SHALL carry a zone (R4 §2.24.0.1 dateTime). HL7 v2
times often have none; those are read in ``naive_tz`` (UTC unless the caller knows the feed's
zone) rather than sent without an offset.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any
from urllib.parse import quote

from notifier.model import Content, Diagnosis, Encounter, EventKind, Patient, Practitioner

content_type = "application/fhir+json"

Json = dict[str, Any]

_IG = "http://hl7.org/fhir/us/davinci-alerts"
_PROFILES = f"{_IG}/StructureDefinition"
EVENT_SYSTEM = f"{_IG}/CodeSystem/notification-event"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NPI = "http://hl7.org/fhir/sid/us-npi"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type (PID-3.5)
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_ENCOUNTER_DIAGNOSIS = {"system": _CONDITION_CATEGORY, "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}
_KEY_SYSTEM = "urn:wpc:notifier:idempotency-key"
SOFTWARE = "wpc-notifier"

# EventKind → (IG event code, display, event-specific MessageHeader profile). An admit and its
# discharge bundled into one notice is reported as the discharge: the encounter is finished,
# and the Encounter resource still carries the admission time in period.start.
_EVENTS: dict[str, tuple[str, str, str]] = {
    "admit": ("notification-admit", "Admit Notification", "admit-notification-messageheader"),
    "discharge": ("notification-discharge", "Discharge Notification", "discharge-notification-messageheader"),
    "transfer": ("notification-transfer", "Transfer Notification", "transfer-notification-messageheader"),
    "admit_discharge": (
        "notification-discharge",
        "Discharge Notification",
        "discharge-notification-messageheader",
    ),
}
_FINISHING_EVENTS = frozenset({"discharge", "admit_discharge"})

# PV1-2 patient class (HL7 v2 table 0004) → v3 ActCode, as the US Core Encounter class binding
# expects. Other classes (P preadmit, R recurring, B obstetrics, ...) have no one-to-one
# ActCode: they are sent as they came, with no system, rather than guessed.
_CLASS: dict[str, tuple[str, str]] = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
}
_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown"}  # PID-8 → AdministrativeGender
_ICD10CM_NAMES = frozenset({"I10", "ICD10", "ICD10CM", "I10C"})  # DG1-3.3 spellings seen in feeds

# uuid5 namespace of every id in our bundles (itself a uuid5 of a URN we own).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:wpc:notifier:fhir-bundle")


def notification_bundle(
    content: Content,
    *,
    bundle_id: str,
    sender: str,
    recipient_id: str,
    recipient_endpoint: str,
    now: dt.datetime,
    source_endpoint: str | None = None,
    naive_tz: dt.tzinfo = dt.UTC,
) -> Json:
    """The message Bundle telling ``recipient_id`` (at ``recipient_endpoint``) about ``content``.

    ``bundle_id`` is the idempotency key; ``sender`` names us, usually as a URI such as
    ``urn:wpc:la-county:notifier``: it becomes the sender / responsible Organization and, unless
    ``source_endpoint`` is given, MessageHeader.source.endpoint. ``now`` is Bundle.timestamp.
    ValueError for candidate / enrolled notices and for a notice without an encounter.
    """
    if content.event not in _EVENTS:
        raise ValueError(f"{content.event} notices have no Da Vinci bundle: send them by webhook or e-mail")
    if content.encounter is None:
        raise ValueError(f"a {content.event} notification needs an encounter")
    if not recipient_endpoint:
        raise ValueError("MessageHeader.destination.endpoint is required")
    encounter = content.encounter

    def url(role: str) -> str:
        return f"urn:uuid:{_uid(bundle_id, role)}"

    header_url, encounter_url, patient_url = url("MessageHeader"), url("Encounter"), url("Patient")
    facility_url, sender_url = url("Organization/facility"), url("Organization/sender")
    pcp = content.pcp
    if pcp is not None and not (pcp.id or pcp.family or pcp.given):
        pcp = None  # an empty PD1-4: nobody to point Patient.generalPractitioner at
    pcp_url = url("Practitioner/pcp") if pcp is not None else None
    condition_urls = [url(f"Condition/{i}") for i in range(len(encounter.diagnoses))]

    code, display, profile = _EVENTS[content.event]
    header: Json = {
        "resourceType": "MessageHeader",
        "meta": {"profile": [f"{_PROFILES}/notifications-messageheader", f"{_PROFILES}/{profile}"]},
        "eventCoding": {"system": EVENT_SYSTEM, "code": code, "display": display},
        "destination": [{"name": recipient_id, "endpoint": recipient_endpoint}],
        "sender": {"reference": sender_url, "display": sender},
        "source": {"name": SOFTWARE, "software": SOFTWARE, "endpoint": source_endpoint or sender},
        "responsible": {"reference": sender_url, "display": sender},
        "focus": [{"reference": encounter_url}],
    }
    if content.reason:
        header["reason"] = {"text": content.reason}

    resources: list[tuple[str, Json]] = [
        (header_url, header),
        (encounter_url, _encounter(content.event, encounter, patient_url, facility_url, condition_urls, naive_tz)),
        (patient_url, _patient(content.patient, pcp_url)),
        (facility_url, _facility(encounter.facility)),
        (sender_url, _sender(sender)),
    ]
    if pcp is not None and pcp_url is not None:
        resources.append((pcp_url, _practitioner(pcp)))
    for condition_url, diagnosis in zip(condition_urls, encounter.diagnoses, strict=True):
        resources.append((condition_url, _condition(diagnosis, patient_url, encounter_url)))

    entries = []
    for full_url, resource in resources:
        resource["id"] = full_url.removeprefix("urn:uuid:")
        entries.append({"fullUrl": full_url, "resource": resource})
    return {
        "resourceType": "Bundle",
        "id": _uid(bundle_id, "Bundle"),
        "meta": {"profile": [f"{_PROFILES}/notifications-bundle"]},
        # The key itself, so a receiver can match the bundle to our Idempotency-Key header.
        "identifier": {"system": _KEY_SYSTEM, "value": bundle_id},
        "type": "message",
        "timestamp": _datetime(now, naive_tz),
        "entry": entries,
    }


def bundle_bytes(bundle: Json) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the same bundle always gives the same bytes."""
    return json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _encounter(
    event: EventKind,
    encounter: Encounter,
    patient_url: str,
    facility_url: str,
    condition_urls: list[str],
    naive_tz: dt.tzinfo,
) -> Json:
    finished = encounter.discharge_time is not None or event in _FINISHING_EVENTS
    resource: Json = {
        "resourceType": "Encounter",
        "status": "finished" if finished else "in-progress",
        "class": _encounter_class(encounter.patient_class),
        "subject": {"reference": patient_url},
        "serviceProvider": {"reference": facility_url},
    }
    if encounter.visit_number:
        resource["identifier"] = [
            {"system": f"urn:wpc:facility:{_nss(encounter.facility)}:visit", "value": encounter.visit_number}
        ]
    period: Json = {}
    if encounter.admit_time is not None:
        period["start"] = _datetime(encounter.admit_time, naive_tz)
    if encounter.discharge_time is not None:
        period["end"] = _datetime(encounter.discharge_time, naive_tz)
    if period:
        resource["period"] = period
    if condition_urls:
        resource["diagnosis"] = [
            {"condition": {"reference": condition_url}, "rank": rank}
            for rank, condition_url in enumerate(condition_urls, start=1)
        ]
    if encounter.discharge_disposition:
        # PV1-36 uses table 0112, which is user-defined: each hospital has its own, so no
        # code system is claimed for the code.
        resource["hospitalization"] = {"dischargeDisposition": {"coding": [{"code": encounter.discharge_disposition}]}}
    return resource


def _encounter_class(patient_class: str | None) -> Json:
    if not patient_class:
        # Encounter.class is 1..1 in R4: say that it is unknown rather than leave it out.
        return {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"}
    mapped = _CLASS.get(patient_class.strip().upper())
    if mapped is None:
        return {"code": patient_class}
    return {"system": ACT_CODE, "code": mapped[0], "display": mapped[1]}


def _patient(patient: Patient, pcp_url: str | None) -> Json:
    identifiers: list[Json] = []
    for pid in patient.ids:
        identifier: Json = {"value": pid.value}
        if pid.authority:
            identifier["system"] = f"urn:wpc:authority:{_nss(pid.authority)}"
        if pid.type_code:
            identifier["type"] = {"coding": [{"system": _V2_0203, "code": pid.type_code}]}
        identifiers.append(identifier)
    if patient.medi_cal_id:
        identifiers.append({"system": "urn:wpc:medi-cal", "value": patient.medi_cal_id})
    resource: Json = {"resourceType": "Patient", "identifier": identifiers}
    # Demographics only where the source carried them and minimum-necessary kept them.
    name: Json = {}
    if patient.family:
        name["family"] = patient.family
    if patient.given:
        name["given"] = [patient.given]
    if name:
        resource["name"] = [name]
    if patient.birth_date is not None:
        resource["birthDate"] = patient.birth_date.isoformat()
    gender = _GENDER.get((patient.sex or "").strip().upper())
    if gender is not None:
        resource["gender"] = gender
    if pcp_url is not None:
        resource["generalPractitioner"] = [{"reference": pcp_url}]
    return resource


def _practitioner(pcp: Practitioner) -> Json:
    resource: Json = {"resourceType": "Practitioner"}
    if pcp.id:
        # An NPI is exactly ten digits (45 CFR 162.406); anything else is a local provider id.
        is_npi = len(pcp.id) == 10 and pcp.id.isascii() and pcp.id.isdigit()
        resource["identifier"] = [{"system": NPI if is_npi else "urn:wpc:provider", "value": pcp.id}]
    name: Json = {}
    if pcp.family:
        name["family"] = pcp.family
    if pcp.given:
        name["given"] = [pcp.given]
    if name:
        resource["name"] = [name]
    return resource


def _facility(facility: str) -> Json:
    # MSH-4 is a code, not a name; it is the best label we have for Organization.name.
    return {
        "resourceType": "Organization",
        "identifier": [{"system": "urn:wpc:facility", "value": facility}],
        "name": facility,
    }


def _sender(sender: str) -> Json:
    organization: Json = {"resourceType": "Organization", "name": sender}
    if ":" in sender:
        # A URI names us: say so with the RFC 3986 identifier system, as FHIR does for URIs.
        organization["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": sender}]
    return organization


def _condition(diagnosis: Diagnosis, patient_url: str, encounter_url: str) -> Json:
    coding: Json = {}
    code = diagnosis.code.strip()
    system = (diagnosis.system or "").replace("-", "").replace(" ", "").upper()
    if system in _ICD10CM_NAMES:
        coding["system"] = ICD10CM
        code = _icd10cm_dotted(code)
    coding["code"] = code
    concept: Json = {"coding": [coding]}
    if diagnosis.description:
        # The feed's own wording goes to text, not coding.display (which would claim it is the
        # code system's display).
        concept["text"] = diagnosis.description
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": _CONDITION_CLINICAL, "code": "active"}]},
        "category": [{"coding": [dict(_ENCOUNTER_DIAGNOSIS)]}],  # a copy: callers may edit the bundle
        "code": concept,
        "subject": {"reference": patient_url},
        "encounter": {"reference": encounter_url},
    }


def _icd10cm_dotted(code: str) -> str:
    """``F209`` → ``F20.9``: HL7 v2 feeds often drop the dot, the FHIR code system has it."""
    if "." in code or len(code) <= 3 or not code.isascii() or not code.isalnum():
        return code
    return f"{code[:3]}.{code[3:]}"


def _datetime(value: dt.datetime, naive_tz: dt.tzinfo) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=naive_tz)
    return value.isoformat()


def _uid(bundle_id: str, role: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{bundle_id}|{role}"))


def _nss(value: str) -> str:
    # RFC 8141 NSS characters stay as they are; spaces, '#', '?', '%' and non-ASCII are escaped.
    return quote(value, safe="-._~!$&'()*+,;=:@/")
