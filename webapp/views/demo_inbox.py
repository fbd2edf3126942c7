"""The demo inbox page's view (pure): every message the demo teams and clinics received, as
cards: who got it, by which channel, what kind, when (site time), and what it said.

Input: the demo inbox's ``GET /v1/received`` answer (`wpc.demo_inbox`), newest first. A
webhook card lists its notices (event, program, patient, facility, diagnoses, and what
42 CFR Part 2 withheld); a FHIR card its event, facility and diagnoses; an e-mail card its
subject and text (which hold no PHI by design).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webapp.views.timefmt import local_time

CHANNELS = {"webhook": "Webhook (JSON)", "fhir": "FHIR R4 message", "email": "E-mail"}


@dataclass(frozen=True)
class Line:
    label: str
    value: str


@dataclass(frozen=True)
class Card:
    recipient: str
    channel: str
    kinds: str
    when: str
    title: str
    sections: tuple[tuple[Line, ...], ...]  # one per notice (webhook, FHIR) or the mail's text
    text: str | None = None  # an e-mail's body


def _person(patient: Mapping[str, Any]) -> str:
    name = " ".join(p for p in (patient.get("given"), patient.get("family")) if p)
    return name or "(no name)"


def _dx(diagnoses: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(f"{d.get('code')} {d.get('description') or ''}".strip() for d in diagnoses) or "none sent"


def _webhook(body: Mapping[str, Any]) -> tuple[str, tuple[tuple[Line, ...], ...]]:
    notices = body.get("notices") or []
    sections = []
    for n in notices:
        lines = [Line("Event", str(n.get("event", ""))), Line("Patient", _person(n.get("patient") or {}))]
        if n.get("program"):
            lines.append(Line("Program", str(n["program"])))
        encounter = n.get("encounter") or {}
        if encounter:
            lines.append(Line("Where", " ".join(str(v) for v in (encounter.get("facility"), encounter.get("location"))
                                                if v)))
            lines.append(Line("Diagnoses", _dx(encounter.get("diagnoses") or [])))
        if n.get("reason"):
            lines.append(Line("Why", str(n["reason"])))
        if n.get("withheld"):
            lines.append(Line("Withheld (42 CFR Part 2)", ", ".join(str(w) for w in n["withheld"])))
        sections.append(tuple(lines))
    title = f"Digest of {len(notices)} notices" if body.get("digest") else "1 notice"
    return title, tuple(sections)


def _fhir(body: Mapping[str, Any]) -> tuple[str, tuple[tuple[Line, ...], ...]]:
    resources = [e.get("resource") or {} for e in body.get("entry") or [] if isinstance(e, Mapping)]
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(str(r.get("resourceType")), []).append(r)
    header = (by_type.get("MessageHeader") or [{}])[0]
    event = (header.get("eventCoding") or {}).get("display") or "Notification"
    patient = (by_type.get("Patient") or [{}])[0]
    names = patient.get("name") or [{}]
    person = " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip() or "(no name)"
    where = ", ".join(str(o.get("name")) for o in by_type.get("Organization", []) if o is not header)
    codes = [c for cond in by_type.get("Condition", []) for c in (cond.get("code") or {}).get("coding", [])]
    dx = "; ".join(f"{c.get('code')}" for c in codes) or "none sent"
    lines = (Line("Event", str(event)), Line("Patient", person), Line("Organizations", where), Line("Diagnoses", dx))
    return str(event), (lines,)


def build_cards(items: Sequence[Mapping[str, Any]], zone: str) -> list[Card]:
    cards = []
    for item in items:
        channel = str(item.get("channel", ""))
        body = item.get("body")
        when = _when(item.get("received_at"), zone)
        kinds = ", ".join(str(k) for k in item.get("kinds") or []) or channel
        if channel == "webhook" and isinstance(body, Mapping):
            title, sections = _webhook(body)
            cards.append(Card(str(item.get("recipient")), CHANNELS[channel], kinds, when, title, sections))
        elif channel == "fhir" and isinstance(body, Mapping):
            title, sections = _fhir(body)
            cards.append(Card(str(item.get("recipient")), CHANNELS[channel], kinds, when, title, sections))
        else:
            cards.append(Card(str(item.get("recipient")), CHANNELS.get(channel, channel), "e-mail", when,
                              str(item.get("subject") or "(no subject)"), (), str(body or "")))
    return cards


def _when(value: Any, zone: str) -> str:
    try:
        at = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return ""
    return local_time(at, zone, "%a %d %b %H:%M:%S")
