"""The person card: who the patient is and where to find them, for the care team that visits.

Pure functions (no I/O). The ADT path stores what an event states (`stated`, `whereabouts`)
on the person row inside its existing UPDATE (`enrollment_svc.store`); the API reads it
back with `housing`, which says whether the person has a fixed address.

"No fixed address", precisely. Hospitals flag homelessness three ways, and so does this:

1. a diagnosis of the rules' ``homelessness`` value set (Z59.0-: Z59.00 unspecified,
   Z59.01 sheltered, Z59.02 unsheltered) on an encounter of the person, as the programs'
   rules count it (`eligibility`: TOC's and SUD-ENS's "homelessness" option);
2. a partner system's flag of kind ``homelessness`` still in effect (no ``until``, or one
   after now), e.g. from the county's homeless management information system;
3. a registration convention in PID-11 itself: no street, or a street that says so
   (``HOMELESS``, ``NO FIXED ADDRESS``, ``NFA``, ``UNDOMICILED``, ``TRANSIENT``,
   ``GENERAL DELIVERY``). HL7 table 0190 has no "homeless" address type (``H`` is *home*),
   so the XAD-7 type is not read for this.

The card says "no fixed address" when there is no usable street (3), or when the stated
street is such a marker; the evidence of 1 and 2 is listed beside it either way, because
a Z59.00 at today's admission with last year's street means the street is stale.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.adt_event import AdtEventV1

__all__ = ["HOMELESS_STREETS", "housing", "stated", "whereabouts"]

HOMELESS_STREETS = ("HOMELESS", "NO FIXED ADDRESS", "NFA", "UNDOMICILED", "TRANSIENT", "GENERAL DELIVERY")
_MARKER = re.compile(r"\b(" + "|".join(re.escape(w) for w in HOMELESS_STREETS) + r")\b", re.IGNORECASE)
_DISCHARGES = frozenset({"A03"})


def stated(event: AdtEventV1) -> dict[str, Any]:
    """The card keys the event states (name, phone, address); keys it leaves empty are absent."""
    p = event.patient
    out: dict[str, Any] = {}
    if p.name is not None:
        out["name"] = p.name.model_dump(mode="json", exclude_none=True)
    if p.phone:
        out["phone"] = p.phone
    if p.address is not None:
        out["address"] = p.address.model_dump(mode="json", exclude_none=True)
    return out


def whereabouts(event: AdtEventV1) -> str | None:
    """Where the event puts the person (JSON), or None when it carries no visit."""
    v = event.visit
    if v is None or (v.location is None and v.patient_class is None):
        return None
    loc = v.location
    return json.dumps({
        "facility": event.sending_facility,
        "building_facility": loc.facility if loc else None,  # PL-4, when it differs from MSH-4
        "unit": loc.point_of_care if loc else None,
        "room": loc.room if loc else None,
        "bed": loc.bed if loc else None,
        "patient_class": v.patient_class,
        "trigger": event.trigger_event,
        "discharged": event.trigger_event in _DISCHARGES or v.discharge_time is not None,
    })


def housing(
    address: Mapping[str, Any] | None,
    homeless_encounters: Iterable[Mapping[str, Any]],
    homeless_flags: Iterable[Mapping[str, Any]],
    now: dt.datetime,
) -> dict[str, Any]:
    """``no_fixed_address`` and its evidence: encounters (id, facility, start, codes) carrying
    a homelessness diagnosis, and homelessness flags in effect at ``now``."""
    street = (address or {}).get("street")
    marker = bool(street and _MARKER.search(str(street)))
    flags = [f for f in homeless_flags if f.get("until") is None or f["until"] > now]
    encounters = list(homeless_encounters)
    return {
        "no_fixed_address": not street or marker,
        "address_says_homeless": marker,
        "homelessness_diagnoses": encounters,
        "homelessness_flags": flags,
    }
