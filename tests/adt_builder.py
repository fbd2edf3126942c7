"""Hand-made HL7 v2.5.1 ADT messages for enrollment tests, and their `AdtEventV1`.

Every value is made up. Events are built through the listener's own `intake`, so the
enrollment tests see exactly what the listener publishes.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

from adt_listener.intake import IntakePolicy, intake
from schemas.adt_event import AdtEventV1

_counter = itertools.count(1)


def ts(value: dt.datetime) -> str:
    """HL7 DTM with the offset of the (aware) datetime."""
    return value.strftime("%Y%m%d%H%M%S%z")


def adt(
    trigger: str,
    *,
    facility: str = "COUNTYGEN",
    mrn: str = "MRN0001",
    visit: str | None = "V0001",
    patient_class: str = "I",
    at: dt.datetime,
    admit: dt.datetime | None = None,
    discharge: dt.datetime | None = None,
    dx: Sequence[str] = (),
    medi_cal_id: str | None = "95000000A",
    birth: str = "19800101",
    county: str = "06037",
    service: str = "MED",
    point_of_care: str = "4W",
    prior_mrn: str | None = None,
    control_id: str | None = None,
    processing_id: str = "P",
    street: str = "1 MAIN ST",
    phone: str = "",
    room: str = "101",
) -> bytes:
    """One ADT message; ``at`` is MSH-7 and EVN-2."""
    cid = control_id or f"T{next(_counter):08d}"
    pid3 = f"{mrn}^^^{facility}^MR"
    if medi_cal_id:
        pid3 += f"~{medi_cal_id}^^^MEDI-CAL^MA"
    segments = [
        f"MSH|^~\\&|ADT|{facility}|WPC|WPC|{ts(at)}||ADT^{trigger}^ADT_A01|{cid}|{processing_id}|2.5.1",
        f"EVN|{trigger}|{ts(at)}",
        f"PID|1||{pid3}||DOE^ALEX||{birth}|U|||{street}^^LOS ANGELES^CA^90012^USA^H^^{county}"
        + (f"||{phone}" if phone else ""),
    ]
    if prior_mrn is not None:
        segments.append(f"MRG|{prior_mrn}^^^{facility}^MR")
    if visit is not None:
        pv1 = ["PV1", "1", patient_class, f"{point_of_care}^{room}^A^{facility}"] + [""] * 6 + [service]
        pv1 += [""] * (19 - len(pv1)) + [visit]
        pv1 += [""] * (20 - len(pv1)) + ["MC"]
        pv1 += [""] * (44 - len(pv1)) + [ts(admit) if admit else ""]
        pv1 += [ts(discharge) if discharge else ""]
        segments.append("|".join(pv1))
    for i, code in enumerate(dx, start=1):
        segments.append(f"DG1|{i}||{code}^^I10||{ts(at)}|A")
    segments.append("IN1|1|MCLAC|CADHCS|L.A. Care Health Plan Medi-Cal")
    return ("\r".join(segments) + "\r").encode()


def event(raw: bytes, received_at: dt.datetime | None = None) -> AdtEventV1:
    decided = intake(raw, received_at=received_at or dt.datetime.now(dt.UTC), policy=IntakePolicy())
    assert decided.event is not None, decided.findings
    return decided.event
