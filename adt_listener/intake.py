"""The intake decision: raw bytes of one message → accept / error / reject, ACK, event.

Pure (no I/O, no clock, no randomness except the uuid4 ids): the MLLP and HTTP
drivers store ``Intake.raw`` under ``message_id``, publish ``event`` and send ``ack``
when ``send_ack``. `intake` never raises, whatever the bytes. ``content_digest``
(`adt_listener.digest`) is what tells a retransmission from a different message under
a reused control id; the store deduplicates on it.

Decision table (HL7 v2 chapter 2.9: AR "rejected" for what the envelope makes
unprocessable, AE "error" for a readable message whose content we cannot use; codes
from HL7 table 0357). All checks of one level are reported together:

====  =========================================================  ====  ==========
ack   condition                                                  code  location
====  =========================================================  ====  ==========
AR    first segment is not MSH                                   100   MSH
AR    MSH-1 / MSH-2 delimiters unusable (chapter 2, MSH-2)       102   MSH-1/MSH-2
AR    MSH-9.1 message type missing                               101   MSH-9
AR    MSH-9.1 is not ADT (this listener takes chapter 3 ADT)     200   MSH-9
AR    MSH-10 control id missing or blank (no MSA-2 possible)     101   MSH-10
AR    MSH-11.1 processing id not in policy (table 0103)          202   MSH-11
AR    MSH-12.1 version missing                                   203   MSH-12
AR    MSH-12.1 not 2.1 … 2.8.2 (table 0104)                      203   MSH-12
AE    MSH-9.2 trigger missing or not an ADT event A01–A62        201   MSH-9
AE    no PID segment                                             100   PID
AE    PID-3 without a repetition whose CX-1 is a real id         101   PID-3
AE    no PV1 for a visit event (A01–A07, A11–A13)                100   PV1
W     PID-8 not in table 0001 (A F M N O U)                      103   PID-8
W     PV1-2 not in table 0004 (B C E I N O P R U)                103   PV1-2
W     unreadable timestamp in a field we normalize               102   that field
AA    otherwise: ``event`` is built by `normalize`
====  =========================================================  ====  ==========

Warnings never change the decision: a PID-8 of "female" is a real feed's habit, and
dropping an admission over a field the programs do not use would cost a referral.
A08 and person-level events (A28, A31, A40, A34, A47, ...) may come without PV1.

In enhanced mode (MSH-15 non-empty) the ACK carries CA/CE/CR and ``send_ack`` follows
MSH-15 (see `adt_listener.ack`); ``ack_code`` stays in original-mode terms.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from adt_listener.ack import AckHeader, Finding, build_ack, salvage_header, should_send
from adt_listener.digest import content_digest
from adt_listener.er7 import Message, Segment
from adt_listener.errors import Er7Error
from adt_listener.normalize import normalize, patient_key, sending_facility, timestamp_findings
from schemas.adt_event import AdtEventV1, event_id_for

__all__ = ["Finding", "Intake", "IntakePolicy", "intake", "internal_error_ack", "with_rejection"]

SUPPORTED_VERSIONS = frozenset(
    {"2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)
_ADT_TRIGGER = re.compile(r"A(0[1-9]|[1-5]\d|6[0-2])")
# Events about a stay (chapter 3.3): they must say which visit (PV1).
VISIT_EVENTS = frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A11", "A12", "A13"})
TABLE_0001_SEX = frozenset({"A", "F", "M", "N", "O", "U"})
TABLE_0004_PATIENT_CLASS = frozenset({"B", "C", "E", "I", "N", "O", "P", "R", "U"})


@dataclass(frozen=True)
class IntakePolicy:
    accepted_processing_ids: frozenset[str] = frozenset({"P", "T", "D"})
    medi_cal_authorities: frozenset[str] = frozenset(
        {"MEDI-CAL", "MEDICAL", "MEDICAID", "CA-MEDICAID", "CADHCS"}
    )
    receiving_application: str = "WPC"
    receiving_facility: str = "WPC"


@dataclass(frozen=True)
class Intake:
    raw: bytes
    ack_code: Literal["AA", "AE", "AR"]
    findings: tuple[Finding, ...]
    sending_facility: str
    sending_application: str
    control_id: str | None
    message_type: str | None
    trigger_event: str | None
    hl7_version: str | None
    charset: str | None
    message_id: uuid.UUID
    event_id: uuid.UUID | None
    patient_key: str | None
    event: AdtEventV1 | None
    ack: bytes
    send_ack: bool
    # `adt_listener.digest`: equal for a message and its retransmissions (MSH-7 aside);
    # with MSH-4 and MSH-10 it is what the store deduplicates accepted messages on.
    content_digest: bytes


def _new_control_id() -> str:
    return os.urandom(10).hex()  # 80 random bits in 20 characters: MSH-10 is ST(20) up to v2.4


def _ack(
    header: AckHeader,
    code: Literal["AA", "AE", "AR"],
    findings: Sequence[Finding],
    *,
    now: dt.datetime,
    policy: IntakePolicy,
) -> bytes:
    """An ACK from this listener (MSH-3/4 are the policy's receiving application/facility)."""
    return build_ack(
        header,
        code,
        findings,
        control_id=_new_control_id(),
        now=now,
        receiving_application=policy.receiving_application,
        receiving_facility=policy.receiving_facility,
    )


def _value(seg: Segment | None, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    if seg is None:
        return ""
    return seg.value(n, rep, comp, sub) or ""


def _header_findings(
    message_type: str, control_id: str, processing_id: str, version: str, policy: IntakePolicy
) -> list[Finding]:
    """MSH-9.1, MSH-10, MSH-11.1, MSH-12.1 as `_value` reads them."""
    out = []
    if not message_type:
        out.append(Finding("E", 101, "MSH-9", "MSH-9 message type is missing"))
    elif message_type != "ADT":
        out.append(Finding("E", 200, "MSH-9", "MSH-9 message type is not ADT"))
    if not control_id:
        out.append(Finding("E", 101, "MSH-10", "MSH-10 message control id is missing"))
    if processing_id not in policy.accepted_processing_ids:
        out.append(Finding("E", 202, "MSH-11", "MSH-11 processing id is not accepted"))
    if not version:
        out.append(Finding("E", 203, "MSH-12", "MSH-12 version id is missing"))
    elif version not in SUPPORTED_VERSIONS:
        out.append(Finding("E", 203, "MSH-12", "MSH-12 version id is not supported"))
    return out


def _has_patient_id(pid: Segment) -> bool:
    return any(pid.value(3, rep) for rep in range(1, pid.repetition_count(3) + 1))


def _content_findings(msg: Message, trigger: str) -> list[Finding]:
    """``trigger``: MSH-9.2 as `_value` reads it."""
    out = []
    if not _ADT_TRIGGER.fullmatch(trigger):
        out.append(Finding("E", 201, "MSH-9", "MSH-9.2 trigger event is missing or not an ADT event"))
    pid = msg.segment("PID")
    if pid is None:
        out.append(Finding("E", 100, "PID", "PID segment is missing"))
    elif not _has_patient_id(pid):
        out.append(Finding("E", 101, "PID-3", "PID-3 holds no patient identifier"))
    pv1 = msg.segment("PV1")
    if pv1 is None and trigger in VISIT_EVENTS:
        out.append(Finding("E", 100, "PV1", "PV1 segment is missing for a visit event"))
    sex = _value(pid, 8)
    if sex and sex not in TABLE_0001_SEX:
        out.append(Finding("W", 103, "PID-8", "PID-8 is not a table 0001 value"))
    patient_class = _value(pv1, 2)
    if patient_class and patient_class not in TABLE_0004_PATIENT_CLASS:
        out.append(Finding("W", 103, "PV1-2", "PV1-2 is not a table 0004 value"))
    return out


def _first_patient_key(msg: Message, facility: str) -> str | None:
    pid = msg.segment("PID")
    if pid is None:
        return None
    for rep in range(1, pid.repetition_count(3) + 1):
        value = _value(pid, 3, rep)
        if value:
            authority = _value(pid, 3, rep, 4, 1) or _value(pid, 3, rep, 4, 2)
            return patient_key(authority or facility, value)
    return None


def intake(raw: bytes, *, received_at: dt.datetime, policy: IntakePolicy, with_event: bool = True) -> Intake:
    """Decide on one message (see the module docstring). Never raises.

    ``with_event=False`` decides and builds the ACK without the event (``event`` is
    None, also for AA): the listener stores the raw message first and derives the event
    afterwards, off the ACK path (`adt_listener.events`). The decision, findings, ACK,
    ``event_id`` and ``patient_key`` are the same either way (tests/unit/test_intake.py).
    """
    message_id = uuid.uuid4()
    digest = content_digest(raw)
    try:
        msg = Message.parse(raw)
    except Er7Error as exc:
        return _unparseable(raw, exc, received_at, policy, message_id, digest)
    except Exception:  # a reader bug must still produce an answer; "our fault": 207
        return _unparseable(raw, None, received_at, policy, message_id, digest)
    try:
        return _decide(raw, msg, received_at, policy, message_id, digest, with_event)
    except Exception:
        return _unparseable(raw, None, received_at, policy, message_id, digest)


def _decide(
    raw: bytes, msg: Message, received_at: dt.datetime, policy: IntakePolicy, message_id: uuid.UUID,
    digest: bytes, with_event: bool = True,
) -> Intake:
    msh = msg.segments[0]
    facility = sending_facility(msg)
    # Each MSH field is read once: the checks and the row take the same values.
    message_type, msh10, version = _value(msh, 9), _value(msh, 10), _value(msh, 12)
    trigger = _value(msh, 9, 1, 2)
    control_id = msh10 or None
    findings = _header_findings(message_type, msh10, _value(msh, 11), version, policy)
    code: Literal["AA", "AE", "AR"] = "AR"
    event = None
    if not findings:
        findings = _content_findings(msg, trigger)
        code = "AE" if any(f.severity == "E" for f in findings) else "AA"
    if code == "AA":
        if with_event:
            event, warnings = normalize(
                msg, message_id=message_id, received_at=received_at, policy=policy, content_digest=digest
            )
        else:
            # The ACK carries normalize's warnings (unreadable times), so those few fields
            # are read now; building and validating the whole event waits.
            warnings = timestamp_findings(msg, policy)
        findings += warnings
    header = AckHeader.from_message(msg)
    ack = _ack(header, code, findings, now=received_at, policy=policy)
    return Intake(
        raw=raw,
        ack_code=code,
        findings=tuple(findings),
        sending_facility=facility,
        sending_application=_value(msh, 3) or _value(msh, 3, 1, 2),
        control_id=control_id,
        message_type=message_type or None,
        trigger_event=trigger or None,
        hl7_version=version or None,
        charset=msg.charset,
        message_id=message_id,
        event_id=(
            event.event_id if event is not None
            else event_id_for(facility, control_id, digest) if control_id else None
        ),
        patient_key=event.patient.patient_key if event is not None else _first_patient_key(msg, facility),
        event=event,
        ack=ack,
        send_ack=should_send(code, header),
        content_digest=digest,
    )


def _unparseable(
    raw: bytes, exc: Er7Error | None, received_at: dt.datetime, policy: IntakePolicy, message_id: uuid.UUID,
    digest: bytes,
) -> Intake:
    if exc is not None:
        finding = Finding("E", exc.code, exc.location, exc.text)
    else:
        finding = Finding("E", 207, "", "application internal error")
    header = salvage_header(raw)
    ack = _ack(header, "AR", [finding], now=received_at, policy=policy)
    return Intake(
        raw=raw,
        ack_code="AR",
        findings=(finding,),
        sending_facility="",
        sending_application="",
        control_id=header.control_id or None,
        message_type=None,
        trigger_event=None,
        hl7_version=None,
        charset=None,
        message_id=message_id,
        event_id=None,
        patient_key=None,
        event=None,
        ack=ack,
        send_ack=should_send("AR", header),
        content_digest=digest,
    )


def _header_of(raw: bytes) -> AckHeader:
    try:
        return AckHeader.from_message(Message.parse(raw))
    except Exception:
        return salvage_header(raw)


def with_rejection(decided: Intake, finding: Finding, *, now: dt.datetime, policy: IntakePolicy) -> Intake:
    """The same message rejected (AR) for one more reason found outside intake.

    Used by the driver for what only it knows (frame over the size limit, an MSH-4 the
    sender may not use). The event is dropped; ids and the other findings are kept.
    """
    header = _header_of(decided.raw)
    findings = (*decided.findings, finding)
    ack = _ack(header, "AR", findings, now=now, policy=policy)
    return replace(
        decided, ack_code="AR", findings=findings, event=None, ack=ack, send_ack=should_send("AR", header)
    )


def internal_error_ack(raw: bytes, *, now: dt.datetime, policy: IntakePolicy) -> bytes:
    """AR (CR in enhanced mode) with ERR 207: our fault, the sender should retry."""
    header = _header_of(raw)
    finding = Finding("E", 207, "", "application internal error; please retry")
    return _ack(header, "AR", [finding], now=now, policy=policy)
